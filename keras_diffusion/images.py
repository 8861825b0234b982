"""Image conversion, grids and atomic PNG/GIF writers.

Two image conventions are used throughout keras-diffusion:

* At the API edge (files, `generate()` results) images are `uint8` numpy
  arrays of shape `(N, H, W, C)` with values in `[0, 255]`.
* In model space images are `float32`, channels-last, with values in
  `[-1, 1]`.

`to_uint8` and `to_model_range` convert between the two. The writers
(`save_png`, `save_grid`, `save_gif`) never leave a half-written file behind:
they write to a temporary file in the destination folder and move it into
place with `os.replace`, so the destination holds either the old file or the
complete new one.
"""

import math

import keras
import numpy as np
from PIL import Image

from keras_diffusion.files import write_bytes_atomically


def _as_numpy(images):
    """Returns `images` as a numpy array (backend tensors are converted)."""
    if isinstance(images, np.ndarray):
        return images
    if keras.ops.is_tensor(images):
        return keras.ops.convert_to_numpy(images)
    return np.asarray(images)


def _check_uint8(array, ranks, name):
    """Raises ValueError unless `array` is uint8 with a rank in `ranks`."""
    if array.dtype != np.uint8:
        raise ValueError(
            f"`{name}` must be uint8 with values in [0, 255], got dtype "
            f"{array.dtype}. Convert float images in [-1, 1] with "
            "`keras_diffusion.images.to_uint8(...)` first."
        )
    if array.ndim not in ranks:
        expected = " or ".join(
            {2: "(H, W)", 3: "(H, W, C)", 4: "(N, H, W, C)"}[r] for r in ranks
        )
        raise ValueError(
            f"`{name}` must have shape {expected}, got shape {array.shape} "
            f"(rank {array.ndim}). Reshape it to {expected}."
        )
    if array.size == 0:
        raise ValueError(
            f"`{name}` is empty (shape {array.shape}); pass at least one pixel/image."
        )


def _check_channels(channels, allowed, name, shape):
    if channels not in allowed:
        raise ValueError(
            f"`{name}` has {channels} channels (shape {shape}), but only "
            f"{', '.join(map(str, allowed))} channel(s) can be saved. "
            "Use 1 channel for grayscale or 3 for RGB."
        )


def _to_pil(image):
    """uint8 (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) -> PIL image."""
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    return Image.fromarray(np.ascontiguousarray(image))


def to_uint8(images):
    """Converts model-space float images in [-1, 1] to uint8 in [0, 255].

    Values outside [-1, 1] are clipped; values are rounded to the nearest
    integer.

    Args:
        images: float array (any shape; numpy or backend tensor) in [-1, 1].

    Returns:
        A uint8 numpy array of the same shape.

    Example:
        >>> to_uint8(np.array([-1.0, 0.0, 1.0]))
        array([  0, 128, 255], dtype=uint8)
    """
    images = _as_numpy(images)
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(
            f"`to_uint8` expects float images in [-1, 1], got dtype "
            f"{images.dtype}. If the images are already uint8 in [0, 255], "
            "use them as they are."
        )
    if np.isnan(images).any():
        raise ValueError(
            f"`to_uint8` got {int(np.isnan(images).sum())} NaN value(s); NaN "
            "has no pixel value. This usually means the model diverged: "
            "lower the learning rate or check the inputs."
        )
    scaled = (images.astype(np.float32) + 1.0) * 127.5
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def to_model_range(images):
    """Converts uint8 images in [0, 255] to float32 in [-1, 1].

    Args:
        images: uint8 array (any shape).

    Returns:
        A float32 numpy array of the same shape with values in [-1, 1].

    Example:
        >>> to_model_range(np.array([0, 255], dtype=np.uint8))
        array([-1.,  1.], dtype=float32)
    """
    images = _as_numpy(images)
    if images.dtype != np.uint8:
        raise ValueError(
            f"`to_model_range` expects uint8 images in [0, 255], got dtype "
            f"{images.dtype}. Cast with `images.astype('uint8')` if the "
            "values are whole numbers in [0, 255]."
        )
    return images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def make_grid(images, rows=None, padding=2, pad_value=0):
    """Tiles a batch of images into one image, row by row.

    Image `i` goes to row `i // columns`, column `i % columns`. `padding`
    pixels of `pad_value` separate the cells and surround the grid; unused
    cells in the last row are filled with `pad_value`.

    Args:
        images: uint8 array of shape (N, H, W, C).
        rows: number of rows; defaults to `floor(sqrt(N))` (so grids are
            square or wider than tall). Columns are `ceil(N / rows)`.
        padding: pixels between cells and around the border (>= 0).
        pad_value: uint8 value (0..255) of the padding.

    Returns:
        A uint8 array of shape
        `(rows * (H + padding) + padding, columns * (W + padding) + padding, C)`.

    Example:
        >>> make_grid(np.zeros((16, 32, 32, 3), np.uint8)).shape
        (138, 138, 3)
    """
    images = _as_numpy(images)
    _check_uint8(images, (4,), "images")
    n, height, width, channels = images.shape
    if rows is None:
        rows = max(1, math.isqrt(n))
    if isinstance(rows, bool) or not isinstance(rows, (int, np.integer)):
        raise ValueError(f"`rows` must be an integer, got {rows!r}.")
    if not 1 <= rows <= n:
        raise ValueError(
            f"`rows` must be between 1 and the number of images ({n}), got "
            f"{rows}. Pass rows=None for a near-square grid."
        )
    if not isinstance(padding, (int, np.integer)) or padding < 0:
        raise ValueError(f"`padding` must be a non-negative integer, got {padding!r}.")
    if not isinstance(pad_value, (int, np.integer)) or not 0 <= pad_value <= 255:
        raise ValueError(
            f"`pad_value` must be an integer in [0, 255], got {pad_value!r}."
        )
    columns = math.ceil(n / rows)
    grid = np.full(
        (
            rows * (height + padding) + padding,
            columns * (width + padding) + padding,
            channels,
        ),
        pad_value,
        dtype=np.uint8,
    )
    for i, image in enumerate(images):
        top = padding + (i // columns) * (height + padding)
        left = padding + (i % columns) * (width + padding)
        grid[top : top + height, left : left + width] = image
    return grid


def save_png(path, image):
    """Writes one uint8 image to a PNG file, atomically.

    Args:
        path: destination file (str or path-like). Its folder must exist.
            The file is PNG-encoded whatever its extension.
        image: uint8 array of shape (H, W) or (H, W, C) with C in {1, 3, 4};
            C == 1 and (H, W) are saved as grayscale, C == 4 as RGBA.

    Returns:
        `path` as a string.

    Raises:
        FileNotFoundError: if the parent folder does not exist.

    Example:
        >>> save_png("digit.png", np.zeros((28, 28, 1), np.uint8))
        'digit.png'
    """
    image = _as_numpy(image)
    _check_uint8(image, (2, 3), "image")
    if image.ndim == 3:
        _check_channels(image.shape[-1], (1, 3, 4), "image", image.shape)
    pil_image = _to_pil(image)
    return write_bytes_atomically(path, lambda file: pil_image.save(file, format="PNG"))


def save_grid(path, images, rows=None, padding=2):
    """Tiles a batch with `make_grid` and writes it as one PNG, atomically.

    Args:
        path: destination PNG file; its folder must exist.
        images: uint8 array of shape (N, H, W, C), C in {1, 3, 4}.
        rows: grid rows; defaults to `floor(sqrt(N))`.
        padding: black pixels between and around cells.

    Returns:
        `path` as a string.

    Example:
        >>> save_grid("samples.png", model.generate(16))
        'samples.png'
    """
    return save_png(path, make_grid(images, rows=rows, padding=padding))


def save_gif(path, frames, fps=8, loop=0):
    """Writes an animated GIF from uint8 frames, atomically.

    GIF stores frame delays in 1/100 s, so the delay is `1000 / fps`
    milliseconds rounded to 10 ms. GIF has a 256-colour palette per frame,
    so RGB frames are quantised. Pillow merges consecutive identical frames
    into one longer frame.

    Args:
        path: destination GIF file; its folder must exist.
        frames: uint8 array of shape (F, H, W, C) with F >= 1, C in {1, 3}.
        fps: frames per second (> 0).
        loop: number of times to repeat; 0 loops forever.

    Returns:
        `path` as a string.

    Example:
        >>> save_gif("denoise.gif", np.stack(intermediate_uint8_images))
        'denoise.gif'
    """
    frames = _as_numpy(frames)
    if frames.ndim == 4 and frames.shape[0] == 0:
        raise ValueError(
            f"`frames` has no frames (shape {frames.shape}); a GIF needs at "
            "least 1 frame."
        )
    _check_uint8(frames, (4,), "frames")
    _check_channels(frames.shape[-1], (1, 3), "frames", frames.shape)
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or fps <= 0:
        raise ValueError(f"`fps` must be a positive number, got {fps!r}.")
    if isinstance(loop, bool) or not isinstance(loop, int) or loop < 0:
        raise ValueError(
            f"`loop` must be a non-negative integer (0 = forever), got {loop!r}."
        )
    pil_frames = [_to_pil(frame) for frame in frames]

    def write(file):
        pil_frames[0].save(
            file,
            format="GIF",
            save_all=True,
            append_images=pil_frames[1:],
            duration=round(1000 / fps),
            loop=loop,
        )

    return write_bytes_atomically(path, write)
