"""Atomic writes: a failed write never leaves a destination half-written."""

import json
import os

import pytest

from keras_diffusion.files import replace_atomically
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
