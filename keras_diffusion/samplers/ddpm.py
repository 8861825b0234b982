"""DDPM ancestral sampling (Ho et al. 2020, Algorithm 2)."""

from keras import ops


def ddpm_step(x, x0, eps, alpha_prod_t, alpha_prod_prev, noise=None, eta=None):
    """One ancestral step `x_t -> x_{t_prev}` with "fixed_small" variance.

    The posterior mean is Ho et al. eq. (7); its variance is
    `beta_tilde = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)`, which
    reduces to the paper's when `t_prev = t - 1` and generalises to skipped
    steps as diffusers' `DDPMScheduler.step` does.

    Args:
        x: the noisy sample `x_t`.
        x0: the model's estimate of the clean sample (already clipped, if
            clipping is on).
        eps: unused; ancestral sampling needs only `x0`. Kept so that every
            step function has the same signature.
        alpha_prod_t: `alphas_cumprod[t]`, a scalar tensor.
        alpha_prod_prev: `alphas_cumprod[t_prev]`, or 1.0 after the last step.
        noise: standard normal noise shaped like `x`.
        eta: unused (DDPM is always fully stochastic).

    Returns:
        The sample at `t_prev`.

    Example:
    >>> import numpy as np
    >>> x = np.ones((1, 2, 2, 1), "float32")
    >>> out = ddpm_step(x, 0 * x, None, 0.5, 1.0, noise=0 * x)
    >>> float(out.sum())
    0.0
    """
    beta_prod_t = 1.0 - alpha_prod_t
    beta_prod_prev = 1.0 - alpha_prod_prev
    current_alpha = alpha_prod_t / alpha_prod_prev
    current_beta = 1.0 - current_alpha
    mean = (ops.sqrt(alpha_prod_prev) * current_beta / beta_prod_t) * x0 + (
        ops.sqrt(current_alpha) * beta_prod_prev / beta_prod_t
    ) * x
    variance = ops.maximum(beta_prod_prev / beta_prod_t * current_beta, 0.0)
    return mean + ops.sqrt(variance) * noise
