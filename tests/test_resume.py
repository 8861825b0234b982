"""Exact resume (keras_diffusion.resume): an interrupted, resumed run equals the uninterrupted one.

Each run trains a tiny MLP on 32 vectors (4 batches of 8 per epoch) for 3 epochs, checkpointing
every 2 steps. The interrupted run stops after its 7th step (inside epoch 2; the checkpoint of
step 6 is the latest), or on Ctrl+C (which checkpoints the step it ends), the resumed run
continues it, and every weight, optimizer and generator state and every logged loss must equal
the uninterrupted run's, exactly (`tests/resume_check.py` says why, and how one model object runs
both to keep the test fast).
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_diffusion import resume
from keras_diffusion.models import DDIM
from keras_diffusion.models import DDPM
from keras_diffusion.models import EDM
from keras_diffusion.models import FlowMatching
from keras_diffusion.processes import DiscreteVPSchedule
from tests.resume_check import assert_same_run

X = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
LABELS = np.arange(32) % 3


def _network(width=16, num_classes=None):
    x, t = keras.Input((4,)), keras.Input(())
    inputs = [x, t]
    h = keras.layers.Concatenate()([x, keras.layers.Reshape((1,))(t)])
    if num_classes:
        labels = keras.Input((), dtype="int32")
        inputs.append(labels)
        h = keras.layers.Concatenate()([h, keras.layers.Flatten()(keras.layers.Embedding(num_classes + 1, 2)(labels))])
    h = keras.layers.Dense(width, activation="silu")(h)
    h = keras.layers.Dropout(0.2, seed=7)(h)  # its own SeedGenerator, restored too
    return keras.Model(inputs, keras.layers.Dense(4)(h))


def _model(kind, use_ema=True, width=16):
    keras.utils.set_random_seed(1)
    if kind == "lora":  # a flow model whose hidden layer trains a LoRA adapter on a frozen kernel
        network = _network(width)
        next(layer for layer in network.layers if isinstance(layer, keras.layers.Dense)).enable_lora(2)
        model = FlowMatching(network, seed=5)
    elif kind == "ddpm":  # class-conditional, so label dropout is drawn too
        model = DDPM(_network(width, 3), DiscreteVPSchedule(num_train_timesteps=50), num_classes=3,
                     label_dropout=0.3, seed=5)
    elif kind == "ddim":
        model = DDIM(_network(width), kid_feature_extractor=None, seed=5)
        model.adapt(X)
    elif kind == "flow":
        model = FlowMatching(_network(width), seed=5)
    else:
        model = EDM(_network(width), seed=5)
    model.compile(keras.optimizers.AdamW(1e-2, use_ema=use_ema, ema_momentum=0.9))
    return model


def _data(kind, batch_size=8):
    data = {"images": X, "labels": LABELS} if kind == "ddpm" else X
    return resume.ResumableBatches(data, batch_size, seed=3)


def _assert_same_run(kind, tmp_path, use_ema=True, stops=(7,)):
    backup, _ = assert_same_run(_model(kind, use_ema), _data(kind), tmp_path, stops)
    return backup


def test_resume_inside_an_epoch_equals_the_uninterrupted_run(tmp_path):
    # Killed after step 7 = epoch 2, step 3; the checkpoint of step 6 (epoch 2, step 2) was the latest.
    # The rerun is killed too, after 1 step, before it writes a checkpoint: its resume mark stays.
    backup = _assert_same_run("ddpm", tmp_path, stops=(7, 1))
    assert backup.resumes == [{"epoch": 2, "step": 2}] * 2
    assert not os.path.exists(tmp_path / "b")  # deleted when training ended


def test_ctrl_c_checkpoints_its_step_so_a_rerun_repeats_none(tmp_path):
    # Ctrl+C in step 7 (epoch 2, step 3; no checkpoint is due): that step is saved, and the rerun
    # starts with a one-batch remainder (on TensorFlow, Keras reads a batch twice before training:
    # that must not move the data on). Its Ctrl+C lands in step 8, the last of epoch 2: it stops at
    # the epoch end, after that checkpoint.
    backup = _assert_same_run("flow", tmp_path, stops=(("ctrl_c", 7), ("ctrl_c", 1)))
    assert backup.resumes == [{"epoch": 2, "step": 3}, {"epoch": 3, "step": 0}]


def test_a_lora_adapter_resumes_exactly(tmp_path):
    # Keras' save_weights writes a LoRA layer's kernel with the adapter merged in and loads it with
    # the adapter zeroed: a resume from it trained on from other weights. Checkpoints hold values.
    _assert_same_run("lora", tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ddim", "flow", "edm"])
@pytest.mark.parametrize("use_ema", [True, False])
def test_every_family_resumes_exactly(kind, use_ema, tmp_path):
    # Two interrupts: inside epoch 1 (after step 3; checkpoint 2) and after step 9 (checkpoint 8, epoch 2's end).
    backup = _assert_same_run(kind, tmp_path, use_ema=use_ema, stops=(3, 7))
    assert backup.resumes == [{"epoch": 1, "step": 2}, {"epoch": 3, "step": 0}]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A checkpoint inside epoch 1, after step 2, written through the callback's hooks (no training)."""
    folder = tmp_path_factory.mktemp("ckpt") / "backup"
    model = _model("flow")
    backup = resume.ExactBackupAndRestore(folder, _data("flow"), save_freq=2, run_config={"lr": "1e-2"})
    backup.set_model(model)
    backup.on_train_begin()
    backup.on_epoch_begin(0)
    backup.on_train_batch_end(0)
    backup.on_train_batch_end(1)
    assert backup.saved_position() == (0, 2)
    return folder


def _copy(checkpoint, tmp_path):
    import shutil

    return shutil.copytree(checkpoint, tmp_path / "backup")


def _resume_flow(folder, width=16, **config):
    model = _model("flow", width=width)
    backup = resume.ExactBackupAndRestore(folder, _data("flow"), save_freq=2, run_config=config)
    resume.fit(model, backup, epochs=3, verbose=0)


def test_other_arguments_are_named(checkpoint, tmp_path):
    folder = _copy(checkpoint, tmp_path)
    with pytest.raises(ValueError, match=r"lr was '1e-2' there and is '1e-3' here.*start fresh"):
        _resume_flow(folder, lr="1e-3")


def test_another_batch_size_is_named(checkpoint, tmp_path):
    folder = _copy(checkpoint, tmp_path)
    backup = resume.ExactBackupAndRestore(folder, _data("flow", batch_size=10), run_config={"lr": "1e-2"})
    with pytest.raises(ValueError, match="data.batch_size was 8 there and is 10 here"):
        resume.fit(_model("flow"), backup, epochs=3, verbose=0)


def test_a_checkpoint_of_another_model_is_refused(checkpoint, tmp_path):
    folder = _copy(checkpoint, tmp_path)
    with pytest.raises(ValueError, match=r"another model.*\(5, 16\) float32 there, \(5, 32\) float32 here"):
        _resume_flow(folder, width=32, lr="1e-2")


def test_a_truncated_weights_file_is_a_clear_error(checkpoint, tmp_path):
    folder = _copy(checkpoint, tmp_path)
    weights = folder / json.loads((folder / "state.json").read_text())["weights"]
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"truncated or damaged: it has 1,000 bytes.*Delete"):
        _resume_flow(folder, lr="1e-2")


def test_a_truncated_state_file_is_a_clear_error(checkpoint, tmp_path):
    folder = _copy(checkpoint, tmp_path)
    state = folder / "state.json"
    state.write_text(state.read_text()[:200])
    with pytest.raises(ValueError, match=r"state.json' is damaged or truncated.*start fresh"):
        _resume_flow(folder, lr="1e-2")


def test_a_checkpoint_of_another_format_is_named(checkpoint, tmp_path):
    folder = _copy(checkpoint, tmp_path)
    state = folder / "state.json"
    state.write_text(json.dumps({**json.loads(state.read_text()), "format": 1}))
    with pytest.raises(ValueError, match=r"has format 1, written by another version.*start fresh"):
        _resume_flow(folder, lr="1e-2")


def test_a_plain_fit_refuses_a_checkpoint_inside_an_epoch(checkpoint, tmp_path):
    folder = _copy(checkpoint, tmp_path)
    data = _data("flow")
    backup = resume.ExactBackupAndRestore(folder, data, run_config={"lr": "1e-2"})
    with pytest.raises(ValueError, match=r"inside epoch 1 \(after step 2\).*resume.fit"):
        _model("flow").fit(data, epochs=3, shuffle=False, callbacks=[backup], verbose=0)


def test_a_write_killed_midway_leaves_the_previous_checkpoint(checkpoint, tmp_path, monkeypatch):
    folder = _copy(checkpoint, tmp_path)
    before = sorted(os.listdir(folder))
    model = _model("flow")
    backup = resume.ExactBackupAndRestore(folder, _data("flow"), run_config={"lr": "1e-2"})
    backup.set_model(model)
    model.optimizer.build(model.trainable_variables)
    backup.global_step = 4

    def half_written(file, *args, **kwargs):  # the process dies inside np.savez
        file.write(b"PK partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", half_written)
    with pytest.raises(KeyboardInterrupt):
        backup._save(1, 0)
    assert sorted(os.listdir(folder)) == before
    monkeypatch.undo()

    # Killed after the new weights file is in place, before the state names it.
    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(backup, "_write_state", killed)
    with pytest.raises(KeyboardInterrupt):
        backup._save(1, 0)
    assert len(os.listdir(folder)) == len(before) + 1
    monkeypatch.undo()
    assert backup.saved_position() == (0, 2)  # still the previous checkpoint, which loads:
    backup.data.set_position(0, 2)
    backup._load_model()
    assert sorted(os.listdir(folder)) == before  # and the orphan is gone


def test_batches_are_a_function_of_seed_and_position():
    data = resume.ResumableBatches(np.arange(10.0), batch_size=4, seed=0)
    epoch1 = np.concatenate([data.batch(1, step) for step in range(3)])
    assert sorted(epoch1) == list(range(10)) and list(epoch1) != list(range(10))
    assert not np.array_equal(epoch1, np.concatenate([data.batch(2, step) for step in range(3)]))
    data.set_position(1, 1)
    assert len(data) == 2
    np.testing.assert_array_equal(np.concatenate([data[0], data[1]]), epoch1[4:])
    with pytest.raises(ValueError, match="shuffle=False"):
        data[1]  # out of order: fit(shuffle=True) would do this


@pytest.mark.slow
def test_kill_resume_tool(tmp_path):
    """`tools/kill_resume.py` with 2 kills: a few minutes (4+ training processes), so slow."""
    report = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "tools/kill_resume.py", "--backend", keras.backend.backend(), "--kills", "2",
         "--epochs", "2", "--num-images", "96", "--folder", str(tmp_path / "runs"), "--json", str(report)],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), capture_output=True, text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(report.read_text())
    assert report["kills"] == 2 and report["checkpointed_steps_repeated"] == 0
    assert report["weights_max_abs_difference"] == 0 and report["same_losses"]
