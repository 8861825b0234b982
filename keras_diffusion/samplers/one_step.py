"""Few-step samplers of distilled and one-step models: consistency and MeanFlow steps.

Consistency sampling (Song et al. 2023, Algorithm 1) maps `x` at `sigma` to
the clean sample with the consistency function (the model's `denoise`), then
re-noises it to the next level: `x' = f(x, sigma) + sqrt(sigma'^2 -
sigma_min^2) z`. One step is one model evaluation.

A MeanFlow model (Geng et al. 2025) predicts the average velocity `u(z, r,
t)` of the flow over `[r, t]`, and `z_r = z_t - (t - r) u`. Its denoiser,
asked for an interval (`denoiser(x, sigma, sigma_next)`), returns
`x0_hat = z_t - t u(z_t, r, t)`; the deterministic DDIM (Euler) step from
`sigma` to `sigma_next` with that `x0_hat` lands exactly on `z_r`. So
`mean_flow_step` is the Euler step on the interval's `x0_hat`.
"""

from keras import ops


def consistency_step(denoiser, x, state, i, sigmas, noise, sigma_min=0.002):
    """One step of multistep consistency sampling, `sigmas[i] -> sigmas[i + 1]`.

    Reference: Song, Dhariwal, Chen & Sutskever 2023, "Consistency Models", Algorithm 1.

    Args:
        sigma_min: the consistency function's boundary level; the noise added
            to reach `sigma'` is `sqrt(sigma'^2 - sigma_min^2)`.
    """
    sigma_next = sigmas[i + 1]
    denoised = denoiser(x, sigmas[i])
    scale = ops.sqrt(ops.maximum(ops.square(sigma_next) - sigma_min**2, 0.0))
    return denoised + scale * noise(), state


def mean_flow_step(denoiser, x, state, i, sigmas, noise):
    """One MeanFlow step `z_r = z_t - (t - r) u(z_t, r, t)`, in sampler space.

    Reference: Geng, Deng, Bai, Kolter & He 2025, "Mean Flows for One-step
    Generative Modeling", Algorithm 2 (1-NFE) and its multi-step form.
    """
    sigma, sigma_next = sigmas[i], sigmas[i + 1]
    denoised = denoiser(x, sigma, sigma_next)
    return denoised + sigma_next * (x - denoised) / sigma, state
