"""LoRA on the tiny SD3's MMDiT: only adapters train, save/load/merge round trips,
both layouts, independent initial draws, block-only targets."""

import json
import math

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
    with pytest.raises(ValueError, match="`layout` must be one of"):
        lora.enable_lora(model, rank=2, layout="peft")
    with pytest.raises(ValueError, match="no LoRA adapters"):
        lora.save_lora(model, "unused.npz")
    layers = lora.enable_lora(model, rank=2, include_mlp=True)
    assert {"dense1", "dense2"} <= {layer.name for layer in layers}
    with pytest.raises(ValueError, match="already enabled"):
        lora.enable_lora(model, rank=2)


def mmdit(**overrides):
    """A fresh MMDiT with the tiny model's config (own random weights)."""
    diffuser = tiny_setup().model.backbone.diffuser
    return type(diffuser).from_config({**diffuser.get_config(), **overrides})


def mmdit_inputs(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "latent": rng.normal(size=(2, 4, 4, 16)).astype("float32"),
        "context": rng.normal(size=(2, 3, 4096)).astype("float32"),
        "pooled_projection": rng.normal(size=(2, 64)).astype("float32"),
        "timestep": np.array([[250.0], [750.0]], "float32"),
    }


def a_matrices(layers):
    return [ops.convert_to_numpy(layer.lora_kernel_a) for layer in layers]


@pytest.mark.parametrize("layout", lora.LAYOUTS)
def test_every_adapter_draws_its_own_a_within_peft_bound(layout):
    draws = {}
    for seed in (0, None, 0):
        layers = lora.enable_lora(mmdit(), 4, layout=layout, include_mlp=True, seed=seed)
        matrices = a_matrices(layers)
        for i, a in enumerate(matrices):
            for b in matrices[i + 1 :]:
                assert a.shape != b.shape or not np.array_equal(a, b)
        for layer, a in zip(layers, matrices):
            # PEFT: kaiming_uniform_(a=sqrt(5)) = U(+-gain * sqrt(3 / fan_in)), gain = sqrt(2 / (1 + 5)).
            bound = math.sqrt(2 / (1 + 5)) * math.sqrt(3 / a.shape[0])
            assert np.abs(a).max() <= bound and np.abs(a).max() > 0.8 * bound
            assert not np.any(ops.convert_to_numpy(layer.lora_kernel_b))
        draws.setdefault(seed, []).append(matrices)
    first, again = draws[0]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], draws[None][0][0])


def test_targets_are_block_layers_only():
    model = mmdit()
    layers = lora.enable_lora(model, 2, include_mlp=True)
    assert all(layer.path.startswith("joint_block_") for layer in layers)
    names = [layer.name for layer in layers]
    # 2 blocks; the last context block has only its qkv projection.
    assert sorted(names) == sorted(
        ["attention_qkv"] * 4 + ["attention_proj"] * 3 + ["dense1"] * 3 + ["dense2"] * 3
    )
    embeddings = [model.get_layer("timestep_embedding"), model.get_layer("vector_embedding")]
    assert not any(
        getattr(layer, "lora_enabled", False) for e in embeddings for layer in e._flatten_layers()
    )
    dual = lora.enable_lora(mmdit(dual_attention_indices=(0,), qk_norm="rms_norm"), 2, layout="diffusers")
    split = {layer.path for layer in dual if isinstance(layer.lora_kernel_b.constraint, lora.BlockDiagonal)}
    assert "joint_block_0/x_block/attention_qkv2" in split
    assert "joint_block_0/x_block/attention_proj2" in {layer.path for layer in dual} - split


def test_diffusers_layout_equals_separate_qkv_adapters():
    rank, alpha, hidden = 2, 3.0, 32
    layers = lora.enable_lora(mmdit(), rank, alpha, layout="diffusers", seed=0)
    qkv = next(layer for layer in layers if layer.name == "attention_qkv")
    assert qkv.lora_kernel_a.shape == (hidden, 3 * rank)
    assert qkv.lora_kernel_b.shape == (3 * rank, 3 * hidden)
    rng = np.random.default_rng(1)
    qkv.lora_kernel_a.assign(rng.normal(size=(hidden, 3 * rank)).astype("float32"))
    b = qkv.lora_kernel_b.constraint(rng.normal(size=(3 * rank, 3 * hidden)).astype("float32"))
    qkv.lora_kernel_b.assign(b)
    x = rng.normal(size=(5, hidden)).astype("float32")
    kernel, bias = ops.convert_to_numpy(qkv._kernel), ops.convert_to_numpy(qkv.bias)
    a, b = ops.convert_to_numpy(qkv.lora_kernel_a), ops.convert_to_numpy(b)
    parts = []
    for i in range(3):  # q, k, v: each its own rank-r adapter with scale alpha / r
        cols, rows = slice(i * hidden, (i + 1) * hidden), slice(i * rank, (i + 1) * rank)
        parts.append(x @ kernel[:, cols] + bias[cols] + alpha / rank * (x @ a[:, rows]) @ b[rows, cols])
    np.testing.assert_allclose(ops.convert_to_numpy(qkv(x)), np.concatenate(parts, -1), rtol=1e-5, atol=1e-5)
    constraint = keras.constraints.deserialize(keras.constraints.serialize(qkv.lora_kernel_b.constraint))
    np.testing.assert_array_equal(ops.convert_to_numpy(constraint(b)), b)


def off_block(layer):
    b = ops.convert_to_numpy(layer.lora_kernel_b)
    return b - ops.convert_to_numpy(lora.BlockDiagonal(3)(b)), b


def test_diffusers_layout_trains_block_diagonal_and_round_trips(tmp_path):
    cached = cached_set()
    model = sd3.from_preset(tiny_setup().preset_dir)
    layers = lora.enable_lora(model, 2, layout="diffusers", include_mlp=True, seed=0)
    counts = lora.lora_parameter_counts(model, 2, include_mlp=True)
    report = lora.parameter_report(model)
    assert report["lora"] == counts["diffusers"] < count_params(lora.lora_variables(model))
    assert report["total"] == tiny_setup().model.backbone.count_params()
    trainer = FlowMatchingTrainer(model.backbone, seed=0)
    trainer.compile(keras.optimizers.AdamW(5e-3))
    trainer.fit(data.TrainingBatches(cached, 4, seed=0), epochs=1, verbose=0)
    for layer in layers:
        if layer.name == "attention_qkv":
            outside, b = off_block(layer)
            assert not np.any(outside) and np.any(b)
    trained = diffuser_output(model, cached)

    path = lora.save_lora(model, tmp_path / "sd3.lora.npz")
    fresh = sd3.from_preset(tiny_setup().preset_dir)
    loaded = lora.load_lora(fresh, path)
    assert [layer.path for layer in loaded] == [layer.path for layer in layers]
    assert all(isinstance(layer.lora_kernel_b.constraint, lora.BlockDiagonal) for layer in loaded
               if layer.name == "attention_qkv")
    assert lora.parameter_report(fresh) == report
    np.testing.assert_array_equal(diffuser_output(fresh, cached), trained)
    assert lora.merge_lora(fresh) == len(layers)
    np.testing.assert_allclose(diffuser_output(fresh, cached), trained, atol=1e-5)


def test_parameter_counts_of_both_layouts():
    counts = {mlp: lora.lora_parameter_counts(mmdit(), 4, include_mlp=mlp) for mlp in (False, True)}
    print("LoRA parameters of the tiny MMDiT at rank 4:", counts)
    hidden, rank = 32, 4
    # 3 full attention blocks (x_blocks, context_block_0) and one qkv-only (last context block).
    assert counts[False] == {"fused": (3 * 6 + 4) * hidden * rank, "diffusers": (3 * 8 + 6) * hidden * rank}
    for layout in lora.LAYOUTS:
        assert counts[True][layout] == counts[False][layout] + 3 * 10 * hidden * rank
        model = mmdit()
        lora.enable_lora(model, 4, layout=layout, include_mlp=True)
        assert lora.parameter_report(model)["lora"] == counts[True][layout]


def test_load_lora_refuses_different_adapters(tmp_path):
    source = mmdit()
    lora.enable_lora(source, 2, 2.0, seed=0)
    path = lora.save_lora(source, tmp_path / "a.lora.npz")
    cases = {
        "rank 2 .* rank 4": dict(rank=4, alpha=2.0),
        "alpha 2.0 .* alpha 8.0": dict(rank=2, alpha=8.0),
        "layout 'fused' .* layout 'diffusers'": dict(rank=2, alpha=2.0, layout="diffusers"),
        "target_layer_names": dict(rank=2, alpha=2.0, include_mlp=True),
    }
    for message, options in cases.items():
        model = mmdit()
        lora.enable_lora(model, **options)
        with pytest.raises(ValueError, match=f"{message}.*fresh model"):
            lora.load_lora(model, path)
    same = mmdit()
    lora.enable_lora(same, 2, 2.0)
    lora.load_lora(same, path)


def test_file_without_layout_loads_as_fused(tmp_path):
    source = mmdit()
    lora.enable_lora(source, 2, seed=0)
    path = lora.save_lora(source, tmp_path / "a.lora.npz")
    with np.load(path) as file:
        arrays = {name: file[name] for name in file.files}
    config = json.loads(str(arrays["__lora_config__"]))
    assert config["layout"] == "fused"
    del config["layout"]
    arrays["__lora_config__"] = np.array(json.dumps(config))
    np.savez(tmp_path / "old.lora.npz", **arrays)
    fresh = mmdit()
    layers = lora.load_lora(fresh, tmp_path / "old.lora.npz")
    assert not any(isinstance(layer.lora_kernel_b.constraint, lora.BlockDiagonal) for layer in layers)
    for a, b in zip(a_matrices(layers), a_matrices(lora.lora_layers(source))):
        np.testing.assert_array_equal(a, b)
