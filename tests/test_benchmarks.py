"""Smoke test of `benchmarks.compare`: a couple of steps, no timing assertions.

The current backend runs in this process, one other backend in a subprocess
(parity outputs only), and the diffusers reference in this process when
diffusers is installed.
"""

import importlib.util
import json
import os

import keras
import numpy as np
import pytest

from benchmarks import compare
from benchmarks.diffusers_unet import diffusers_unet_kwargs

BACKEND = keras.backend.backend()
# torch starts fastest (no compilation); on torch, compare with JAX.
OTHER = {"jax": "torch", "tensorflow": "torch", "torch": "jax"}[BACKEND]
HAS_DIFFUSERS = importlib.util.find_spec("diffusers") is not None


def test_smoke_run_writes_table_chart_and_small_parity(tmp_path):
    cfg = compare.Config.smoke(batch_size=4, train_steps=1, sample_images=2, sample_steps=2, parity_steps=2, threads=1)
    results, markdown = compare.run(
        cfg, backends=[BACKEND], diffusers=HAS_DIFFUSERS, out=str(tmp_path),
        in_process=(BACKEND, "diffusers"), parity_backends=[BACKEND, OTHER], timeout=300,
    )
    names = [row["name"] for row in results["rows"]]
    assert names == [BACKEND] + (["diffusers"] if HAS_DIFFUSERS else [])
    for row in results["rows"]:
        for key in ("train_images_per_s", "sample_image_steps_per_s", "compile_s", "peak_rss_mb"):
            assert row[key] >= 0, (row["name"], key)
        assert 0 < row["eval_loss"] < 10 and np.isfinite(row["train_loss"])
        assert row["flops"] > 0 and row["params"] > 0
    if HAS_DIFFUSERS:
        ours, peer = results["rows"]
        # Matched layout: parameter and FLOP counts agree within 1%.
        assert abs(ours["params"] - peer["params"]) / peer["params"] < 0.01
        assert abs(ours["flops"] - peer["flops"]) / peer["flops"] < 0.01
    (pair,) = results["parity"]
    assert pair["pair"] == f"{BACKEND} vs {OTHER}"
    assert pair["network"] < compare.PARITY_TOLERANCE["network"]
    assert pair["ddim"] < compare.PARITY_TOLERANCE["ddim"]
    # Nonzero: the check compares informative outputs, not two zero arrays.
    assert pair["network"] > 0 or pair["ddim"] > 0

    lines = markdown.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == [title for title, _ in compare.report.COLUMNS]
    body = [line.split("|")[1].strip() for line in lines[2:2 + len(names)]]
    assert body == names
    assert "Intel" in markdown or "cores available" in markdown
    assert (tmp_path / "compare.md").read_text() == markdown
    saved = json.loads((tmp_path / "compare.json").read_text())
    assert saved["machine"]["versions"]["keras"] == keras.__version__
    assert (tmp_path / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temp files left


def test_keras_flops_counts_a_conv_analytically():
    inputs = keras.Input((8, 8, 3))
    network = keras.Model(inputs, keras.layers.Conv2D(4, 3, padding="same")(inputs))
    assert compare.keras_flops(network) == 2 * 8 * 8 * 3 * 3 * 3 * 4


def test_diffusers_layout_mirrors_the_keras_unet():
    kwargs = diffusers_unet_kwargs(compare.NETWORKS["mnist_small"])
    assert kwargs["down_block_types"] == ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D")
    assert kwargs["up_block_types"] == ("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D")
    with pytest.raises(ValueError, match="dropout"):
        diffusers_unet_kwargs({**compare.NETWORKS["tiny"], "dropout": 0.1})


def test_bad_backend_names_fail_clearly():
    with pytest.raises(ValueError, match="subset of"):
        compare.run(compare.Config.smoke(), backends=["mxnet"])


def test_floor_classifies_kernels():
    from benchmarks import floor

    torch_events = {
        "aten::mkldnn_convolution": "convolution",
        "aten::convolution_backward": "convolution",
        "aten::_scaled_dot_product_flash_attention_for_cpu": "attention + matmul",
        "aten::addmm": "attention + matmul",
        "aten::native_group_norm": "other ops",
        "autograd::engine::evaluate_function: AddBackward0": None,
    }
    tensorflow_ops = {
        "_MklNativeFusedConv2D": "convolution",
        "Conv2DBackpropFilter": "convolution",
        "_MklEinsum": "attention + matmul",
        "BatchMatMulV2": "attention + matmul",
        "AddV2": "other ops",
        "StatefulPartitionedCall": None,
    }
    assert {name: floor.classify_torch(name) for name in torch_events} == torch_events
    assert {name: floor.classify_tensorflow(name) for name in tensorflow_ops} == tensorflow_ops


@pytest.mark.skipif(not HAS_DIFFUSERS, reason="diffusers (requirements-dev.txt) is the floor's reference")
def test_floor_splits_steps_and_bounds_the_speedup(tmp_path):
    from benchmarks import floor

    runs = {"diffusers": floor.measure_diffusers("tiny", batch_size=4, steps=1, threads=1)}
    if BACKEND == "jax":
        # XLA fuses ops across kernels, so JAX has no per-kernel split: the CLI refuses it by name.
        with pytest.raises(SystemExit):
            floor.main(["--backends", "jax", "--network", "tiny", "--out", str(tmp_path)])
    else:
        runs[BACKEND] = floor.measure_keras("tiny", batch_size=4, steps=1, threads=1)
    for name, passes in runs.items():
        for kind in ("train", "forward"):
            row = passes[kind]
            assert row["wall_ms"] > 0 and row["convolution"] > 0, (name, kind, row)
            assert row["attention + matmul"] > 0 and row["other ops"] > 0, (name, kind, row)
    bounds = floor.best_case(runs)
    for kind, bound in bounds.items():
        assert bound["max_speedup"] > bound["native_rest_speedup"] > 0
        assert bound["floor_ms"] == min(
            p[kind]["convolution"] + p[kind]["attention + matmul"] for name, p in runs.items() if name != "tensorflow"
        )
    text = floor.markdown({"config": {"network": "tiny", "batch_size": 4, "steps": 1, "threads": 1},
                           "machine": compare.machine_info(compare.Config.smoke()), "runs": runs,
                           "best_case": bounds})
    assert text.count("| diffusers |") == 2 and "at most" in text


def test_pytorch_default_weights_follow_the_fan_in_rule():
    network = keras.Sequential([keras.Input((6, 6, 4)), keras.layers.Conv2D(8, 3), keras.layers.GroupNormalization(2),
                                keras.layers.Flatten(), keras.layers.Dense(5)])
    weights = compare.pytorch_default_weights(network, seed=0)
    kernel, bias, gamma, beta, dense_kernel, dense_bias = weights
    conv_bound, dense_bound = 1 / np.sqrt(3 * 3 * 4), 1 / np.sqrt(16 * 8)
    for value, bound in ((kernel, conv_bound), (dense_kernel, dense_bound)):
        assert 0.8 * bound < np.abs(value).max() <= bound  # uniform over the whole range
    for value, bound in ((bias, conv_bound), (dense_bias, dense_bound)):
        assert 0 < np.abs(value).max() <= bound
    np.testing.assert_array_equal(gamma, 1.0)
    np.testing.assert_array_equal(beta, 0.0)
    np.testing.assert_array_equal(weights[0], compare.pytorch_default_weights(network, seed=0)[0])


def test_init_effect_gives_a_held_out_curve():
    from benchmarks import init_effect

    curve = init_effect.held_out_curve("pytorch", "tiny", epochs=1, held_out=16, batch_size=32, train_images=64)
    assert len(curve) == 1 and 0 < curve[0] < 10


def test_sd3_captions_measures_are_paired_and_deterministic():
    from benchmarks import sd3_captions
    from tests.sd3_fixtures import tiny_setup

    model = tiny_setup().model
    squares = sd3_captions.colour_squares(("red", "blue"), per_colour=2)
    assert squares.captions == ["a red square"] * 2 + ["a blue square"] * 2
    assert squares.images[0, ..., 0].mean() > 200 and squares.images[2, ..., 2].mean() > 200
    latents = np.random.default_rng(0).standard_normal((2, *model.latent_shape)).astype("float32")
    first = sd3_captions.caption_loss(model, latents, "a red square", repeats=2)
    assert first == sd3_captions.caption_loss(model, latents, "a red square", repeats=2)
    assert first != sd3_captions.caption_loss(model, latents, "a blue square", repeats=2)
    made = sd3_captions.generated_latents(model, "a red square", count=2, num_steps=2)
    assert made.shape == (2, *model.latent_shape) and np.isfinite(made).all()


@pytest.mark.slow  # trains a base model and four fine-tunes: ~10 min per backend
def test_sd3_captions_every_method_teaches_the_captions(tmp_path):
    from benchmarks import sd3_captions

    assert sd3_captions.main(["--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / f"{BACKEND}.json").read_text())
    assert results["base"]["green_vs_cyan"]["losses_ok"]
    for result in results["methods"]:
        method, before, after = result["method"], result["before"], result["after"]
        assert not before["losses_ok"] and not before["latents_ok"], method
        assert after["losses_ok"], method
        # Two token rows move the samples only a little (README): one of the
        # three backends missed the latent measure with textual inversion.
        if method != "textual-inversion":
            assert after["latents_ok"], method


def test_families_compares_samplers_at_equal_model_evaluations():
    from benchmarks import families
    from keras_diffusion.samplers import SAMPLERS

    # Heun pays 2 evaluations per step and 1 for the last: 5, 10 and 25 steps fit 10, 20 and 50.
    assert [families.steps_for("heun", n) for n in families.NFES] == [(5, 9), (10, 19), (25, 49)]
    assert [families.steps_for("dpmpp_2m", n) for n in families.NFES] == [(10, 10), (20, 20), (50, 50)]
    assert all(name in SAMPLERS for names in families.SAMPLERS.values() for name in names)


def test_families_carries_the_cpu_budget_across_a_resume(tmp_path):
    """The CPU seconds spent travel with the checkpoint; a budget that ends inside the epoch being finished ends the run."""
    from benchmarks.budget import CPUBudget
    from keras_diffusion import resume
    from keras_diffusion.models import FlowMatching

    clock = {"t": 0.0}

    class Tick(keras.callbacks.Callback):  # each step costs one fake CPU second
        def on_train_batch_begin(self, batch, logs=None):
            clock["t"] += 1.0

    class Kill(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if backup.global_step == 4:
                raise RuntimeError("killed")

    def run(*extra):
        keras.utils.set_random_seed(0)
        x, t = keras.Input((2,)), keras.Input(())
        h = keras.layers.Concatenate()([x, keras.layers.Reshape((1,))(t)])
        model = FlowMatching(keras.Model([x, t], keras.layers.Dense(2)(h)), seed=0)
        model.compile(keras.optimizers.Adam(1e-3))
        budget = CPUBudget(5.0, clock=lambda: clock["t"])
        data = resume.ResumableBatches(np.zeros((64, 2), "float32"), 8, seed=0)  # 8 steps an epoch
        global backup
        backup = resume.ExactBackupAndRestore(str(tmp_path), data, save_freq=2, extra_state=budget,
                                              delete_checkpoint=False)
        resume.fit(model, backup, epochs=100, callbacks=[Tick(), budget, *extra], verbose=0)
        return budget

    with pytest.raises(RuntimeError, match="killed"):
        run(Kill())
    # The checkpoint at step 4 holds 3 seconds: step 1 (compiling) is not counted.
    budget = run()
    assert budget.spent_before == 3.0
    # This process's first step (5) is not counted either: steps 6 and 7 bring it to 5 seconds,
    # inside epoch 1, which the first of resume.fit's two calls finishes; no second call runs.
    assert backup.global_step == 7 and budget.spent() == 5.0


def test_partial_results_skip_finished_stages_and_refuse_other_arguments(tmp_path):
    from benchmarks.partial import PartialResults

    path, model = tmp_path / "run.partial.json", tmp_path / "model"
    stages = PartialResults(path, {"epochs": 2})
    model.mkdir()
    assert stages.stage("base", lambda: {"loss": (1.0, 0.5)}, outputs=[model]) == {"loss": [1.0, 0.5]}
    again = PartialResults(path, {"epochs": 2})
    assert again.stage("base", lambda: 1 / 0, outputs=[model]) == {"loss": [1.0, 0.5]}
    model.rmdir()  # a stage whose outputs are gone runs again
    assert again.stage("base", lambda: "rerun", outputs=[model]) == "rerun"
    with pytest.raises(ValueError, match=r"other arguments \(epochs: 2 there, 3 here\).*delete the file"):
        PartialResults(path, {"epochs": 3})
    path.write_text('{"config": {"epochs": 2}, "sta')
    with pytest.raises(ValueError, match="damaged.*Delete the file"):
        PartialResults(path, {"epochs": 2})
    again.delete()
    assert not path.exists()


def test_init_effect_resumes_per_finished_curve(tmp_path, monkeypatch, capsys):
    from benchmarks import init_effect

    trained = []

    def curve(init, network, epochs, held_out):
        trained.append(init)
        if init == "pytorch" and trained.count("pytorch") == 1:
            raise KeyboardInterrupt  # killed during the second stage
        return [0.1 if init == "keras" else 0.2] * epochs

    monkeypatch.setattr(init_effect, "held_out_curve", curve)
    argv = ["--epochs", "2", "--partial", str(tmp_path / "p.json")]
    with pytest.raises(KeyboardInterrupt):
        init_effect.main(argv)
    assert init_effect.main(argv) == 0
    assert trained == ["keras", "pytorch", "pytorch"]  # the keras curve was read back
    assert "| keras | 0.100 | 0.100 |" in capsys.readouterr().out
    assert not (tmp_path / "p.json").exists()


def test_sd3_captions_resumes_per_finished_stage(tmp_path, monkeypatch):
    from benchmarks import sd3_captions

    ran = []

    def base_model(preset, folder, seed=0):
        ran.append("base")
        os.makedirs(folder)
        return {"loss_curve": [2.0, 1.0], "green_vs_cyan": {}}

    def run_one(method, preset, args):
        ran.append(method)
        assert os.path.isdir(preset)
        if method == "dreambooth" and ran.count(method) == 1:
            raise KeyboardInterrupt
        return {"method": method}

    monkeypatch.setattr("keras_diffusion.sd3.tiny_preset_dir", lambda: "tiny")  # not built: the stages are fakes
    monkeypatch.setattr(sd3_captions, "base_model", base_model)
    monkeypatch.setattr(sd3_captions, "run_one", run_one)
    monkeypatch.setattr(sd3_captions, "markdown", lambda results, backend, base: "table\n")
    argv = ["--out", str(tmp_path)]
    with pytest.raises(KeyboardInterrupt):
        sd3_captions.main(argv)
    assert sd3_captions.main(argv) == 0
    assert ran == ["base", "full", "lora", "dreambooth", "dreambooth", "textual-inversion"]
    results = json.loads((tmp_path / f"{BACKEND}.json").read_text())
    assert [r["method"] for r in results["methods"]] == list(sd3_captions.METHODS)
    assert sorted(os.listdir(tmp_path)) == sorted([f"{BACKEND}.json", f"{BACKEND}.md"])


def test_distillation_report_lists_each_student_against_its_teacher():
    from benchmarks import distillation

    teacher = {"training": {"steps": 10, "cpu_seconds": 60.0}, "images_per_second": 2.0,
               "samples": [{"sampler": "heun", "steps": 25, "nfe": 49, "fid": 2.0},
                           {"sampler": "dpmpp_2m", "steps": 10, "nfe": 10, "fid": 1.5}]}
    students = {
        "progressive": {"training": {"steps": 30, "cpu_minutes": 3.0}, "images_per_second": 300.0,
                        "samples": [{"steps": n, "nfe": n, "fid": f, **({"teacher": True} if n == 8 else {})}
                                    for n, f in ((1, 9.0), (2, 6.0), (4, 4.0), (8, 3.0))]},
        "ct": {"training": {"steps": 10, "cpu_minutes": 1.0}, "images_per_second": 310.0,
               "samples": [{"steps": n, "nfe": n, "fid": 20.0 / n} for n in (1, 2, 4, 8)]},
    }
    table = distillation.markdown({"teachers": {"edm": teacher}, "students": students})
    assert "| progressive | 30 steps from the edm teacher | 3.0 | 9.00 | 6.00 | 4.00 | 3.00 (teacher's DDIM) | 2.00 | 1.50 | 300 (2.0) |" in table
    assert "| ct | 10 steps from scratch | 1.0 | 20.00 | 10.00 | 5.00 | 2.50 | - | - | 310 |" in table
