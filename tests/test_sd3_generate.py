"""SD3 generation: parity with KerasHub's own generate(), outputs, bad input, CLI."""

import functools
import os

import keras_hub
import numpy as np
import pytest
from PIL import Image
from sd3_fixtures import IMAGE_SIZE, NEGATIVE_PROMPTS, NUM_STEPS, PROMPTS, SEED, tiny_setup
from sd3_fixtures import torch_single_thread  # noqa: F401 (autouse fixture)

from keras_diffusion import sd3
from keras_diffusion.images import to_model_range
from keras_diffusion import cli
from keras_diffusion.sd3 import pipeline


@pytest.fixture
def model():
    return tiny_setup().model


@pytest.fixture
def image():
    return np.random.default_rng(0).integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)


@pytest.fixture
def mask():
    mask = np.zeros((IMAGE_SIZE, IMAGE_SIZE), bool)
    mask[8:24, 8:24] = True
    return mask


def test_text_to_image_equals_keras_hub_generate_for_any_num_steps(model):
    reference = tiny_setup().reference_images  # the wrapper, compiled for NUM_STEPS
    assert reference.dtype == np.uint8
    assert reference.shape == (2, IMAGE_SIZE, IMAGE_SIZE, 3)
    # Now another num_steps. A KerasHub task compiled for NUM_STEPS would
    # keep those sigmas (JAX returns wrong images, TensorFlow raises); the
    # wrapper compiles once per num_steps, so it matches a fresh task: an
    # independent KerasHub task on the same weights, equal bit for bit.
    steps = NUM_STEPS + 1
    images = sd3.text_to_image(model, PROMPTS, NEGATIVE_PROMPTS, num_steps=steps, seed=SEED)
    task = keras_hub.models.StableDiffusion3TextToImage(model.backbone, model.preprocessor)
    expected = task.generate(
        {"prompts": PROMPTS, "negative_prompts": NEGATIVE_PROMPTS},
        num_steps=steps,
        guidance_scale=7.0,
        seed=SEED,
    )
    np.testing.assert_array_equal(images, expected)
    assert not np.array_equal(images, reference)
    # Back to NUM_STEPS: the first compiled program again.
    again = sd3.text_to_image(model, PROMPTS, NEGATIVE_PROMPTS, num_steps=NUM_STEPS, seed=SEED)
    np.testing.assert_array_equal(again, reference)


def test_euler_on_the_mmdit_denoiser_is_keras_hubs_flow_match_euler(model):
    """Our Euler sampler in sigma space over SD3's scheduler levels is KerasHub's generate.

    Both are Euler steps of the flow ODE (`x_t + (t_next - t) v`), from the
    same initial latents; ours starts at t = 0.99997 instead of 1 (where
    sigma_hat is infinite), so the images agree up to float rounding.
    """
    reference = tiny_setup().reference_images  # KerasHub's, guidance 7
    images = sd3.text_to_image(
        model, PROMPTS, NEGATIVE_PROMPTS, num_steps=NUM_STEPS, seed=SEED, sampler="euler"
    )
    assert images.dtype == np.uint8 and images.shape == reference.shape
    difference = np.abs(images.astype(int) - reference)
    # 2 steps (measured): at most 2 / 3 / 4 levels apart, 0.29 / 0.43 / 0.49 on average on
    # JAX / torch / TensorFlow (8 steps: 1 level, 95% equal). The start at 0.99997 dominates:
    # starting at 0.999 puts values 29 apart, at 0.999999 19 (float32 cancellation).
    assert difference.max() <= 4 and difference.mean() < 0.6, (difference.max(), difference.mean())
    # Far below what another seed changes (KerasHub's program is reused).
    other = sd3.text_to_image(model, PROMPTS, NEGATIVE_PROMPTS, num_steps=NUM_STEPS, seed=SEED + 1)
    assert np.abs(other.astype(int) - reference).mean() > 10


def test_another_sampler_runs_on_sd3_latents(model):
    run = functools.partial(
        sd3.text_to_image, model, PROMPTS, NEGATIVE_PROMPTS, num_steps=NUM_STEPS, seed=SEED, sampler="heun"
    )
    images = run()
    assert images.dtype == np.uint8 and images.shape == (2, IMAGE_SIZE, IMAGE_SIZE, 3)
    np.testing.assert_array_equal(run(), images)  # the same seed, the same images
    # Heun evaluates the MMDiT twice per step: not Euler's images.
    assert np.abs(images.astype(int) - tiny_setup().reference_images).max() > 2
    with pytest.raises(ValueError, match="Unknown sampler"):
        sd3.text_to_image(model, "a cat", sampler="plms")


def test_image_to_image_equals_keras_hub_generate(model, image):
    images = sd3.image_to_image(
        model, image, PROMPTS, "blue", strength=0.5, num_steps=NUM_STEPS, seed=SEED
    )
    assert images.shape == (2, IMAGE_SIZE, IMAGE_SIZE, 3)
    # KerasHub's task called directly with the inputs its guide uses: images
    # in [-1, 1], one per prompt. It is the task the wrapper drives, so the
    # compiled program is shared (a second compile would only cost time).
    expected = model.task("image_to_image").generate(
        {
            "images": np.stack([to_model_range(image)] * 2),
            "prompts": PROMPTS,
            "negative_prompts": ["blue", "blue"],
        },
        num_steps=NUM_STEPS,
        strength=0.5,
        guidance_scale=7.0,
        seed=SEED,
    )
    np.testing.assert_array_equal(images, expected)


def test_inpaint_equals_keras_hub_generate(model, image, mask):
    images = sd3.inpaint(
        model, image, mask, PROMPTS, strength=0.9, num_steps=NUM_STEPS, seed=SEED
    )
    expected = model.task("inpaint").generate(
        {
            "images": np.stack([to_model_range(image)] * 2),
            "masks": np.stack([mask] * 2),
            "prompts": PROMPTS,
        },
        num_steps=NUM_STEPS,
        strength=0.9,
        guidance_scale=7.0,
        seed=SEED,
    )
    np.testing.assert_array_equal(images, expected)


def test_numeric_masks_follow_keras_hub_threshold(model, image, mask):
    # Two prompts, as above, so the compiled program is reused.
    as_uint8 = sd3.inpaint(model, image, mask.astype(np.uint8) * 255, PROMPTS,
                           num_steps=NUM_STEPS, seed=SEED)
    as_bool = sd3.inpaint(model, image, mask, PROMPTS, num_steps=NUM_STEPS, seed=SEED)
    np.testing.assert_array_equal(as_uint8, as_bool)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda m, i, k: sd3.text_to_image(m, []), ValueError, "empty"),
        (lambda m, i, k: sd3.text_to_image(m, ["a", 3]), ValueError, "only strings"),
        (lambda m, i, k: sd3.text_to_image(m, ["a", "b"], ["x", "y", "z"]), ValueError,
         "3 negative prompts for 2"),
        (lambda m, i, k: sd3.text_to_image(m, "a", num_steps=0), ValueError, "num_steps"),
        (lambda m, i, k: sd3.text_to_image(m, "a", seed=1.5), ValueError, "seed"),
        (lambda m, i, k: sd3.image_to_image(m, i[:16], "a"), ValueError,
         "are 16x32 but the model makes 32x32"),
        (lambda m, i, k: sd3.image_to_image(m, i[..., :1], "a"), ValueError, r"\(H, W, 3\)"),
        (lambda m, i, k: sd3.image_to_image(m, i / 255.0, "a"), ValueError, "uint8"),
        (lambda m, i, k: sd3.image_to_image(m, np.stack([i] * 3), ["a", "b"]), ValueError,
         "2 prompts and 3 images"),
        (lambda m, i, k: sd3.image_to_image(m, i, "a", strength=1.5), ValueError,
         r"strength. must be in \[0, 1\]"),
        (lambda m, i, k: sd3.image_to_image(m, i, "a", strength=-0.1), ValueError,
         r"strength. must be in \[0, 1\]"),
        (lambda m, i, k: sd3.inpaint(m, i, k[:, :16], "a"), ValueError,
         "masks. are 32x16 but the images are 32x32"),
        (lambda m, i, k: sd3.inpaint(m, i, k[None, None], "a"), ValueError, "masks. must have"),
        (lambda m, i, k: sd3.inpaint(m, i, k, "a", strength=2), ValueError, "strength"),
    ],
)
def test_bad_input_is_refused_with_a_clear_error(model, image, mask, call, error, message):
    with pytest.raises(error, match=message):
        call(model, image, mask)


def test_save_images_writes_one_png_per_image(tmp_path):
    images = np.zeros((2, 8, 8, 3), np.uint8)
    images[1] = 255
    paths = sd3.save_images(tmp_path / "cat.png", images)
    assert paths == [str(tmp_path / "cat_0.png"), str(tmp_path / "cat_1.png")]
    assert np.asarray(Image.open(paths[1])).min() == 255
    assert sd3.save_images(tmp_path / "one.png", images[:1]) == [str(tmp_path / "one.png")]
    assert sd3.save_images(str(tmp_path / "n{i:02d}.png"), images)[1].endswith("n01.png")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sd3.save_images(tmp_path / "missing" / "cat.png", images)


def _run_cli(argv):
    # The command's own run(), so that its errors reach the test as exceptions.
    args = cli.build_parser().parse_args(argv)
    return cli.COMMANDS[args.command].run(args)


@pytest.fixture
def session_model_for_cli(monkeypatch):
    # The CLI loads its model with `pipeline.from_preset`; reusing the
    # session's model spares a compile per test. Loading itself is tested
    # in test_sd3_pipeline.py, and end to end in the slow test below.
    calls = []

    def from_preset(preset, **kwargs):
        calls.append((preset, kwargs))
        return tiny_setup().model

    monkeypatch.setattr(pipeline, "from_preset", from_preset)
    return calls


def test_cli_generate_text_to_image_and_image_to_image(session_model_for_cli, tmp_path, image):
    common = ["--preset", "tiny", "--steps", str(NUM_STEPS), "--seed", str(SEED)]
    out = tmp_path / "cat.png"
    assert _run_cli((["generate", *common, "--prompt", *PROMPTS, "--out", str(out)])) == 0
    written = [np.asarray(Image.open(tmp_path / f"cat_{i}.png")) for i in range(2)]
    expected = sd3.text_to_image(tiny_setup().model, PROMPTS, num_steps=NUM_STEPS, seed=SEED)
    np.testing.assert_array_equal(np.stack(written), expected)

    # A 64x64 input file is resized to the model's 32x32.
    Image.fromarray(np.repeat(np.repeat(image, 2, 0), 2, 1)).save(tmp_path / "in.png")
    argv = ["generate", *common, "--prompt", *PROMPTS, "--image", str(tmp_path / "in.png"),
            "--strength", "0.5", "--out", str(tmp_path / "i2i.png")]
    assert _run_cli((argv)) == 0
    assert Image.open(tmp_path / "i2i_1.png").size == (IMAGE_SIZE, IMAGE_SIZE)
    assert session_model_for_cli[0][0] == "tiny"


def test_cli_sampler_is_for_text_to_image(session_model_for_cli, tmp_path, image):
    Image.fromarray(image).save(tmp_path / "in.png")
    argv = ["generate", "--preset", "tiny", "--prompt", "a cat", "--image", str(tmp_path / "in.png"),
            "--sampler", "heun", "--out", str(tmp_path / "out.png")]
    with pytest.raises(ValueError, match="--sampler is for text-to-image"):
        _run_cli(argv)


def test_cli_refuses_a_missing_output_folder_before_loading(session_model_for_cli, tmp_path):
    argv = ["generate", "--preset", "tiny", "--prompt", "a cat",
            "--out", str(tmp_path / "missing" / "cat.png")]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _run_cli((argv))
    assert session_model_for_cli == []


@pytest.mark.slow
def test_cli_generate_end_to_end_with_the_tiny_preset(tmp_path):
    import subprocess
    import sys

    argv = [sys.executable, "-m", "keras_diffusion", "generate", "--preset", "tiny",
            "--cache", str(tmp_path / "cache"), "--prompt", "a cat", "--steps", "2",
            "--out", str(tmp_path / "cat.png")]
    subprocess.run(argv, check=True, env={**os.environ})
    assert Image.open(tmp_path / "cat.png").size == (IMAGE_SIZE, IMAGE_SIZE)
