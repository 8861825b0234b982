"""UniPC (order 2, B(h) = e^h - 1): a multistep predictor plus a free corrector, in sigma space.

Each step evaluates the model once at the predicted point, first uses that
evaluation to correct the point (UniC), then predicts the next one from the
corrected point (UniP). The corrector therefore costs no extra model
evaluation. With `lambda = -log(sigma)` and data prediction, the updates are
those of Zhao et al. 2023 ("UniPC: A Unified Predictor-Corrector Framework
for Fast Sampling of Diffusion Models", Algorithms 1-2, variant `bh2`),
divided by `alpha_t` to move from `x_t` to sigma space, where `alpha = 1`.

As in diffusers' `UniPCMultistepScheduler` defaults (`solver_order=2`,
`predict_x0=True`, `solver_type="bh2"`, `lower_order_final=True`), the first
and the last step predict at first order and the first correction is first
order.
"""

from keras import ops


def _log(sigma):
    return ops.log(ops.maximum(sigma, 1e-30))


def _phi_terms(h):
    """`(h_phi_1, b1, b2)` of UniPC's bh2 variant for a step of `h` in lambda."""
    hh = -h
    h_phi_1 = ops.expm1(hh)  # also B(h) for bh2
    h_phi_k1 = h_phi_1 / hh - 1.0
    h_phi_k2 = h_phi_k1 / hh - 0.5
    return h_phi_1, h_phi_k1 / h_phi_1, 2.0 * h_phi_k2 / h_phi_1


def _correct(x, last_x, denoised, m1, m2, i, sigmas):
    """UniC: corrects `x` (at `sigmas[i]`, predicted from `last_x` at `sigmas[i - 1]`)."""
    sigma_s, sigma_t = sigmas[ops.maximum(i - 1, 0)], sigmas[i]
    sigma_r = sigmas[ops.maximum(i - 2, 0)]
    h = _log(sigma_s) - _log(sigma_t)
    h = ops.where(i > 0, h, 1.0)
    h_phi_1, b1, b2 = _phi_terms(h)
    base = (sigma_t / sigma_s) * last_x - h_phi_1 * m1
    first_order = base - h_phi_1 * 0.5 * (denoised - m1)
    # Second order: solve [[1, 1], [r1, 1]] rho = [b1, b2], with the step before last.
    r1 = ops.where(i > 1, (_log(sigma_s) - _log(sigma_r)) / h, 0.5)
    rho0 = (b1 - b2) / (1.0 - r1)
    rho1 = b1 - rho0
    second_order = base - h_phi_1 * (rho0 * (m2 - m1) / r1 + rho1 * (denoised - m1))
    return ops.where(i == 0, x, ops.where(i == 1, first_order, second_order))


def unipc_step(denoiser, x, state, i, sigmas, noise):
    """One UniPC step: evaluate, correct `x` (UniC), predict the next `x` (UniP).

    Reference: Zhao et al. 2023; diffusers `UniPCMultistepScheduler`
    (`solver_order=2`, `solver_type="bh2"`). The state holds the last
    corrected sample and the two previous denoised images.
    """
    last_x, m1, m2 = state
    num_steps = sigmas.shape[0] - 1
    denoised = denoiser(x, sigmas[i])
    x = _correct(x, last_x, denoised, m1, m2, i, sigmas)
    sigma, sigma_next = sigmas[i], sigmas[i + 1]
    h = _log(sigma) - _log(sigma_next)
    h_phi_1 = ops.expm1(-h)
    first_order = (sigma_next / sigma) * x - h_phi_1 * denoised
    r1 = ops.where(i > 0, (_log(sigma) - _log(sigmas[ops.maximum(i - 1, 0)])) / h, 1.0)
    second_order = first_order - h_phi_1 * 0.5 * (m1 - denoised) / r1
    use_second = ops.logical_and(i > 0, i < num_steps - 1)
    x_next = ops.where(use_second, second_order, first_order)
    return ops.where(sigma_next > 0, x_next, denoised), (x, denoised, m1)
