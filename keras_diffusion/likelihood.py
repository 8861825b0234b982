"""Exact likelihoods in bits/dim through the probability-flow ODE, for every model here.

In sigma space (`x = x_t / alpha`) the probability-flow ODE of any process is
`dx/du = f(x, u) = x - D(x, e^u)` with `u = log(sigma)`
(`keras_diffusion.samplers.ode`). The instantaneous change of variables
(Chen et al. 2018) gives
`log p_{sigma_min}(x) = log p_prior(x(u_max)) + int_{u_min}^{u_max} div f du`,
integrated forwards from the data with adaptive RK45 (`solve_rk45`). The
divergence is Hutchinson's estimate `E[e^T (df/dx) e]`, with the
Jacobian-vector product from `keras.ops.jvp` (forward mode: one extra pass
per probe, no gradient tape), and the probes `e` fixed along the path, as in
score_sde's `likelihood.py`. The prior is `N(0, prior_std(sigma_max)^2 I)`,
the process's prior in sigma space. The data is `x_t` at the smallest noise
level, so `log p(x_t) = log p(x_t / alpha) - D log(alpha)`.

Images in [0, 255] become data in [-1, 1] with uniform dequantization
(`(img + u) / 256`, `u ~ U[0, 1)`, scaled to [-1, 1]); bits/dim is
`-log p / (D log 2) + 7`, the 7 being `log2(256 / 2)`: the density of the
[-1, 1] data turned into that of 256 bins per dimension (score_sde's
offset `7 - inverse_scaler(-1)`).
"""

import math

import keras
import numpy as np
from keras import ops

from keras_diffusion.compile import CompiledLoop
from keras_diffusion.networks.attention import explicit_attention
from keras_diffusion.samplers.ode import solve_rk45

PROBES = ("rademacher", "gaussian")


def draw_probes(shape, probe, num_probes, seed):
    """`num_probes` Hutchinson probes shaped like `shape`: Rademacher (+-1) or standard normal.

    Example:
    >>> p = draw_probes((2, 3), "rademacher", 4, keras.random.SeedGenerator(0))
    >>> tuple(p.shape), sorted(set(np.unique(ops.convert_to_numpy(p)).tolist()))
    ((4, 2, 3), [-1.0, 1.0])
    """
    if probe not in PROBES:
        raise ValueError(f"Unknown probe: {probe!r}. Use one of {PROBES}.")
    if isinstance(num_probes, bool) or not isinstance(num_probes, (int, np.integer)) or num_probes < 1:
        raise ValueError(f"num_probes must be a positive integer. Received: {num_probes!r}")
    shape = (int(num_probes),) + tuple(shape)
    if probe == "gaussian":
        return keras.random.normal(shape, seed=seed)
    return ops.where(keras.random.uniform(shape, seed=seed) < 0.5, -1.0, 1.0)


def ode_log_likelihood(denoiser, x, probes, sigma_min, sigma_max, prior_std, rtol=1e-5, atol=1e-5):
    """`log p_{sigma_min}(x)` in nats per example, in sigma space, through the probability-flow ODE.

    Args:
        denoiser: `denoiser(x, sigma) -> x0_hat` (`sigma` a scalar tensor).
        x: float32 data `(batch, ...)` at noise level `sigma_min` (sigma space).
        probes: `(num_probes, batch, ...)` Hutchinson probes (`draw_probes`).
        sigma_min: where the integration starts.
        sigma_max: where it ends, at the prior.
        prior_std: the prior's std at `sigma_max` (`process.prior_std(sigma_max)`).
        rtol: RK45's relative tolerance.
        atol: RK45's absolute tolerance.

    Returns:
        `(log_p, nfe)`: float32 `(batch,)` and the number of ODE function
        evaluations (each runs the model `num_probes` times under `ops.jvp`).

    Example:
    >>> def denoiser(x, sigma):  # data ~ N(0, 1)
    ...     return x / (1.0 + sigma**2)
    >>> x = ops.zeros((1, 2))
    >>> probes = draw_probes((1, 2), "rademacher", 1, keras.random.SeedGenerator(0))
    >>> log_p, nfe = ode_log_likelihood(denoiser, x, probes, 0.01, 100.0, 100.0)
    >>> round(float(log_p[0]), 3)  # log N(0; 0, (1 + 0.01**2) I_2) = -log(2 pi) - log(1.0001)
    -1.838
    """
    x = ops.convert_to_tensor(x, "float32")
    num_probes = probes.shape[0]
    axes = tuple(range(1, len(x.shape)))

    def fun(u, y):
        sigma = ops.exp(u)

        def drift(x):
            return x - denoiser(x, sigma)

        divergence = 0.0
        for k in range(num_probes):
            f, jvp = ops.jvp(drift, (y[0],), (probes[k],))
            divergence = divergence + ops.sum(probes[k] * jvp, axis=axes)
        return f, divergence / num_probes

    (z, delta), nfe = solve_rk45(fun, (x, ops.zeros(ops.shape(x)[:1])), math.log(sigma_min), math.log(sigma_max),
                                 rtol, atol)
    dim = math.prod(x.shape[1:])
    prior = -0.5 * dim * math.log(2 * math.pi * prior_std**2) - ops.sum(ops.square(z), axis=axes) / (2 * prior_std**2)
    return prior + delta, nfe


def check_likelihood_backend():
    """A clear error on a backend without `keras.ops.jvp` (numpy, openvino)."""
    backend = keras.backend.backend()
    if backend not in ("jax", "tensorflow", "torch"):
        raise ValueError(
            f"log_likelihood needs keras.ops.jvp (forward-mode autodiff), which the {backend!r} backend lacks. "
            "Run it with KERAS_BACKEND=jax, tensorflow or torch."
        )


def _check_images(images, image_shape):
    images = np.asarray(images)
    if images.ndim != 1 + len(image_shape) or tuple(images.shape[1:]) != tuple(image_shape):
        raise ValueError(
            f"log_likelihood expects images of shape (N, {', '.join(map(str, image_shape))}); received "
            f"{images.shape}. Resize the data to the model's image_shape."
        )
    if not np.issubdtype(images.dtype, np.number) or not np.all(np.isfinite(images)):
        raise ValueError("log_likelihood expects finite numeric images in [0, 255].")
    if images.min() < 0 or images.max() > 255:
        raise ValueError(
            f"log_likelihood expects images in [0, 255] (uint8 pixel values); received values in "
            f"[{images.min()}, {images.max()}]. Convert images in [-1, 1] with keras_diffusion.images.to_uint8."
        )
    return images.astype("float32")


def log_likelihood(model, images, dequantize=True, probe="rademacher", num_probes=1, rtol=1e-5, atol=1e-5,
                   seed=None, use_ema=True, return_nfe=False, batch_size=None):
    """Bits/dim of each image under a diffusion model, through its probability-flow ODE.

    Works for every `DiffusionModel` (DDPM, DDIM, EDM, flow, score): the
    integration runs over the process's `sigma_range`. Each batch is one
    adaptive solve whose steps the whole batch shares, so a batch's NFE (and,
    within the tolerance, its values) depend a little on what else is in it.

    Args:
        model: a `keras_diffusion.models.DiffusionModel` (unconditional).
        images: `(N, *model.image_shape)` pixel values in [0, 255].
        dequantize: add `U[0, 1)` noise to the pixels before scaling (score_sde's
            default); False scales the pixels as they are (`img / 127.5 - 1`).
        probe: `"rademacher"` or `"gaussian"` Hutchinson probes.
        num_probes: probes per image (the estimator's variance falls as `1 / num_probes`).
        rtol: RK45's relative tolerance (score_sde: 1e-5).
        atol: RK45's absolute tolerance (score_sde: 1e-5).
        seed: seed of the dequantization noise and the probes.
        use_ema: use the optimizer's EMA weights when it keeps them.
        return_nfe: also return the number of ODE function evaluations.
        batch_size: images per solve (None: all at once). A short last batch
            is padded with the first images, so that the solver compiles once.

    Returns:
        float64 numpy `(N,)` bits/dim, and with `return_nfe` the NFE of a
        solve (a float: the mean over the batches).

    Example:
    >>> bpd = log_likelihood(model, test_images[:100], seed=0)  # doctest: +SKIP
    >>> bpd = model.log_likelihood(test_images[:100], batch_size=25, seed=0)  # doctest: +SKIP
    """
    check_likelihood_backend()
    if getattr(model, "num_classes", None) is not None:
        raise ValueError("log_likelihood takes an unconditional model; this one is class-conditional.")
    images = _check_images(images, model.image_shape)
    if batch_size is None:
        batch_size = len(images)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer or None. Received: {batch_size!r}")
    size = min(int(batch_size), len(images))
    generator = keras.random.SeedGenerator(seed)
    bpd, nfes = [], []
    for start in range(0, len(images), size):
        batch = images[start : start + size]
        padded = np.concatenate([batch, images[: size - len(batch)]])
        values, nfe = _bits_per_dim(model, padded, dequantize, probe, num_probes, rtol, atol, generator, use_ema)
        bpd.append(values[: len(batch)])
        nfes.append(nfe)
    bpd = np.concatenate(bpd)
    return (bpd, float(np.mean(nfes))) if return_nfe else bpd


def _bits_per_dim(model, images, dequantize, probe, num_probes, rtol, atol, generator, use_ema):
    """Bits/dim of one batch of checked float32 pixel values, and the solve's NFE."""
    if dequantize:
        x = 2.0 * (images + ops.convert_to_numpy(keras.random.uniform(images.shape, seed=generator))) / 256.0 - 1.0
    else:
        x = images / 127.5 - 1.0
    probes = draw_probes(images.shape, probe, num_probes, generator)
    process = model.process
    sigma_min, sigma_max = process.sigma_range
    alpha_min = float(ops.convert_to_numpy(process.sigma_to_alpha(ops.convert_to_tensor(sigma_min))))
    prior_std = process.prior_std(sigma_max)

    def run(x, probes):
        return ode_log_likelihood(model.denoise, x, probes, sigma_min, sigma_max, prior_std, rtol, atol)

    key = ("log_likelihood", num_probes, rtol, atol, model.jit_compile)
    if key not in model._sampling_loops:
        model._sampling_loops[key] = CompiledLoop(run, model, jit_compile=model.jit_compile)
    # torch's fused attention kernel has no forward-mode autodiff: U-Nets attend with einsum here.
    with model._ema_weights(use_ema), explicit_attention():
        log_p, nfe = model._sampling_loops[key](ops.convert_to_tensor(x / alpha_min, "float32"), probes)
    dim = math.prod(model.image_shape)
    log_p = ops.convert_to_numpy(log_p).astype(np.float64) - dim * math.log(alpha_min)
    return -log_p / (dim * math.log(2.0)) + 7.0, int(ops.convert_to_numpy(nfe))


__all__ = ["PROBES", "check_likelihood_backend", "draw_probes", "log_likelihood", "ode_log_likelihood"]
