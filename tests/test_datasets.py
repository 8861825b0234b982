"""Tests for keras_diffusion.datasets: offline loaders, folders, validation."""

import urllib.error

import keras
import numpy as np
import pytest
from PIL import Image

from keras_diffusion.datasets import (
    DATASETS,
    DatasetUnavailableError,
    load_dataset,
    load_digits,
    load_image_folder,
    load_keras_dataset,
    load_mnist,
    validate_images,
)


def test_load_mnist_shapes_range_and_balanced_shuffle():
    images, labels = load_mnist(num_images=1000, seed=0)
    assert images.shape == (1000, 32, 32, 1) and images.dtype == np.float32
    assert labels.shape == (1000,) and labels.dtype == np.int32
    assert images.min() == -1.0 and images.max() == 1.0
    # The padding border is black (-1).
    assert (images[:, :2] == -1).all() and (images[:, :, -2:] == -1).all()
    # The bundled data is sorted by class; after shuffling a subset has all
    # ten classes in roughly equal numbers.
    counts = np.bincount(labels, minlength=10)
    assert counts.min() > 70 and counts.max() < 130
    assert len(set(labels[:20].tolist())) > 3


def test_load_mnist_full_seed_and_sizes():
    images, labels = load_mnist(image_size=28)
    assert images.shape == (5000, 28, 28, 1)
    np.testing.assert_array_equal(np.bincount(labels), [500] * 10)
    a, la = load_mnist(num_images=10, seed=1)
    b, lb = load_mnist(num_images=10, seed=1)
    c, lc = load_mnist(num_images=10, seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(la, lc)
    # Padding to 32 keeps the 28x28 digit in the middle.
    big, _ = load_mnist(num_images=10, seed=1, image_size=32)
    small, _ = load_mnist(num_images=10, seed=1, image_size=28)
    np.testing.assert_array_equal(big[:, 2:30, 2:30], small)
    resized, _ = load_mnist(num_images=3, image_size=16)
    assert resized.shape == (3, 16, 16, 1)


def test_load_mnist_errors():
    with pytest.raises(ValueError, match="num_images=6000.*5000"):
        load_mnist(num_images=6000)
    with pytest.raises(ValueError, match="image_size.*0"):
        load_mnist(image_size=0)


def test_load_digits():
    images, labels = load_digits(image_size=16)
    assert images.shape == (1797, 16, 16, 1) and images.dtype == np.float32
    assert -1.0 <= images.min() and images.max() <= 1.0
    assert set(labels.tolist()) == set(range(10)) and labels.dtype == np.int32
    native, _ = load_digits(image_size=8, num_images=5)
    assert native.shape == (5, 8, 8, 1)
    assert native.min() == -1.0


def _write(path, size, color, fmt):
    Image.new("RGB", size, color).save(path, format=fmt)


def test_load_image_folder_resizes_crops_and_skips_corrupt(tmp_path):
    _write(tmp_path / "a.png", (40, 20), (255, 0, 0), "PNG")
    _write(tmp_path / "b.JPG", (30, 50), (0, 255, 0), "JPEG")
    _write(tmp_path / "c.jpeg", (16, 16), (0, 0, 255), "JPEG")
    _write(tmp_path / "d.bmp", (64, 64), (255, 255, 255), "BMP")
    (tmp_path / "bad.png").write_bytes(b"this is not a png")
    (tmp_path / "notes.txt").write_text("ignored")
    with pytest.warns(UserWarning, match=r"bad\.png"):
        images, labels = load_image_folder(tmp_path, image_size=24)
    assert labels is None
    assert images.shape == (4, 24, 24, 3) and images.dtype == np.float32
    # Name order (a, b, c, d) with colours intact after resize and crop.
    np.testing.assert_allclose(images[0, 12, 12], [1, -1, -1], atol=0.02)
    np.testing.assert_allclose(images[1, 12, 12], [-1, 1, -1], atol=0.05)
    np.testing.assert_allclose(images[3], 1.0)


def test_load_image_folder_grayscale_and_max_images(tmp_path):
    for i in range(3):
        _write(tmp_path / f"{i}.png", (10, 10), (100, 100, 100), "PNG")
    images, _ = load_image_folder(tmp_path, image_size=8, channels=1, max_images=2)
    assert images.shape == (2, 8, 8, 1)


def test_load_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        load_image_folder(tmp_path / "nope")
    with pytest.raises(ValueError, match=f"{tmp_path.name}.*no image files"):
        load_image_folder(tmp_path)
    (tmp_path / "sub").mkdir()
    with pytest.raises(ValueError, match="1 subfolder"):
        load_image_folder(tmp_path)
    (tmp_path / "bad.jpg").write_bytes(b"\x00\x01garbage")
    with pytest.warns(UserWarning, match=r"bad\.jpg"):
        with pytest.raises(ValueError, match="None of the 1 image file"):
            load_image_folder(tmp_path)
    with pytest.raises(ValueError, match="channels"):
        load_image_folder(tmp_path, channels=2)


@pytest.mark.parametrize(
    "name, module",
    [
        ("keras_mnist", "mnist"),
        ("fashion_mnist", "fashion_mnist"),
        ("cifar10", "cifar10"),
    ],
)
def test_keras_dataset_without_network_raises_clear_error(monkeypatch, name, module):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(getattr(keras.datasets, module), "load_data", offline)
    with pytest.raises(ConnectionError, match="internet.*URLError.*--dataset mnist"):
        load_keras_dataset(name)
    with pytest.raises(DatasetUnavailableError):
        load_dataset(name)


@pytest.mark.parametrize(
    "module, raw_shape, expected",
    [
        ("mnist", (6, 28, 28), (6, 32, 32, 1)),
        ("cifar10", (6, 32, 32, 3), (6, 32, 32, 3)),
    ],
)
def test_keras_dataset_shapes(monkeypatch, module, raw_shape, expected):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, raw_shape, dtype=np.uint8)
    y = (
        np.arange(6, dtype=np.uint8).reshape(-1, 1)
        if module == "cifar10"
        else np.arange(6)
    )
    monkeypatch.setattr(
        getattr(keras.datasets, module), "load_data", lambda: ((x, y), (x, y))
    )
    name = "keras_mnist" if module == "mnist" else module
    images, labels = load_keras_dataset(name, num_images=4)
    assert images.shape == (4,) + expected[1:] and images.dtype == np.float32
    assert labels.shape == (4,) and labels.dtype == np.int32
    resized, _ = load_dataset(name, image_size=16)
    assert resized.shape == (6, 16, 16, expected[-1])


def test_load_dataset_dispatch(tmp_path):
    assert DATASETS == ("mnist", "digits", "keras_mnist", "fashion_mnist", "cifar10")
    images, labels = load_dataset("mnist", num_images=4)
    assert images.shape == (4, 32, 32, 1) and labels.shape == (4,)
    images, _ = load_dataset("digits", image_size=8, num_images=2)
    assert images.shape == (2, 8, 8, 1)
    _write(tmp_path / "a.png", (70, 70), (1, 2, 3), "PNG")
    images, labels = load_dataset(str(tmp_path))
    assert images.shape == (1, 64, 64, 3) and labels is None
    with pytest.raises(ValueError, match="'imagenet'.*mnist, digits.*cifar10"):
        load_dataset("imagenet")


def test_validate_images_accepts_good_batch():
    x = np.zeros((2, 4, 4, 3), np.float32)
    assert validate_images(x, expected_shape=(4, 4, 3)) is x
    assert validate_images(x, expected_shape=(None, None, 3)) is x


def test_validate_images_errors():
    with pytest.raises(ValueError, match="is empty.*0, 4, 4, 3"):
        validate_images(np.zeros((0, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(N, H, W, C\).*\(4, 4, 3\)"):
        validate_images(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="uint8.*to_model_range"):
        validate_images(np.zeros((1, 4, 4, 3), np.uint8))
    bad = np.zeros((2, 4, 4, 3), np.float32)
    bad[1, 2, 3, 0] = np.nan
    bad[1, 3, 3, 0] = np.inf
    with pytest.raises(ValueError, match=r"1 NaN and 1 inf.*\(1, 2, 3, 0\)"):
        validate_images(bad)
    with pytest.raises(ValueError, match=r"\(4, 4, 3\).*\(32, 32, 3\)"):
        validate_images(np.zeros((1, 4, 4, 3), np.float32), expected_shape=(32, 32, 3))


def test_loaded_datasets_pass_validation():
    images, _ = load_mnist(num_images=8)
    assert validate_images(images, expected_shape=(32, 32, 1)) is images
