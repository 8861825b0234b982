"""DDIM, DDPM and Euler ancestral: one step in sigma space.

In "x0 + sigma * eps" space the DDIM update of Song, Meng & Ermon 2021
(eq. 12) with stochasticity `eta` is
`x' = x0 + sigma_down * eps + sigma_up * z`, where
`sigma_up = min(sigma', eta * sigma' * sqrt(sigma^2 - sigma'^2) / sigma)` and
`sigma_down = sqrt(sigma'^2 - sigma_up^2)`: dividing eq. 12 by
`sqrt(alphas_cumprod[t'])` turns its `sigma_t(eta)` into exactly this
`sigma_up`. That is k-diffusion's ancestral Euler step. With `eta = 1` the
step samples the DDPM posterior `q(x_t' | x_t, x0)` for any pair of times,
which is Ho et al.'s Algorithm 2 on consecutive timesteps (and diffusers'
`DDPMScheduler` on skipped ones).
"""

from keras import ops


def ancestral_step(denoiser, x, state, i, sigmas, noise, eta=1.0, s_noise=1.0, clip_denoised=False):
    """One step `sigmas[i] -> sigmas[i + 1]` of DDIM with stochasticity `eta`.

    Reference: Song, Meng & Ermon 2021, "Denoising Diffusion Implicit
    Models", eq. 12; Ho, Jain & Abbeel 2020, Algorithm 2 (`eta = 1`);
    Karras et al. 2022 / k-diffusion `sample_euler_ancestral`.

    Args:
        eta: 0 is deterministic DDIM, 1 is DDPM / Euler ancestral.
        s_noise: scale of the added noise.
        clip_denoised: clip `x0_hat` to [-1, 1] but keep the model's own
            noise estimate for the direction, as diffusers' DDIM does
            (`use_clipped_model_output=False`). A denoiser that clips
            itself instead makes the direction follow the clipped `x0_hat`,
            which is what diffusers' DDPM does.
    """
    sigma, sigma_next = sigmas[i], sigmas[i + 1]
    denoised = denoiser(x, sigma)
    eps = (x - denoised) / sigma
    if clip_denoised:
        denoised = ops.clip(denoised, -1.0, 1.0)
    if eta == 0:
        return denoised + sigma_next * eps, state
    sigma_up = ops.minimum(sigma_next, eta * sigma_next * ops.sqrt(ops.square(sigma) - ops.square(sigma_next)) / sigma)
    # Clamped: when sigma_up == sigma_next, XLA's fused multiply-add can leave a tiny negative
    # difference, whose square root is NaN (seen on JAX and TF with sigma = 2e4, cosine betas).
    sigma_down = ops.sqrt(ops.maximum(ops.square(sigma_next) - ops.square(sigma_up), 0.0))
    return denoised + sigma_down * eps + s_noise * sigma_up * noise(), state
