"""DDIM inversion: from an image to the noise that deterministic DDIM maps back to it."""

import numpy as np


def invert(model_or_denoiser, images, num_steps=50, *, sigmas=None, **kwargs):
    """Runs deterministic DDIM backwards: images -> noise.

    DDIM with `eta = 0` is Euler's method on the probability-flow ODE, and
    the ODE can be integrated in either direction (Song, Meng & Ermon 2021,
    sec. 4.3). Inversion starts from the images at the smallest nonzero
    noise level of the schedule and steps up to the largest, evaluating the
    denoiser at the lower level of each step (as diffusers'
    `DDIMInverseScheduler` does). Generating from the result with DDIM on
    the same schedule reproduces the images up to the discretization error.

    Reference: Song, Meng & Ermon 2021, "Denoising Diffusion Implicit
    Models", sec. 4.3; Dhariwal & Nichol 2021, app. F.

    Args:
        model_or_denoiser: a `DiffusionModel`, or a denoiser function
            `denoiser(x, sigma) -> x0_hat`.
        images: float images in [-1, 1], `(N, H, W, C)`.
        num_steps: for a model: the steps of the generation to invert.
        sigmas: for a denoiser function: the generation's noise levels
            (descending, ending with 0); a model uses its own.
        **kwargs: for a model, `DiffusionModel.invert`'s options
            (`timestep_spacing`, `sigma_schedule`, `labels`,
            `guidance_scale`, `use_ema`, `verbose`).

    Returns:
        For a model: float32 numpy noise to pass as `generate(...,
        sampler="ddim", initial_noise=noise, clip_sample=False)`. For a
        denoiser: `x` at `sigmas[0]` in sigma space, to pass to
        `sample_ddim(denoiser, x, sigmas)`.

    Example:
    >>> import keras
    >>> import numpy as np
    >>> from keras_diffusion.samplers import karras_sigmas, sample_ddim
    >>> def denoiser(x, sigma):  # ideal denoiser for data ~ N(0, 0.25)
    ...     return x * 0.25 / (0.25 + keras.ops.reshape(sigma, (-1, 1)) ** 2)
    >>> images = np.array([[0.3, -0.6]], "float32")
    >>> sigmas = karras_sigmas(1000, 0.002, 80.0)
    >>> noise = invert(denoiser, images, sigmas=sigmas)
    >>> again = keras.ops.convert_to_numpy(sample_ddim(denoiser, noise, sigmas))
    >>> bool(np.abs(again - images).max() < 0.01)  # first order: the error falls as 1 / num_steps
    True
    """
    from keras_diffusion.samplers import check_sigmas  # (the package imports this module)
    from keras_diffusion.samplers import sample

    if callable(getattr(model_or_denoiser, "invert", None)) and callable(getattr(model_or_denoiser, "denoise", None)):
        if sigmas is not None:
            raise ValueError(
                "A model inverts its own schedule: pass num_steps=... and sigma_schedule=..., not sigmas."
            )
        return model_or_denoiser.invert(images, num_steps, **kwargs)
    if sigmas is None:
        raise ValueError(
            "Inverting a denoiser function needs sigmas=...: the noise levels of the generation "
            "to invert (descending, ending with 0), e.g. karras_sigmas(50, sigma_min, sigma_max)."
        )
    if kwargs:
        raise ValueError(f"Options {sorted(kwargs)} apply to a model, not to a denoiser function.")
    sigmas = check_sigmas(sigmas)
    if sigmas[-1] != 0 or np.any(np.diff(sigmas) >= 0):
        raise ValueError(f"sigmas must descend and end with 0. Received: {sigmas.tolist()}")
    return sample("ddim", model_or_denoiser, np.asarray(images, "float32"), np.flip(sigmas[:-1]).copy())
