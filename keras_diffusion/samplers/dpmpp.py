"""DPM-Solver++(2M) and its SDE variant, in sigma space.

With `lambda = -log(sigma)` (half the log-SNR) and `h = lambda' - lambda`,
both integrate the data-prediction ODE/SDE exactly for a linear-in-lambda
denoiser, using the previous step's denoised image for the second order
("multistep"). The first step and the step to `sigma = 0` are first order,
as in k-diffusion and diffusers (`lower_order_final`,
`final_sigmas_type="zero"`).
"""

from keras import ops


def _step_sizes(sigmas, i):
    """`(h, r)`: this step's `h` and the ratio of the previous step's `h` to it."""
    sigma, sigma_next = sigmas[i], sigmas[i + 1]
    sigma_prev = sigmas[ops.maximum(i - 1, 0)]
    h = ops.log(sigma) - ops.log(ops.maximum(sigma_next, 1e-30))
    h_last = ops.log(sigma_prev) - ops.log(sigma)
    return h, ops.where(i > 0, h_last / h, 1.0)


def dpmpp_2m_step(denoiser, x, state, i, sigmas, noise):
    """One DPM-Solver++(2M) step.

    Reference: Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided
    Sampling of Diffusion Probabilistic Models", Algorithm 2; k-diffusion
    `sample_dpmpp_2m`; diffusers `DPMSolverMultistepScheduler`
    (`algorithm_type="dpmsolver++"`, `solver_type="midpoint"`).
    """
    (old_denoised,) = state
    sigma, sigma_next = sigmas[i], sigmas[i + 1]
    denoised = denoiser(x, sigma)
    h, r = _step_sizes(sigmas, i)
    second_order = (1.0 + 0.5 / r) * denoised - (0.5 / r) * old_denoised
    d = ops.where(i > 0, second_order, denoised)
    x_next = (sigma_next / sigma) * x - ops.expm1(-h) * d
    return ops.where(sigma_next > 0, x_next, denoised), (denoised,)


def dpmpp_2m_sde_step(denoiser, x, state, i, sigmas, noise, eta=1.0, s_noise=1.0):
    """One DPM-Solver++(2M) SDE step (midpoint), with per-step Gaussian noise.

    Reference: Lu et al. 2022 (DPM-Solver++, the SDE solver of sec. 4/app.);
    k-diffusion `sample_dpmpp_2m_sde` (`solver_type="midpoint"`); diffusers
    `DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++")`. The
    noise is one seeded standard normal draw per step, as in diffusers;
    k-diffusion's default Brownian-tree noise has the same distribution.

    Args:
        eta: the SDE's stochasticity (0 gives the DPM++(2M) ODE step).
        s_noise: scale of the added noise.
    """
    (old_denoised,) = state
    sigma, sigma_next = sigmas[i], sigmas[i + 1]
    denoised = denoiser(x, sigma)
    h, r = _step_sizes(sigmas, i)
    eta_h = eta * h
    x_next = (sigma_next / sigma) * ops.exp(-eta_h) * x - ops.expm1(-h - eta_h) * denoised
    correction = -0.5 * ops.expm1(-h - eta_h) / r * (denoised - old_denoised)
    x_next = x_next + ops.where(i > 0, correction, 0.0)
    if eta:
        x_next = x_next + s_noise * sigma_next * ops.sqrt(-ops.expm1(-2.0 * eta_h)) * noise()
    return ops.where(sigma_next > 0, x_next, denoised), (denoised,)
