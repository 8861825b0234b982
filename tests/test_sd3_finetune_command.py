"""The `finetune` command (`keras_diffusion.cli.finetune`): clear errors first, then end-to-end runs."""

import json

import numpy as np
import pytest
from PIL import Image

from keras_diffusion import sd3
from keras_diffusion.cli import main
from keras_diffusion.sd3 import lora
from keras_diffusion.sd3.walks import save_grid
from tests.sd3_fixtures import tiny_setup, torch_single_thread  # noqa: F401


def captioned_folder(folder, count=4):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        color = (200, 30, 30) if i % 2 else (30, 30, 200)
        image = np.clip(np.array(color) + rng.integers(0, 40, (40, 40, 3)), 0, 255)
        Image.fromarray(image.astype(np.uint8)).save(folder / f"a_{'red' if i % 2 else 'blue'}_square_{i}.png")
    return folder


def finetune(*args):
    return main(["finetune", "--preset", tiny_setup().preset_dir, "--steps", "2", *map(str, args)])


def test_bad_input_fails_before_loading(tmp_path, capsys):
    folder = captioned_folder(tmp_path / "data")
    with pytest.raises(SystemExit):
        finetune("--data", folder, "--method", "magic", "--out", tmp_path / "out")
    assert "invalid choice: 'magic' (choose from 'lora', 'full', 'dreambooth', 'textual-inversion')" in (
        capsys.readouterr().err)
    (tmp_path / "empty").mkdir()
    assert finetune("--data", tmp_path / "empty", "--method", "lora", "--out", tmp_path / "out") == 2
    assert "holds no images" in capsys.readouterr().err
    (folder / "captions.txt").write_text("missing.png\ta cat\n")
    assert finetune("--data", folder, "--method", "lora", "--out", tmp_path / "out") == 2
    assert "'missing.png'" in capsys.readouterr().err
    assert finetune("--data", folder, "--method", "dreambooth", "--out", tmp_path / "out") == 2
    assert "--instance-prompt" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # a full run: load, sample before/after, train (~30-60 s per backend)
def test_lora_run_writes_adapter_samples_and_log(tmp_path):
    folder = captioned_folder(tmp_path / "data")
    out = tmp_path / "out"
    code = finetune(
        "--data", folder, "--method", "lora", "--out", out, "--epochs", 2,
        "--batch-size", 2, "--cache-latents", "--learning-rate", 5e-3, "--rank", 2,
    )
    assert code == 0
    assert {p.name for p in out.iterdir()} >= {
        "sd3.lora.npz", "samples_before.png", "samples_after.png", "train_log.json"
    }
    log = json.loads((out / "train_log.json").read_text())
    assert log["epochs_run"] == 2 and log["optimizer_steps"] == 4
    fresh = sd3.from_preset(tiny_setup().preset_dir)
    lora.load_lora(fresh, out / "sd3.lora.npz")
    assert log["trainable_parameters"] == lora.parameter_report(fresh)["lora"]
    # The after-grid shows the trained adapters: a fresh model with the saved file draws it.
    before, after = (np.asarray(Image.open(out / f"samples_{n}.png")) for n in ("before", "after"))
    assert np.abs(after.astype(int) - before).max() > 0
    prompts = log["sample_prompts"]
    expected = sd3.text_to_image(fresh, prompts, num_steps=2, seed=log["seed"])
    np.testing.assert_array_equal(after, np.asarray(Image.open(save_grid(out / "fresh.png", expected))))
    assert not (out / "backup").exists()  # removed after a finished run


@pytest.mark.slow  # a full run with class-image generation
@pytest.mark.parametrize("method", ["dreambooth", "textual-inversion", "full"])
def test_other_methods_write_their_result(tmp_path, method):
    folder = captioned_folder(tmp_path / "data", count=2)
    out = tmp_path / "out"
    extra = {
        "dreambooth": ["--instance-prompt", "a photo of sks square", "--class-prompt", "a square",
                       "--num-class-images", 2],
        "textual-inversion": ["--placeholder", "<sq>", "--initializer", "a"],
        "full": [],
    }[method]
    assert finetune("--data", folder, "--method", method, "--out", out, "--epochs", 1, *extra) == 0
    result = {"dreambooth": "sd3.lora.npz", "textual-inversion": "embedding.npz", "full": "preset"}[method]
    assert (out / result).exists() and (out / "samples_after.png").exists()


@pytest.mark.slow  # four finetune runs, each loading, sampling and training (~1-3 min per backend)
def test_an_interrupted_finetune_resumes_exactly(tmp_path, monkeypatch):
    """`finetune` killed, rerun, stopped by Ctrl+C, rerun: its adapter and losses equal an uninterrupted run's.

    8 images in batches of 2 for 2 epochs (8 steps), a checkpoint every 2 steps, caption
    dropout and random flips on. The first run is killed after step 3 (the rerun resumes at
    step 2); the rerun gets Ctrl+C in its 3rd step, step 5 (epoch 2, step 1), which checkpoints
    that step; the last rerun finishes. The fast check of the same path is
    tests/test_sd3_finetune.py::test_loss_falls_and_an_interrupted_run_resumes_exactly.
    """
    from keras_diffusion.callbacks import InterruptAtBatchEnd

    folder = captioned_folder(tmp_path / "data", count=8)
    options = ["--data", folder, "--method", "lora", "--epochs", 2, "--batch-size", 2, "--cache-latents",
               "--learning-rate", 5e-3, "--rank", 2, "--caption-dropout", 0.25, "--checkpoint-every", 2]
    assert finetune(*options, "--out", tmp_path / "reference") == 0
    out = tmp_path / "out"
    original = InterruptAtBatchEnd.on_train_batch_end

    def stop_in_step(step, ctrl_c):
        seen = []

        def on_train_batch_end(self, batch, logs=None):
            seen.append(batch)
            if len(seen) == step:
                if not ctrl_c:
                    raise KeyboardInterrupt  # a kill: nothing more is written
                self.requested = True  # what the SIGINT handler does
            original(self, batch, logs)

        monkeypatch.setattr(InterruptAtBatchEnd, "on_train_batch_end", on_train_batch_end)

    stop_in_step(3, ctrl_c=False)
    assert finetune(*options, "--out", out) == 130
    stop_in_step(3, ctrl_c=True)
    assert finetune(*options, "--out", out) == 130
    monkeypatch.undo()
    assert finetune(*options, "--out", out) == 0

    reference, log = (json.loads((tmp_path / name / "train_log.json").read_text()) for name in ("reference", "out"))
    assert log["resumed"] == [{"epoch": 1, "step": 2}, {"epoch": 2, "step": 1}]
    assert [e["loss"] for e in log["epochs"]] == [e["loss"] for e in reference["epochs"]]
    assert log["optimizer_steps"] == reference["optimizer_steps"] == 8
    with np.load(tmp_path / "reference" / "sd3.lora.npz") as a, np.load(out / "sd3.lora.npz") as b:
        assert sorted(a) == sorted(b)
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])
    for name in ("samples_before.png", "samples_after.png"):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "reference" / name)),
                                      np.asarray(Image.open(out / name)))
