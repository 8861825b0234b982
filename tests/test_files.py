"""Atomic writes: a failed write never leaves a destination half-written."""

import json
import os

import numpy as np
import pytest

from keras_diffusion.files import replace_atomically
from keras_diffusion.files import replace_folder_atomically
from keras_diffusion.files import write_bytes_atomically
from keras_diffusion.files import write_json


def test_write_json_round_trips(tmp_path):
    path = write_json(tmp_path / "log.json", {"loss": [0.5, 0.25]})
    assert json.loads(open(path).read()) == {"loss": [0.5, 0.25]}


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "model.keras"
    path.write_text("old")

    def fail(tmp):
        with open(tmp, "w") as file:
            file.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        replace_atomically(path, fail)
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["model.keras"]


def test_a_folder_is_replaced_whole_and_a_failed_write_keeps_the_old_one(tmp_path):
    def write(text):
        def writer(path):
            os.makedirs(path)
            with open(os.path.join(path, "config.json"), "w") as file:
                file.write(text)
            if text == "broken":
                raise RuntimeError("disk full")

        return writer

    folder = replace_folder_atomically(tmp_path / "preset", write("one"))
    replace_folder_atomically(folder, write("two"))
    assert (tmp_path / "preset" / "config.json").read_text() == "two"
    with pytest.raises(RuntimeError, match="disk full"):
        replace_folder_atomically(folder, write("broken"))
    assert (tmp_path / "preset" / "config.json").read_text() == "two"
    assert os.listdir(tmp_path) == ["preset"]  # no staging folder left


def test_temp_path_keeps_the_extension(tmp_path):
    seen = []
    replace_atomically(tmp_path / "model.keras", lambda tmp: (seen.append(tmp), open(tmp, "w").close()))
    assert seen[0].endswith(".keras") and seen[0] != str(tmp_path / "model.keras")
    replace_atomically(tmp_path / "a.weights.h5", lambda tmp: (seen.append(tmp), open(tmp, "w").close()))
    assert seen[1].endswith(".tmp.weights.h5")


def test_bytes_writer_gets_an_open_file(tmp_path):
    path = write_bytes_atomically(tmp_path / "a.bin", lambda file: file.write(b"\x00\x01"))
    assert open(path, "rb").read() == b"\x00\x01"


def test_missing_folder_and_folder_destination_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_json(tmp_path / "missing" / "log.json", {})
    with pytest.raises(IsADirectoryError, match="existing folder"):
        write_json(tmp_path, {})


def test_save_model_without_optimizer_is_smaller_and_denoises_the_same(tmp_path):
    import keras

    from keras_diffusion.files import save_model
    from tests.test_ddpm import tiny_model

    model = tiny_model()
    model.optimizer.build(model.trainable_variables)  # the state a fit() leaves, without the fit
    full = save_model(model, str(tmp_path / "full.keras"))
    light = save_model(model, str(tmp_path / "light.keras"), include_optimizer=False)
    assert os.path.getsize(light) < 0.7 * os.path.getsize(full)
    loaded = keras.saving.load_model(light)
    assert getattr(loaded, "optimizer", None) is None
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 1)).astype("float32")
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(loaded.denoise(x, 3.0)), keras.ops.convert_to_numpy(model.denoise(x, 3.0))
    )


def test_load_model_names_a_missing_or_corrupt_file(tmp_path):
    from keras_diffusion.files import load_model

    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(str(tmp_path / "missing.keras"))
    legacy = os.path.join(os.path.dirname(__file__), "fixtures", "legacy_ddpm.keras")
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes(open(legacy, "rb").read()[:5000])
    with pytest.raises(ValueError, match="not a valid .keras archive"):
        load_model(str(truncated))
    assert type(load_model(legacy)).__name__ == "DDPM"
