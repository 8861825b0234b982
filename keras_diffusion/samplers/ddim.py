"""DDIM sampling (Song, Meng & Ermon 2021, eq. 12)."""

from keras import ops


def ddim_step(x, x0, eps, alpha_prod_t, alpha_prod_prev, noise=None, eta=0.0):
    """One DDIM step `x_t -> x_{t_prev}`.

    `x_prev = sqrt(a_prev) * x0 + sqrt(1 - a_prev - s**2) * eps + s * noise`
    with `s = eta * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))`.
    `eta=0` is the deterministic DDIM; `eta=1` has DDPM's variance. As in
    diffusers (`use_clipped_model_output=False`), `eps` is the model's own
    even when `x0` was clipped.

    Args:
        x: the noisy sample `x_t`.
        x0: the model's estimate of the clean sample.
        eps: the model's estimate of the noise.
        alpha_prod_t: `alphas_cumprod[t]`.
        alpha_prod_prev: `alphas_cumprod[t_prev]`, or 1.0 after the last step.
        noise: standard normal noise shaped like `x`; unused when `eta=0`.
        eta: the stochasticity.

    Returns:
        The sample at `t_prev`.

    Example:
    >>> import numpy as np
    >>> x = np.ones((1, 2, 2, 1), "float32")
    >>> float(ddim_step(x, 2 * x, 0 * x, 0.5, 1.0).mean())
    2.0
    """
    variance = (1.0 - alpha_prod_prev) / (1.0 - alpha_prod_t) * (1.0 - alpha_prod_t / alpha_prod_prev)
    std = eta * ops.sqrt(variance)
    out = ops.sqrt(alpha_prod_prev) * x0 + ops.sqrt(ops.maximum(1.0 - alpha_prod_prev - std**2, 0.0)) * eps
    if noise is not None:
        out = out + std * noise
    return out
