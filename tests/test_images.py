"""Tests for keras_diffusion.images: conversions, grids, atomic PNG/GIF."""

import os

import numpy as np
import pytest
from PIL import Image, ImageSequence

from keras_diffusion.images import (
    make_grid,
    save_gif,
    save_grid,
    save_png,
    to_model_range,
    to_uint8,
)


def test_to_uint8_maps_range_clips_and_rounds():
    x = np.array([-1.0, 0.0, 1.0, -3.0, 2.0, 0.5], np.float32)
    np.testing.assert_array_equal(to_uint8(x), [0, 128, 255, 0, 255, 191])
    assert to_uint8(x).dtype == np.uint8


def test_to_uint8_rejects_nan_and_integer_input():
    with pytest.raises(ValueError, match="NaN"):
        to_uint8(np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match="uint8"):
        to_uint8(np.zeros(3, np.uint8))


def test_to_model_range_inverts_to_uint8():
    x = np.arange(256, dtype=np.uint8)
    y = to_model_range(x)
    assert y.dtype == np.float32
    assert y.min() == -1.0 and y.max() == 1.0
    np.testing.assert_array_equal(to_uint8(y), x)


def test_to_model_range_rejects_float():
    with pytest.raises(ValueError, match="float64.*astype"):
        to_model_range(np.zeros(3))


def test_make_grid_layout_and_pixel_placement():
    n, h, w = 5, 3, 4
    imgs = np.stack([np.full((h, w, 1), 10 * (i + 1), np.uint8) for i in range(n)])
    grid = make_grid(imgs, rows=2, padding=1, pad_value=255)
    # 2 rows, ceil(5 / 2) = 3 columns.
    assert grid.shape == (2 * (h + 1) + 1, 3 * (w + 1) + 1, 1)
    for i in range(n):
        r, c = divmod(i, 3)
        top, left = 1 + r * (h + 1), 1 + c * (w + 1)
        assert (grid[top : top + h, left : left + w] == 10 * (i + 1)).all()
    # Border, gutters and the unused last cell are padding.
    assert (grid[0] == 255).all() and (grid[:, 0] == 255).all()
    assert (grid[1 + h] == 255).all()
    assert (grid[1 + (h + 1) :, 1 + 2 * (w + 1) :] == 255).all()


def test_make_grid_default_rows():
    assert make_grid(np.zeros((16, 8, 8, 3), np.uint8)).shape == (42, 42, 3)
    # 8 images: floor(sqrt(8)) = 2 rows, 4 columns.
    eight = np.zeros((8, 8, 8, 3), np.uint8)
    assert make_grid(eight, padding=0).shape == (16, 32, 3)
    assert make_grid(np.zeros((1, 8, 8, 3), np.uint8), padding=0).shape == (8, 8, 3)


def test_make_grid_errors():
    with pytest.raises(ValueError, match="float32.*to_uint8"):
        make_grid(np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(N, H, W, C\).*\(4, 4, 3\)"):
        make_grid(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="between 1 and.*3.*got 4"):
        make_grid(np.zeros((3, 4, 4, 3), np.uint8), rows=4)
    with pytest.raises(ValueError, match="empty"):
        make_grid(np.zeros((0, 4, 4, 3), np.uint8))


@pytest.mark.parametrize(
    "shape, mode", [((5, 7, 3), "RGB"), ((5, 7, 1), "L"), ((5, 7), "L")]
)
def test_save_png_round_trip(tmp_path, shape, mode):
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    path = tmp_path / "x.png"
    assert save_png(path, image) == str(path)
    with Image.open(path) as loaded:
        assert loaded.format == "PNG" and loaded.mode == mode
        expected = image[..., 0] if image.shape[-1:] == (1,) else image
        np.testing.assert_array_equal(np.asarray(loaded), expected)


def test_save_png_is_atomic(tmp_path):
    path = tmp_path / "x.png"
    save_png(path, np.zeros((4, 4, 3), np.uint8))
    save_png(path, np.full((4, 4, 3), 9, np.uint8))  # Overwrite in place.
    assert os.listdir(tmp_path) == ["x.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(path)), 9)


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "x.png"
    save_png(path, np.zeros((4, 4, 3), np.uint8))
    before = path.read_bytes()

    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_png(path, np.full((4, 4, 3), 200, np.uint8))
    assert os.listdir(tmp_path) == ["x.png"]
    assert path.read_bytes() == before


def test_save_png_missing_parent_names_folder(tmp_path):
    missing = tmp_path / "no_such_dir"
    with pytest.raises(FileNotFoundError, match="no_such_dir.*Create it"):
        save_png(missing / "x.png", np.zeros((4, 4, 3), np.uint8))
    assert not missing.exists()


def test_save_png_rejects_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="float32.*to_uint8"):
        save_png(tmp_path / "x.png", np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(H, W\) or \(H, W, C\).*\(1, 4, 4, 3\)"):
        save_png(tmp_path / "x.png", np.zeros((1, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="2 channels"):
        save_png(tmp_path / "x.png", np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(IsADirectoryError):
        save_png(tmp_path, np.zeros((4, 4, 3), np.uint8))
    assert os.listdir(tmp_path) == []


def test_save_grid_writes_grid(tmp_path):
    imgs = np.stack([np.full((6, 6, 3), i * 50, np.uint8) for i in range(4)])
    path = save_grid(tmp_path / "g.png", imgs, rows=1)
    loaded = np.asarray(Image.open(path))
    np.testing.assert_array_equal(loaded, make_grid(imgs, rows=1))
    assert loaded.shape == (10, 34, 3)


def test_save_gif_frames_size_and_loop(tmp_path):
    frames = np.stack([np.full((5, 7, 3), 60 * i, np.uint8) for i in range(4)])
    path = save_gif(tmp_path / "a.gif", frames, fps=10, loop=0)
    with Image.open(path) as gif:
        assert gif.format == "GIF"
        assert gif.size == (7, 5)
        assert gif.info["loop"] == 0
        loaded = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(gif)]
    assert len(loaded) == 4
    assert [int(f[0, 0, 0]) for f in loaded] == [0, 60, 120, 180]
    assert os.listdir(tmp_path) == ["a.gif"]


def test_save_gif_single_grayscale_frame(tmp_path):
    path = save_gif(tmp_path / "a.gif", np.full((1, 4, 4, 1), 77, np.uint8))
    with Image.open(path) as gif:
        assert gif.n_frames == 1
        assert np.asarray(gif.convert("L"))[0, 0] == 77


def test_save_gif_errors(tmp_path):
    with pytest.raises(ValueError, match="at least 1 frame"):
        save_gif(tmp_path / "a.gif", np.zeros((0, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\(N, H, W, C\).*\(4, 4, 3\)"):
        save_gif(tmp_path / "a.gif", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="fps"):
        save_gif(tmp_path / "a.gif", np.zeros((2, 4, 4, 3), np.uint8), fps=0)
    with pytest.raises(FileNotFoundError, match="missing"):
        save_gif(tmp_path / "missing" / "a.gif", np.zeros((2, 4, 4, 3), np.uint8))
    assert os.listdir(tmp_path) == []


def test_backend_tensor_input():
    import keras

    x = keras.ops.convert_to_tensor(np.array([-1.0, 1.0], np.float32))
    np.testing.assert_array_equal(to_uint8(x), [0, 255])
