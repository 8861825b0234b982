"""Samplers: pure step functions plus one compiled loop that drives them.

Each step function has the signature
`step(x, x0, eps, alpha_prod_t, alpha_prod_prev, noise=None, eta=0.0)` and
reads like its paper's update rule. `SAMPLERS` maps the names that
`generate(sampler=...)` accepts to them.
"""

from keras_diffusion.samplers.ddim import ddim_step
from keras_diffusion.samplers.ddpm import ddpm_step
from keras_diffusion.samplers.loop import make_sampling_loop
from keras_diffusion.samplers.loop import step_noise

SAMPLERS = {"ddpm": ddpm_step, "ddim": ddim_step}


def get_sampler(name):
    """Returns the step function registered as `name`, or a clear error.

    Example:
    >>> get_sampler("ddim").__name__
    'ddim_step'
    """
    if name not in SAMPLERS:
        raise ValueError(f"Unknown sampler: {name!r}. Use one of {sorted(SAMPLERS)}.")
    return SAMPLERS[name]


__all__ = ["SAMPLERS", "ddim_step", "ddpm_step", "get_sampler", "make_sampling_loop", "step_noise"]
