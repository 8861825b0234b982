"""Text-to-image, image-to-image and inpainting with Stable Diffusion 3.

Each function checks its inputs, turns them into the `inputs` dict of
KerasHub's `StableDiffusion3TextToImage` / `ImageToImage` / `Inpaint`
`generate()` and returns what it returns: for the same inputs and seed the
images are identical to calling KerasHub directly. Images go in and come out
as uint8 arrays of shape `(N, H, W, 3)`.

Prompts and images are broadcast against each other: one prompt with N
images, or one image with N prompts, gives N results.
`guidance_scale <= 1` turns classifier-free guidance off, as in KerasHub.
"""

import os

import numpy as np

from keras_diffusion import images as image_utils


def text_to_image(
    model,
    prompts,
    negative_prompts=None,
    *,
    num_steps=28,
    guidance_scale=7.0,
    seed=None,
    sampler=None,
):
    """Generates images from text prompts.

    Args:
        model: a `keras_diffusion.sd3.StableDiffusion3`.
        prompts: a string or a non-empty list of strings.
        negative_prompts: `None` (the empty prompt), a string for all
            prompts, or one string per prompt.
        num_steps: number of denoising steps.
        guidance_scale: classifier-free guidance scale; `<= 1` turns it off.
        seed: int seed for the initial latents (and a stochastic sampler's
            noise); `None` draws fresh ones.
        sampler: `None` runs KerasHub's own `generate` (its flow-matching
            Euler scheduler). A name of `keras_diffusion.samplers.SAMPLERS`
            (`"euler"`, `"heun"`, `"dpmpp_2m"`, ...) runs that sampler on
            the MMDiT's `denoise(x, sigma)` (`keras_diffusion.sd3.flow`)
            over the same scheduler's noise levels, from the same initial
            latents; `"euler"` is KerasHub's algorithm, equal up to float
            rounding (it starts at `t = 0.99997` instead of 1).

    Returns:
        uint8 array of shape `(len(prompts), height, width, 3)`.

    Example:
    >>> model = keras_diffusion.sd3.from_preset("tiny")  # doctest: +SKIP
    >>> text_to_image(model, ["a cat", "a dog"], num_steps=4, seed=1).shape
    ...  # doctest: +SKIP
    (2, 32, 32, 3)
    >>> text_to_image(model, "a cat", num_steps=10, seed=1, sampler="dpmpp_2m").shape
    ...  # doctest: +SKIP
    (1, 32, 32, 3)
    """
    prompts = check_prompts(prompts)
    negative_prompts = check_negative_prompts(negative_prompts, len(prompts))
    num_steps = check_num_steps(num_steps)
    guidance_scale = check_guidance_scale(guidance_scale)
    seed = check_seed(seed)
    if sampler is not None:
        from keras_diffusion.sd3.flow import text_to_image_with_sampler

        return text_to_image_with_sampler(
            model, prompts, negative_prompts, sampler, num_steps, guidance_scale, seed
        )
    return model.run_task(
        "text_to_image",
        {"prompts": prompts, "negative_prompts": negative_prompts},
        num_steps=num_steps,
        guidance_scale=guidance_scale,
        seed=seed,
    )


def image_to_image(
    model,
    images,
    prompts,
    negative_prompts=None,
    *,
    strength=0.8,
    num_steps=50,
    guidance_scale=7.0,
    seed=None,
):
    """Redraws images guided by text prompts.

    The images are encoded by the VAE, noised to the level of step
    `int(num_steps * (1 - strength))` and denoised from there.

    Args:
        model: a `keras_diffusion.sd3.StableDiffusion3`.
        images: uint8 array `(H, W, 3)` or `(N, H, W, 3)`, with `(H, W)`
            equal to `model.image_size`.
        prompts: a string or a non-empty list of strings.
        negative_prompts: `None`, a string, or one string per prompt.
        strength: in [0, 1]; how much to change the images. 1 ignores them,
            0 returns their VAE reconstruction.
        num_steps: denoising steps for `strength=1`.
        guidance_scale: classifier-free guidance scale; `<= 1` turns it off.
        seed: int seed for the added noise; `None` draws fresh noise. (A VAE
            built with `sampler_method="sample"` also draws noise when it
            encodes the images; KerasHub does not seed that draw.)

    Returns:
        uint8 array of shape `(N, H, W, 3)`.

    Example:
    >>> photo = np.zeros((32, 32, 3), np.uint8)
    >>> image_to_image(model, photo, "a cat", strength=0.6, seed=1)
    ...  # doctest: +SKIP
    """
    prompts = check_prompts(prompts)
    batch_images = _check_images(images, model.image_size)
    size = _batch_size(len(prompts), "prompts", len(batch_images), "images")
    prompts = _broadcast(prompts, size)
    return model.run_task(
        "image_to_image",
        {
            "images": _broadcast(image_utils.to_model_range(batch_images), size),
            "prompts": prompts,
            "negative_prompts": check_negative_prompts(negative_prompts, size),
        },
        num_steps=check_num_steps(num_steps),
        strength=check_strength(strength),
        guidance_scale=check_guidance_scale(guidance_scale),
        seed=check_seed(seed),
    )


def inpaint(
    model,
    images,
    masks,
    prompts,
    negative_prompts=None,
    *,
    strength=0.6,
    num_steps=50,
    guidance_scale=7.0,
    seed=None,
):
    """Repaints the masked parts of images, guided by text prompts.

    Args:
        model: a `keras_diffusion.sd3.StableDiffusion3`.
        images: uint8 array `(H, W, 3)` or `(N, H, W, 3)`, with `(H, W)`
            equal to `model.image_size`.
        masks: array `(H, W)` or `(N, H, W)` (a trailing axis of 1 is
            allowed). `True`, or a number above 0.5, marks a pixel to
            repaint; the rest is kept.
        prompts: a string or a non-empty list of strings.
        negative_prompts: `None`, a string, or one string per prompt.
        strength: in [0, 1]; how much to change the masked area.
        num_steps: denoising steps for `strength=1`.
        guidance_scale: classifier-free guidance scale; `<= 1` turns it off.
        seed: int seed for the added noise; `None` draws fresh noise.

    Returns:
        uint8 array of shape `(N, H, W, 3)`.

    Example:
    >>> mask = np.zeros((32, 32), bool)
    >>> mask[8:24, 8:24] = True
    >>> inpaint(model, photo, mask, "a cat", seed=1)  # doctest: +SKIP
    """
    prompts = check_prompts(prompts)
    batch_images = _check_images(images, model.image_size)
    batch_masks = _check_masks(masks, model.image_size)
    size = _batch_size(len(batch_images), "images", len(batch_masks), "masks")
    size = _batch_size(len(prompts), "prompts", size, "images")
    return model.run_task(
        "inpaint",
        {
            "images": _broadcast(image_utils.to_model_range(batch_images), size),
            "masks": _broadcast(batch_masks, size),
            "prompts": _broadcast(prompts, size),
            "negative_prompts": check_negative_prompts(negative_prompts, size),
        },
        num_steps=check_num_steps(num_steps),
        strength=check_strength(strength),
        guidance_scale=check_guidance_scale(guidance_scale),
        seed=check_seed(seed),
    )


def save_images(path, images):
    """Writes each image to a PNG file, atomically.

    One image goes to `path`. Several go to `path` formatted with `i=index`
    when it contains `{i}` (e.g. `"cat_{i:02d}.png"`), else to `path` with
    `_<index>` before the extension (`cat.png` -> `cat_0.png`, `cat_1.png`).

    Args:
        path: destination file; its folder must exist.
        images: uint8 array `(H, W, 3)` or `(N, H, W, 3)`.

    Returns:
        The list of paths written.

    Raises:
        FileNotFoundError: if the folder does not exist.

    Example:
    >>> save_images("cat.png", np.zeros((2, 32, 32, 3), np.uint8))
    ...  # doctest: +SKIP
    ['cat_0.png', 'cat_1.png']
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    path = os.fspath(path)
    if len(images) == 1 and "{i" not in path:
        paths = [path]
    elif "{i" in path:
        paths = [path.format(i=i) for i in range(len(images))]
    else:
        stem, extension = os.path.splitext(path)
        paths = [f"{stem}_{i}{extension or '.png'}" for i in range(len(images))]
    return [image_utils.save_png(p, image) for p, image in zip(paths, images)]


def check_prompts(prompts, name="prompts"):
    """Returns `prompts` as a non-empty list of strings, or raises ValueError."""
    if isinstance(prompts, str):
        return [prompts]
    if not isinstance(prompts, (list, tuple)):
        raise ValueError(
            f"`{name}` must be a string or a list of strings, got "
            f"{type(prompts).__name__}: {prompts!r}."
        )
    if not prompts:
        raise ValueError(f"`{name}` is empty; pass at least one prompt string.")
    bad = [p for p in prompts if not isinstance(p, str)]
    if bad:
        raise ValueError(f"`{name}` must hold only strings, got {bad[0]!r}.")
    return list(prompts)


def check_negative_prompts(negative_prompts, size):
    """Returns `size` negative prompts from None, a string or a list."""
    if negative_prompts is None:
        return [""] * size
    negative_prompts = check_prompts(negative_prompts, "negative_prompts")
    if len(negative_prompts) == 1:
        return negative_prompts * size
    if len(negative_prompts) != size:
        raise ValueError(
            f"Got {len(negative_prompts)} negative prompts for {size} prompts; "
            "pass one negative prompt, or one per prompt."
        )
    return negative_prompts


def check_num_steps(num_steps):
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"`num_steps` must be a positive int, got {num_steps!r}.")
    return int(num_steps)


def check_guidance_scale(guidance_scale):
    if isinstance(guidance_scale, bool) or not isinstance(
        guidance_scale, (int, float, np.number)
    ):
        raise ValueError(f"`guidance_scale` must be a number, got {guidance_scale!r}.")
    return float(guidance_scale)


def check_seed(seed):
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
    ):
        raise ValueError(f"`seed` must be an int or None, got {seed!r}.")
    return None if seed is None else int(seed)


def check_strength(strength):
    if isinstance(strength, bool) or not isinstance(strength, (int, float, np.number)):
        raise ValueError(f"`strength` must be a number in [0, 1], got {strength!r}.")
    if not 0.0 <= strength <= 1.0:
        raise ValueError(
            f"`strength` must be in [0, 1], got {strength}. 0 keeps the image, "
            "1 replaces it entirely."
        )
    return float(strength)


def _check_images(images, image_size):
    """uint8 (H, W, 3) or (N, H, W, 3) of the model's size -> (N, H, W, 3)."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(
            f"`images` must be uint8 in [0, 255], got dtype {images.dtype}. "
            "Convert float images in [-1, 1] with "
            "`keras_diffusion.images.to_uint8`."
        )
    if images.ndim == 3:
        images = images[None]
    height, width = image_size
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
        raise ValueError(
            f"`images` must have shape (H, W, 3) or (N, H, W, 3) with N >= 1, "
            f"got {images.shape}."
        )
    if images.shape[1:3] != (height, width):
        raise ValueError(
            f"`images` are {images.shape[1]}x{images.shape[2]} but the model "
            f"makes {height}x{width} images. Resize or crop them to "
            f"{height}x{width}, or load the model with "
            f"image_size=({images.shape[1]}, {images.shape[2]})."
        )
    return images


def _check_masks(masks, image_size):
    """(H, W), (N, H, W) or with a trailing 1 -> bool (N, H, W)."""
    masks = np.asarray(masks)
    if masks.ndim in (3, 4) and masks.shape[-1] == 1:
        masks = masks[..., 0]
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3 or len(masks) == 0:
        raise ValueError(
            f"`masks` must have shape (H, W) or (N, H, W), got {np.shape(masks)}."
        )
    if masks.dtype != bool:
        if not np.issubdtype(masks.dtype, np.number):
            raise ValueError(f"`masks` must be bool or numeric, got dtype {masks.dtype}.")
        # KerasHub's own rule: a pixel is repainted where the mask is > 0.5.
        masks = masks > 0.5
    if masks.shape[1:] != tuple(image_size):
        raise ValueError(
            f"`masks` are {masks.shape[1]}x{masks.shape[2]} but the images "
            f"are {image_size[0]}x{image_size[1]}; they must match."
        )
    return masks


def _batch_size(count_a, name_a, count_b, name_b):
    """The broadcast batch size of two batches, either of which may be 1."""
    if count_a == count_b or count_b == 1:
        return count_a
    if count_a == 1:
        return count_b
    raise ValueError(
        f"Got {count_a} {name_a} and {count_b} {name_b}; pass as many of "
        f"each, or one of either."
    )


def _broadcast(batch, size):
    if len(batch) == size:
        return batch
    if isinstance(batch, list):
        return batch * size
    return np.repeat(batch, size, axis=0)
