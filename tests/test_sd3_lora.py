"""LoRA on the tiny SD3's MMDiT: only adapters train, save/load/merge round trips."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_diffusion import sd3
from keras_diffusion.sd3 import data, lora
from keras_diffusion.sd3.finetune import FlowMatchingTrainer, count_params
from tests.sd3_fixtures import NUM_STEPS, SEED, tiny_setup, torch_single_thread  # noqa: F401
from tests.test_sd3_finetune import cached_set


def diffuser_output(model, cached):
    inputs = {
        "latent": cached["latents"][:2],
        "context": cached["context"][:2],
        "pooled_projection": cached["pooled_projection"][:2],
        "timestep": np.array([[250.0], [750.0]], "float32"),
    }
    return ops.convert_to_numpy(model.backbone.diffuser(inputs))


def test_lora_trains_adapters_only_and_round_trips(tmp_path):
    cached = cached_set()
    model = sd3.from_preset(tiny_setup().preset_dir)
    base = {v.path: ops.convert_to_numpy(v) for v in model.backbone.weights}
    before = diffuser_output(model, cached)

    layers = lora.enable_lora(model, rank=4, alpha=8, seed=0)
    assert {layer.name for layer in layers} == {"attention_qkv", "attention_proj"}
    np.testing.assert_array_equal(diffuser_output(model, cached), before)  # B starts at zero
    trainer = FlowMatchingTrainer(model.backbone, seed=0)
    assert {id(v) for v in trainer.trainable_variables} == {id(v) for v in lora.lora_variables(model)}
    report = lora.parameter_report(model)
    expected = sum(4 * (layer._kernel.shape[0] + layer._kernel.shape[1]) for layer in layers)
    assert report["lora"] == expected == count_params(trainer.trainable_variables)
    assert report["total"] == tiny_setup().model.backbone.count_params()
    print("LoRA parameter report (tiny, rank 4):", report)

    trainer.compile(keras.optimizers.AdamW(5e-3))
    trainer.fit(data.TrainingBatches(cached, 4, seed=0), epochs=2, verbose=0)
    for variable in model.backbone.weights:
        if "lora_kernel" not in variable.path:
            np.testing.assert_array_equal(ops.convert_to_numpy(variable), base[variable.path])
    trained = diffuser_output(model, cached)
    assert np.abs(trained - before).max() > 1e-4

    path = lora.save_lora(model, tmp_path / "sd3.lora.npz")
    assert (tmp_path / "sd3.lora.npz").stat().st_size < 64_000
    fresh = sd3.from_preset(tiny_setup().preset_dir)
    lora.load_lora(fresh, path)
    images = sd3.text_to_image(model, ["a cat"], num_steps=NUM_STEPS, seed=SEED)
    np.testing.assert_array_equal(
        sd3.text_to_image(fresh, ["a cat"], num_steps=NUM_STEPS, seed=SEED), images
    )

    assert lora.merge_lora(fresh) == len(layers)
    np.testing.assert_allclose(diffuser_output(fresh, cached), trained, atol=1e-5)
    assert all(not np.any(ops.convert_to_numpy(v)) for v in lora.lora_variables(fresh))
    qkv = layers[0]
    merged = lora.lora_layers(fresh)[0]
    assert not np.array_equal(ops.convert_to_numpy(merged._kernel), base[qkv._kernel.path])


def test_lora_bad_input():
    model = sd3.from_preset(tiny_setup().preset_dir)
    with pytest.raises(ValueError, match="positive int"):
        lora.enable_lora(model, rank=0)
    with pytest.raises(ValueError, match="Layers that take LoRA"):
        lora.enable_lora(model, rank=2, target_layer_names=["query"])
    with pytest.raises(ValueError, match="no LoRA adapters"):
        lora.save_lora(model, "unused.npz")
    layers = lora.enable_lora(model, rank=2, include_mlp=True)
    assert {"dense1", "dense2"} <= {layer.name for layer in layers}
    with pytest.raises(ValueError, match="already enabled"):
        lora.enable_lora(model, rank=2)
