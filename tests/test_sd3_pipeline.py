"""SD3 loading: the tiny builder, local presets, KerasHub names, options, errors."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from sd3_fixtures import IMAGE_SIZE, NEGATIVE_PROMPTS, NUM_STEPS, PROMPTS, SEED, tiny_setup
from sd3_fixtures import torch_single_thread  # noqa: F401 (autouse fixture)

from keras_diffusion import sd3
from keras_diffusion.sd3 import pipeline

BACKEND = keras.backend.backend()


@pytest.fixture
def setup():
    return tiny_setup()


def test_tiny_model_is_small_and_has_the_requested_size(setup):
    model = setup.model
    assert model.image_size == (IMAGE_SIZE, IMAGE_SIZE)
    assert model.latent_shape == (IMAGE_SIZE // 8, IMAGE_SIZE // 8, 16)
    assert model.backbone.count_params() < 2_000_000
    assert model.backbone.t5 is None


def test_saved_tiny_preset_reloads_to_the_same_outputs(setup):
    reloaded = sd3.from_preset(setup.preset_dir)
    for saved, loaded in zip(setup.model.backbone.weights, reloaded.backbone.weights):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(saved), keras.ops.convert_to_numpy(loaded)
        )
    images = sd3.text_to_image(
        reloaded, PROMPTS, NEGATIVE_PROMPTS, num_steps=NUM_STEPS, seed=SEED
    )
    np.testing.assert_array_equal(images, setup.reference_images)


def test_tiny_preset_is_built_once_then_loaded_from_the_cache(setup, tmp_path, monkeypatch):
    builds = []

    def fake_build_tiny():
        # Reuse the session's model: building another costs seconds on JAX.
        builds.append(1)
        return setup.model

    monkeypatch.setattr(pipeline, "build_tiny", fake_build_tiny)
    cache = tmp_path / "cache" / "sd3_tiny"
    first = sd3.from_preset("tiny", cache_dir=cache)
    second = sd3.from_preset("tiny", cache_dir=cache)
    assert builds == [1]
    assert os.path.isfile(cache / "config.json")
    assert [p for p in os.listdir(cache.parent) if p.startswith(".")] == []
    assert first.image_size == second.image_size == (IMAGE_SIZE, IMAGE_SIZE)


def test_a_cache_folder_that_is_not_a_preset_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("not a preset")
    with pytest.raises(ValueError, match="holds no config.json"):
        sd3.from_preset("tiny", cache_dir=tmp_path)


def test_image_size_option(setup):
    model = sd3.from_preset(setup.preset_dir, image_size=(48, 64))
    assert model.image_size == (48, 64)
    assert model.latent_shape == (6, 8, 16)


def test_dtype_and_t5_options_reach_keras_hub(setup, monkeypatch):
    # Loading in another dtype compiles every variable initializer anew on
    # JAX (~10 s for the tiny model), so this checks what is handed to
    # KerasHub, whose own tests cover its dtype handling.
    import keras_hub

    calls = {}

    def capture(name, result):
        def from_preset(preset, **kwargs):
            calls[name] = kwargs
            return result

        return from_preset

    backbone_class = keras_hub.models.StableDiffusion3Backbone
    preprocessor_class = keras_hub.models.StableDiffusion3TextToImagePreprocessor
    monkeypatch.setattr(backbone_class, "from_preset", capture("backbone", setup.model.backbone))
    monkeypatch.setattr(
        preprocessor_class, "from_preset", capture("preprocessor", setup.model.preprocessor)
    )
    sd3.from_preset(setup.preset_dir, image_size=64, dtype="bfloat16", include_t5=False)
    assert calls["backbone"] == {"image_shape": (64, 64, 3), "dtype": "bfloat16", "t5": None}
    assert calls["preprocessor"] == {"t5_preprocessor": None}


@pytest.mark.parametrize(
    "size, message",
    [
        (30, "multiple of 8"),
        ((32, 20), "multiple of 8"),
        (40, "multiple of 16"),
        (1024, "too large"),
        (0, "positive int"),
        ("32", "positive int"),
    ],
)
def test_bad_image_size_is_refused_before_loading(setup, size, message):
    with pytest.raises(ValueError, match=message):
        sd3.from_preset(setup.preset_dir, image_size=size)


def test_bad_image_size_is_refused_by_the_tiny_builder():
    with pytest.raises(ValueError, match="multiple of 8"):
        sd3.build_tiny(image_size=36)


def test_unknown_preset_lists_the_valid_names():
    with pytest.raises(ValueError, match="Unknown preset 'sd3_mediun'") as info:
        sd3.from_preset("sd3_mediun")
    for name in ("tiny", *sd3.KERAS_HUB_PRESETS):
        assert name in str(info.value)


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        sd3.from_preset(tmp_path)


def test_unreachable_keras_hub_preset_says_what_to_do(monkeypatch):
    # Patched so the test is fast and the same with or without a network
    # (with Kaggle access, the real call would start a multi-GB download).
    import kagglehub

    def offline(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'api.kaggle.com'")

    monkeypatch.setattr(kagglehub, "model_download", offline)
    with pytest.raises(sd3.PresetUnavailableError) as info:
        sd3.from_preset("stable_diffusion_3_medium", image_size=512)
    message = str(info.value)
    assert "stable_diffusion_3_medium" in message
    assert "api.kaggle.com" in message
    for hint in ("network", "Kaggle", "preset='tiny'", "local preset folder"):
        assert hint in message
    assert isinstance(info.value, ConnectionError)


@pytest.mark.skipif(
    BACKEND == "torch",
    reason="KerasHub's SD3 T5 encoder cannot be built on torch (it assigns "
    "layers before keras.Model.__init__).",
)
@pytest.mark.filterwarnings("ignore:Layer 'self_attention' .*T5MultiHeadAttention")
def test_include_t5_false_drops_the_t5_encoder(tmp_path):
    preset = str(tmp_path / "with_t5")
    sd3.build_tiny(include_t5=True).save_to_preset(preset)
    with_t5 = sd3.from_preset(preset)
    assert with_t5.backbone.t5 is not None
    assert with_t5.preprocessor.t5_preprocessor is not None
    without_t5 = sd3.from_preset(preset, include_t5=False)
    assert without_t5.backbone.t5 is None
    assert without_t5.preprocessor.t5_preprocessor is None
    assert "t5" not in without_t5.preprocessor.generate_preprocess(["a cat"])


def test_t5_on_torch_is_refused_with_a_reason():
    if BACKEND != "torch":
        pytest.skip("only torch cannot build KerasHub's T5 encoder")
    with pytest.raises(NotImplementedError, match="torch"):
        sd3.build_tiny(include_t5=True)


def test_the_cli_parser_does_not_import_keras_hub():
    # `import keras_diffusion` imports Keras (so that load_model finds our
    # classes); KerasHub, with tensorflow-text, loads only when SD3 is used.
    code = "import sys, keras_diffusion.cli as c; c.build_parser(); print('keras_hub' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "False"


def _generate(model, prompts=PROMPTS):
    return sd3.text_to_image(model, prompts, NEGATIVE_PROMPTS, num_steps=NUM_STEPS, seed=SEED)


def _render(model):
    """Two walk frames through the model's shared renderer."""
    embeddings = sd3.encode_prompts(model, PROMPTS, NEGATIVE_PROMPTS)
    latents = keras.random.normal((2, *model.latent_shape), seed=SEED)
    frames = sd3.render(model, embeddings, latents, num_steps=NUM_STEPS, batch_size=2, progress=False)
    return frames.astype(int)


def test_generation_uses_lora_adapters_added_after_a_first_call(setup, tmp_path):
    from keras_diffusion.sd3 import lora

    model = sd3.from_preset(setup.preset_dir)
    before, frames_before = _generate(model), _render(model)  # programs compiled without LoRA
    lora.enable_lora(model, rank=2, seed=0)
    rng = np.random.default_rng(0)
    for layer in lora.lora_layers(model):
        layer.lora_kernel_b.assign(rng.normal(0, 0.5, layer.lora_kernel_b.shape).astype("float32"))
    after, frames_after = _generate(model), _render(model)
    assert np.abs(after.astype(int) - before).max() > 0
    assert np.abs(frames_after - frames_before).max() > 0

    fresh = sd3.from_preset(setup.preset_dir)
    lora.load_lora(fresh, lora.save_lora(model, tmp_path / "a.lora.npz"))
    np.testing.assert_array_equal(_generate(fresh), after)
    np.testing.assert_array_equal(_render(fresh), frames_after)

    lora.merge_lora(model)  # same function, new kernels: still no stale program
    assert np.abs(_generate(model).astype(int) - after).max() <= 1


def test_generation_reads_textual_inversion_rows_as_they_are_now(setup, tmp_path):
    from keras_diffusion.sd3 import textual_inversion

    model = sd3.from_preset(setup.preset_dir)
    inversion = textual_inversion.add_placeholder_token(model, "<sq>", "a")
    prompts = ["a <sq>", "<sq> airplane"]
    first = _generate(model, prompts)
    rng = np.random.default_rng(1)
    for layer in inversion.layers:  # what training does to the rows
        layer.rows.assign(rng.normal(0, 1, layer.rows.shape).astype("float32"))
    second = _generate(model, prompts)
    assert np.abs(second.astype(int) - first).max() > 0

    path = textual_inversion.save_textual_inversion(inversion, tmp_path / "sq.npz")
    fresh = sd3.from_preset(setup.preset_dir)
    textual_inversion.load_textual_inversion(fresh, path)
    np.testing.assert_array_equal(_generate(fresh, prompts), second)


def test_compiled_programs_are_kept_until_the_model_changes(setup):
    model = sd3.from_preset(setup.preset_dir)
    _generate(model)
    program = model.compiled(("generate", "text_to_image", NUM_STEPS), None)
    _generate(model)
    assert model.compiled(("generate", "text_to_image", NUM_STEPS), None) is program
    model.backbone.diffuser.trainable = False  # trainable flags change what JAX passes
    assert model.compiled(("generate", "text_to_image", NUM_STEPS), lambda: "rebuilt") == "rebuilt"
