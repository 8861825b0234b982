"""Annealed Langevin dynamics (NCSN) and the predictor-corrector sampler of the score SDE paper.

Both work on the score of a denoiser in sigma space,
`score(x, sigma) = (D(x, sigma) - x) / sigma**2` (Tweedie's formula), so they
run on every model here. In sigma space every process is the variance
exploding SDE `dx = sqrt(d sigma**2 / dt) dw`, so score_sde's VE updates
apply as written (its corrector's `alpha` is 1).
"""

from keras import ops

from keras_diffusion.samplers.sigmas import exponential_sigmas

PREDICTORS = ("reverse_diffusion", "euler_maruyama")


def denoiser_score(denoiser, x, sigma):
    """`(denoiser(x, sigma) - x) / sigma**2`: the score of the noisy data at a scalar noise level `sigma`."""
    return (denoiser(x, sigma) - x) / ops.square(sigma)


def _smallest_level(sigmas):
    """The last nonzero noise level (`sigma_L` of NCSN)."""
    return ops.where(sigmas[-1] > 0, sigmas[-1], sigmas[-2])


def _per_example_norm(v):
    return ops.sqrt(ops.sum(ops.reshape(ops.square(v), (ops.shape(v)[0], -1)), axis=1))


# NCSN's step size and smallest noise level (CIFAR-10, MNIST): its steps are alpha_i = 0.2 sigma_i^2.
NCSN_STEP_SIZE = 2e-5
NCSN_SIGMA_MIN = 0.01


def langevin_step(denoiser, x, state, i, sigmas, noise, step_size=None, n_steps_each=100):
    """NCSN's Algorithm 1 at level `sigmas[i]`: `n_steps_each` Langevin steps, then the next level.

    `alpha_i = step_size * sigma_i**2 / sigma_L**2` and
    `x <- x + alpha_i / 2 * score(x, sigma_i) + sqrt(alpha_i) z`, with
    `sigma_L` the smallest nonzero level. `step_size=None` (the default) is
    NCSN's `2e-5` carried over from its `sigma_L = 0.01` to the levels given:
    `alpha_i = 0.2 sigma_i**2` on any levels. A step then moves at most a
    tenth of the way to the mode of a Gaussian of variance `>= sigma_i**2`,
    so the chain is stable on every model's levels; NCSN's absolute `2e-5`
    diverges where `sigma_L**2 < step_size / 4` (EDM's `sigma_min = 0.002`).
    The step to `sigma = 0` ends with the denoised mean `D(x, sigma_L)`
    (NCSNv2's final denoising). NCSN's levels are geometric:
    `sigma_schedule="exponential"` (a `VESDE`'s own levels are geometric already).

    Reference: Song & Ermon 2019, "Generative Modeling by Estimating
    Gradients of the Data Distribution", Algorithm 1 (`epsilon = 2e-5`,
    `T = 100`, `sigma_L = 0.01`); Song & Ermon 2020 (NCSNv2), the final denoising step.
    """
    sigma = sigmas[i]
    if step_size is None:
        alpha = NCSN_STEP_SIZE / NCSN_SIGMA_MIN**2 * ops.square(sigma)
    else:
        alpha = step_size * ops.square(sigma / _smallest_level(sigmas))

    def body(k, x):
        return x + 0.5 * alpha * denoiser_score(denoiser, x, sigma) + ops.sqrt(alpha) * noise(k)

    x = ops.fori_loop(0, n_steps_each, body, x)
    return ops.cond(sigmas[i + 1] > 0, lambda: x, lambda: denoiser(x, sigma)), state


def pc_step(denoiser, x, state, i, sigmas, noise, predictor="reverse_diffusion", snr=0.16, n_steps=1):
    """One predictor-corrector step `sigmas[i] -> sigmas[i + 1]`: Langevin corrector, then a predictor.

    The corrector (score_sde's `LangevinCorrector`) takes `n_steps` steps at
    `sigma_i` with `eps = 2 (snr |z| / |score|)**2` (norms per example,
    averaged over the batch): `x <- x + eps score + sqrt(2 eps) z`. The
    predictor is `"reverse_diffusion"` (`x + (sigma_i^2 - sigma_{i+1}^2) score
    + sqrt(sigma_i^2 - sigma_{i+1}^2) z`, score_sde's
    `ReverseDiffusionPredictor` on the VE discretization) or
    `"euler_maruyama"` (the reverse SDE in `sigma`: `g^2 dt = 2 sigma dsigma`).
    The step to `sigma = 0` returns the denoised mean `D(x, sigma_i)`
    (score_sde's `noise_removal`). `n_steps = 0` is the predictor alone.

    Reference: Song et al. 2021, "Score-Based Generative Modeling through
    Stochastic Differential Equations", Algorithms 2-3; score_sde
    `sampling.py` (`snr = 0.16`, one corrector step, on CIFAR-10 VE).
    """
    if predictor not in PREDICTORS:
        raise ValueError(f"Unknown predictor: {predictor!r}. Use one of {PREDICTORS}.")
    sigma, sigma_next = sigmas[i], sigmas[i + 1]

    def corrector(k, x):
        grad = denoiser_score(denoiser, x, sigma)
        z = noise(k + 1)
        eps = 2.0 * ops.square(snr * ops.mean(_per_example_norm(z)) / ops.mean(_per_example_norm(grad)))
        return x + eps * grad + ops.sqrt(2.0 * eps) * z

    x = ops.fori_loop(0, n_steps, corrector, x)
    denoised = denoiser(x, sigma)
    score = (denoised - x) / ops.square(sigma)
    if predictor == "reverse_diffusion":
        variance = ops.square(sigma) - ops.square(sigma_next)
    else:  # euler_maruyama
        variance = 2.0 * sigma * (sigma - sigma_next)
    stepped = x + variance * score + ops.sqrt(variance) * noise(0)
    return ops.where(sigma_next > 0, stepped, denoised), state



def ncsn_sigmas(model, num_levels=10):
    """NCSN's geometric noise levels over a model's `process.sigma_range`, then 0 (for `"langevin"`).

    Args:
        model: a `DiffusionModel` (anything with `process.sigma_range`).
        num_levels: `L`, the number of levels (NCSN: 10).

    Returns:
        float32 numpy `(num_levels + 1,)`.

    Example:
    >>> from keras_diffusion.processes import VESDE
    >>> class M: process = VESDE()
    >>> [round(s, 2) for s in ncsn_sigmas(M(), 3).tolist()]
    [50.0, 0.71, 0.01, 0.0]
    """
    process = getattr(model, "process", None)
    try:
        low, high = process.sigma_range
    except (AttributeError, NotImplementedError):
        raise ValueError(
            f"Annealed Langevin anneals over noise levels, and {type(model).__name__} has none: pass a "
            "DiffusionModel (its process gives sigma_range), or call samplers.sample('langevin', denoiser, x, "
            "sigmas) with the levels."
        ) from None
    return exponential_sigmas(num_levels, low, high)


__all__ = [
    "NCSN_SIGMA_MIN", "NCSN_STEP_SIZE", "PREDICTORS", "denoiser_score", "langevin_step", "ncsn_sigmas", "pc_step",
]
