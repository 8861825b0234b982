"""Noise-level schedules for sampling, in "x0 + sigma * eps" space.

Every schedule is a float32 numpy array of `num_steps + 1` descending noise
levels that ends with exactly one 0: the last step lands on the clean sample.
(diffusers' DPM-Solver once repeated the last sigma instead, which made the
final step a no-op and left noise in the images: huggingface/diffusers#6477.)
"""

import numpy as np

SIGMA_SCHEDULES = ("model", "karras", "exponential")


def _check(num_steps, sigma_min, sigma_max):
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer. Received: num_steps={num_steps!r}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(
            f"Need 0 < sigma_min < sigma_max. Received: sigma_min={sigma_min}, sigma_max={sigma_max}"
        )


def karras_sigmas(num_steps, sigma_min, sigma_max, rho=7.0):
    """The schedule of Karras et al. 2022 (EDM), eq. (5), then 0.

    `sigma_i = (sigma_max^(1/rho) + i / (n - 1) * (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho`.

    Args:
        num_steps: the number of steps `n`.
        sigma_min: the smallest nonzero noise level.
        sigma_max: the first noise level.
        rho: the curvature; 7 is the paper's choice.

    Returns:
        float32 numpy `(num_steps + 1,)`.

    Example:
    >>> [round(float(s), 3) for s in karras_sigmas(3, 0.1, 10.0)]
    [10.0, 1.451, 0.1, 0.0]
    """
    _check(num_steps, sigma_min, sigma_max)
    ramp = np.linspace(0.0, 1.0, num_steps)
    inv_max, inv_min = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
    sigmas = (inv_max + ramp * (inv_min - inv_max)) ** rho
    return np.append(sigmas, 0.0).astype("float32")


def exponential_sigmas(num_steps, sigma_min, sigma_max):
    """Noise levels evenly spaced in log-sigma from `sigma_max` to `sigma_min`, then 0.

    Example:
    >>> [round(float(s), 3) for s in exponential_sigmas(3, 0.1, 10.0)]
    [10.0, 1.0, 0.1, 0.0]
    """
    _check(num_steps, sigma_min, sigma_max)
    sigmas = np.exp(np.linspace(np.log(sigma_max), np.log(sigma_min), num_steps))
    return np.append(sigmas, 0.0).astype("float32")


def get_sigmas(process, num_steps, schedule="model", timestep_spacing=None):
    """A process's sampling noise levels under a named schedule.

    Args:
        process: a `keras_diffusion.processes.Process` (a model's is
            `model.process`); it supplies `sigmas()` and `sigma_range`.
        num_steps: the number of steps.
        schedule: `"model"` (the process's own, `process.sigmas`), `"karras"`
            or `"exponential"` (both over `process.sigma_range`).
        timestep_spacing: passed to `process.sigmas` for `"model"` (None: the
            process's default).

    Returns:
        float32 numpy `(num_steps + 1,)`, descending, ending with 0.

    Example:
    >>> from keras_diffusion.processes import DiscreteVPSchedule
    >>> [round(float(s), 2) for s in get_sigmas(DiscreteVPSchedule(), 3, "exponential")]
    [157.41, 1.26, 0.01, 0.0]
    """
    if schedule == "model":
        return np.asarray(process.sigmas(num_steps, timestep_spacing), "float32")
    if schedule == "karras":
        return karras_sigmas(num_steps, *process.sigma_range)
    if schedule == "exponential":
        return exponential_sigmas(num_steps, *process.sigma_range)
    raise ValueError(f"Unknown sigma_schedule: {schedule!r}. Use one of {SIGMA_SCHEDULES}.")
