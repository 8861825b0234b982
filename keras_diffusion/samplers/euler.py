"""Euler and Heun on the probability-flow ODE `dx/dsigma = (x - D(x, sigma)) / sigma`.

Both follow Karras et al. 2022 ("Elucidating the Design Space of
Diffusion-Based Generative Models", Algorithm 2), including its optional
"churn": before a step, noise raises the level from `sigma` to
`sigma_hat = sigma * (1 + gamma)`, `gamma = min(s_churn / N, sqrt(2) - 1)`
for `s_tmin <= sigma <= s_tmax`. With `s_churn = 0` (the default) both are
deterministic.
"""

import math

from keras import ops


def _churn(x, sigmas, i, noise, s_churn, s_tmin, s_tmax, s_noise):
    """EDM Algorithm 2, lines 4-6: returns `(x_hat, sigma_hat)`."""
    sigma = sigmas[i]
    if s_churn == 0:
        return x, sigma
    num_steps = sigmas.shape[0] - 1
    in_range = ops.logical_and(sigma >= s_tmin, sigma <= s_tmax)
    gamma = ops.where(in_range, min(s_churn / num_steps, math.sqrt(2.0) - 1.0), 0.0)
    sigma_hat = sigma * (1.0 + gamma)
    # Clamped: with gamma = 0 (sigma outside [s_tmin, s_tmax]) XLA's fused multiply-add can leave
    # a tiny negative difference, whose square root is NaN (seen on JAX).
    x = x + s_noise * ops.sqrt(ops.maximum(ops.square(sigma_hat) - ops.square(sigma), 0.0)) * noise()
    return x, sigma_hat


def euler_step(denoiser, x, state, i, sigmas, noise, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    """One Euler step of the probability-flow ODE (with optional churn).

    Reference: Karras et al. 2022, Algorithm 2 without the correction
    (lines 3-8); k-diffusion `sample_euler`; diffusers
    `EulerDiscreteScheduler`. Without churn this equals deterministic DDIM
    on the same noise levels.
    """
    x, sigma_hat = _churn(x, sigmas, i, noise, s_churn, s_tmin, s_tmax, s_noise)
    d = (x - denoiser(x, sigma_hat)) / sigma_hat
    return x + d * (sigmas[i + 1] - sigma_hat), state


def heun_step(denoiser, x, state, i, sigmas, noise, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    """One step of Heun's second-order method (with optional churn).

    Reference: Karras et al. 2022, Algorithm 2 (lines 3-11); k-diffusion
    `sample_heun`; diffusers `HeunDiscreteScheduler`. The step to
    `sigma = 0` is a plain Euler step (line 9's condition), so `N` steps
    cost `2N - 1` model evaluations.
    """
    x, sigma_hat = _churn(x, sigmas, i, noise, s_churn, s_tmin, s_tmax, s_noise)
    sigma_next = sigmas[i + 1]
    d = (x - denoiser(x, sigma_hat)) / sigma_hat
    dt = sigma_next - sigma_hat
    x_euler = x + d * dt

    def corrected():
        d_next = (x_euler - denoiser(x_euler, sigma_next)) / sigma_next
        return x + 0.5 * (d + d_next) * dt

    return ops.cond(sigma_next > 0, corrected, lambda: x_euler), state
