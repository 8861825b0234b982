"""Tests for keras_diffusion.callbacks with stand-in models."""

import os
import signal

import keras
import numpy as np
import pytest
from PIL import Image

from keras_diffusion.callbacks import InterruptAtBatchEnd
from keras_diffusion.callbacks import SampleGrid


class FakeDiffusion(keras.Model):
    """A trainable model whose `generate` returns a fixed uint8 batch."""

    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(1)
        self.generate_calls = []

    def call(self, x):
        return self.dense(x)

    def generate(self, num_images, **kwargs):
        self.generate_calls.append((num_images, kwargs))
        value = 40 * len(self.generate_calls)
        return np.full((num_images, 8, 6, 3), value, np.uint8)


def _fit(callback, epochs):
    model = FakeDiffusion()
    model.compile(optimizer="sgd", loss="mse")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 4)).astype("float32")
    y = rng.normal(size=(8, 1)).astype("float32")
    model.fit(x, y, epochs=epochs, batch_size=4, verbose=0, callbacks=[callback])
    return model


def test_sample_grid_writes_a_png_each_epoch(tmp_path):
    directory = tmp_path / "samples"  # Created by the callback.
    callback = SampleGrid(
        directory, num_images=4, seed=3, sampler="ddpm", num_steps=7, guidance=2.0
    )
    model = _fit(callback, epochs=2)
    expected = [str(directory / "epoch_0001.png"), str(directory / "epoch_0002.png")]
    assert callback.paths == expected
    assert sorted(os.listdir(directory)) == ["epoch_0001.png", "epoch_0002.png"]
    assert (
        model.generate_calls
        == [(4, {"sampler": "ddpm", "num_steps": 7, "seed": 3, "guidance": 2.0})] * 2
    )
    for i, path in enumerate(expected):
        grid = np.asarray(Image.open(path))
        # 4 images -> 2x2 grid of 8x6 cells with 2-pixel padding.
        assert grid.shape == (2 * (8 + 2) + 2, 2 * (6 + 2) + 2, 3)
        assert grid[2, 2, 0] == 40 * (i + 1) and grid[0, 0, 0] == 0


def test_sample_grid_every_n_epochs_and_last_epoch(tmp_path):
    callback = SampleGrid(tmp_path, every_n_epochs=2, num_images=1, num_steps=1)
    _fit(callback, epochs=3)
    names = [os.path.basename(p) for p in callback.paths]
    assert names == ["epoch_0002.png", "epoch_0003.png"]


def test_sample_grid_rejects_bad_arguments_and_models(tmp_path):
    with pytest.raises(ValueError, match="every_n_epochs.*0"):
        SampleGrid(tmp_path, every_n_epochs=0)
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    plain.compile(optimizer="sgd", loss="mse")
    with pytest.raises(TypeError, match="generate"):
        plain.fit(
            np.zeros((4, 4), "float32"),
            np.zeros((4, 1), "float32"),
            epochs=1,
            verbose=0,
            callbacks=[SampleGrid(tmp_path)],
        )


def _fit_with_ctrl_c(at_batch):
    """Sends SIGINT during batch `at_batch` of epoch 1 (of 4 batches).

    Returns the batches ended (with "saved" where `before_interrupt` ran) and the epochs ended.
    """
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    finished, epochs = [], []
    send_ctrl_c = keras.callbacks.LambdaCallback(
        on_train_batch_begin=lambda batch, logs: batch == at_batch and os.kill(os.getpid(), signal.SIGINT),
        on_train_batch_end=lambda batch, logs: finished.append(batch),
        on_epoch_end=lambda epoch, logs: epochs.append(epoch),
    )
    # Python's own Ctrl+C handler, as a user's terminal has it (a suite started
    # in the background by a shell inherits SIGINT ignored).
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    interrupt = InterruptAtBatchEnd(before_interrupt=lambda: finished.append("saved"))
    try:
        with pytest.raises(KeyboardInterrupt):
            # The guard comes last, so the other callbacks see batch 1 end first.
            model.fit(np.zeros((8, 2)), np.zeros((8, 1)), batch_size=2, epochs=3, verbose=0,
                      callbacks=[send_ctrl_c, interrupt])
        assert interrupt.requested
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, outer)
    return finished, epochs


def test_ctrl_c_stops_training_at_the_end_of_the_batch():
    """SIGINT during batch 1 only sets a flag; the interrupt comes when that batch ends, after `before_interrupt`."""
    finished, epochs = _fit_with_ctrl_c(1)
    assert finished == [0, 1, "saved"] and epochs == []


def test_ctrl_c_in_the_last_batch_of_an_epoch_stops_at_its_end():
    """The epoch-end work of the callbacks before the guard (a checkpoint) is done first."""
    finished, epochs = _fit_with_ctrl_c(3)
    assert finished == [0, 1, 2, 3] and epochs == [0]
