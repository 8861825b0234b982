"""Samplers for every model, on the denoiser (sigma) interface of k-diffusion.

A denoiser is `denoiser(x, sigma) -> x0_hat`, with `x` in "x0 + sigma * eps"
space and `sigma` of shape `(batch,)`; `DiffusionModel.denoise` is one. Each
sampler `sample_<name>(denoiser, x, sigmas, *, seed=None, callback=None,
**options)` starts from `x` at noise level `sigmas[0]` and walks the
descending `sigmas` (ending with 0, see `keras_diffusion.samplers.sigmas`).

| name | order | model evaluations for N steps | options |
|---|---|---|---|
| `ddpm` | 1, stochastic | N | |
| `ddim` | 1 | N | `eta`, `clip_denoised` |
| `euler` | 1 | N | `s_churn`, `s_tmin`, `s_tmax`, `s_noise` |
| `euler_ancestral` | 1, stochastic | N | `eta`, `s_noise` |
| `heun` | 2 | 2N - 1 | `s_churn`, `s_tmin`, `s_tmax`, `s_noise` |
| `dpmpp_2m` | 2 (multistep) | N | |
| `dpmpp_2m_sde` | 2, stochastic | N | `eta`, `s_noise` |
| `lms` | up to 4 (multistep) | N | `order` |
| `unipc` | 2 (multistep predictor-corrector) | N | |
| `rk4` | 4 | 4N - 3 | |
| `ode_rk45` | 5 (adaptive) | as the tolerance needs | `rtol`, `atol` |
| `langevin` | annealed Langevin (NCSN), stochastic | `n_steps_each` N + 1 | `step_size`, `n_steps_each` |
| `pc` | predictor-corrector (score SDE), stochastic | (`n_steps` + 1) N | `predictor`, `snr`, `n_steps` |
| `consistency` | multistep consistency sampling, stochastic | N | `sigma_min` |
| `meanflow` | MeanFlow's average-velocity steps (MeanFlow models only) | N | |

`rk4` and `ode_rk45` solve the probability-flow ODE (`samplers.ode`;
`solve_rk45` reports its evaluations); `langevin` and `pc` follow the score
`(D(x, sigma) - x) / sigma**2` (`samplers.langevin`). The counts of
`num_model_evaluations` for these two are at their default options.

With classifier-free guidance each evaluation runs the network on a batch
twice the size (conditional and unconditional halves).

Example:
>>> import numpy as np
>>> def denoiser(x, sigma):  # ideal denoiser for data ~ N(0, 1)
...     return x / (1.0 + keras.ops.reshape(sigma, (-1, 1)) ** 2)
>>> sigmas = karras_sigmas(40, 0.01, 80.0)
>>> x = np.full((1, 1), 80.0, "float32")
>>> out = sample_heun(denoiser, x, sigmas)  # 79 model evaluations
>>> round(float(out[0, 0]), 2)  # exact: 80 / sqrt(1 + 80**2) = 0.99992; Heun's error is 1%
1.01
"""

import secrets
from dataclasses import dataclass
from dataclasses import field

import keras
import numpy as np
from keras import ops

from keras_diffusion.samplers.ancestral import ancestral_step
from keras_diffusion.samplers.dpmpp import dpmpp_2m_sde_step
from keras_diffusion.samplers.dpmpp import dpmpp_2m_step
from keras_diffusion.samplers.euler import euler_step
from keras_diffusion.samplers.euler import heun_step
from keras_diffusion.samplers.inversion import invert
from keras_diffusion.samplers.langevin import PREDICTORS
from keras_diffusion.samplers.langevin import denoiser_score
from keras_diffusion.samplers.langevin import langevin_step
from keras_diffusion.samplers.langevin import ncsn_sigmas
from keras_diffusion.samplers.langevin import pc_step
from keras_diffusion.samplers.lms import lms_step
from keras_diffusion.samplers.loop import run_steps
from keras_diffusion.samplers.loop import step_noise
from keras_diffusion.samplers.ode import probability_flow
from keras_diffusion.samplers.ode import rk4_step
from keras_diffusion.samplers.ode import rk45_step
from keras_diffusion.samplers.one_step import consistency_step
from keras_diffusion.samplers.one_step import mean_flow_step
from keras_diffusion.samplers.ode import solve_rk45
from keras_diffusion.samplers.sigmas import SIGMA_SCHEDULES
from keras_diffusion.samplers.sigmas import exponential_sigmas
from keras_diffusion.samplers.sigmas import get_sigmas
from keras_diffusion.samplers.sigmas import karras_sigmas
from keras_diffusion.samplers.unipc import unipc_step

_CHURN = {"s_churn": 0.0, "s_tmin": 0.0, "s_tmax": float("inf"), "s_noise": 1.0}


@dataclass(frozen=True)
class Sampler:
    """A registered sampler: its step function, options and cost.

    Attributes:
        name: the name `generate(sampler=...)` accepts.
        step: the step function (see `keras_diffusion.samplers.loop`).
        options: the options it accepts, with their defaults.
        fixed: options it always runs with (not user-settable).
        evaluations_per_step: model evaluations per step.
        last_step_evaluations: model evaluations of the step to `sigma = 0`.
        state_size: number of tensors shaped like `x` carried between steps,
            a function of the resolved options.
        default_num_steps: the steps `generate()` takes by default, for a
            sampler of few-step models; None leaves it to the process.
    """

    name: str
    step: object
    options: dict = field(default_factory=dict)
    fixed: dict = field(default_factory=dict)
    evaluations_per_step: int = 1
    last_step_evaluations: int = 1
    state_size: object = lambda options: 0
    default_num_steps: object = None

    def resolve(self, options):
        """The full options for a call: defaults updated by `options`, checked."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ValueError(
                f"Sampler {self.name!r} has no option(s) {unknown}. Its options: {sorted(self.options) or 'none'}."
            )
        return {**self.options, **options, **self.fixed}

    def initial_state(self, x, options):
        """Zeros for the tensors the step function carries between steps."""
        return tuple(ops.zeros_like(x) for _ in range(max(self.state_size(options), 0)))


SAMPLERS = {
    s.name: s
    for s in (
        Sampler("ddpm", ancestral_step, fixed={"eta": 1.0}),
        Sampler("ddim", ancestral_step, options={"eta": 0.0, "clip_denoised": False}),
        Sampler("euler", euler_step, options=dict(_CHURN)),
        Sampler("euler_ancestral", ancestral_step, options={"eta": 1.0, "s_noise": 1.0}),
        Sampler("heun", heun_step, options=dict(_CHURN), evaluations_per_step=2),
        Sampler("dpmpp_2m", dpmpp_2m_step, state_size=lambda options: 1),
        Sampler("dpmpp_2m_sde", dpmpp_2m_sde_step, options={"eta": 1.0, "s_noise": 1.0}, state_size=lambda o: 1),
        Sampler("lms", lms_step, options={"order": 4}, state_size=lambda options: options["order"] - 1),
        Sampler("unipc", unipc_step, state_size=lambda options: 3),
        Sampler("rk4", rk4_step, evaluations_per_step=4),
        Sampler("ode_rk45", rk45_step, options={"rtol": 1e-5, "atol": 1e-5}),
        Sampler("langevin", langevin_step, options={"step_size": None, "n_steps_each": 100},
                evaluations_per_step=100, last_step_evaluations=101),
        Sampler("pc", pc_step, options={"predictor": "reverse_diffusion", "snr": 0.16, "n_steps": 1},
                evaluations_per_step=2, last_step_evaluations=2),
        Sampler("consistency", consistency_step, options={"sigma_min": 0.002}, default_num_steps=1),
        Sampler("meanflow", mean_flow_step, default_num_steps=1),
    )
}


def get_sampler(name):
    """Returns the `Sampler` registered as `name`, or a clear error.

    Example:
    >>> get_sampler("heun").evaluations_per_step
    2
    """
    if name not in SAMPLERS:
        raise ValueError(f"Unknown sampler: {name!r}. Use one of {sorted(SAMPLERS)}.")
    return SAMPLERS[name]


def default_num_steps(process, name):
    """The steps sampler `name` takes when `num_steps` is left out: its own default, else the process's.

    Example:
    >>> from keras_diffusion.processes import EDMProcess
    >>> default_num_steps(EDMProcess(), "heun"), default_num_steps(EDMProcess(), "consistency")
    (18, 1)
    """
    steps = get_sampler(name).default_num_steps
    return process.default_num_steps(name) if steps is None else steps


def num_model_evaluations(name, num_steps):
    """How many times sampler `name` calls the denoiser for `num_steps` steps ending at 0.

    Example:
    >>> num_model_evaluations("heun", 10), num_model_evaluations("dpmpp_2m", 10)
    (19, 10)
    """
    sampler = get_sampler(name)
    return sampler.evaluations_per_step * (num_steps - 1) + sampler.last_step_evaluations


def check_sigmas(sigmas):
    """Checks a noise-level schedule; returns it as float32 numpy.

    It must be 1-D, at least 2 long, finite, non-negative, and positive
    except possibly its last entry (samplers divide by the current level).
    """
    sigmas = np.asarray(sigmas, "float32")
    if sigmas.ndim != 1 or len(sigmas) < 2 or not np.all(np.isfinite(sigmas)):
        raise ValueError(f"sigmas must be a finite 1-D array of at least 2 noise levels. Received: {sigmas!r}")
    if np.any(sigmas[:-1] <= 0) or sigmas[-1] < 0:
        raise ValueError(
            "sigmas must be positive except the last, which may be 0 (the clean sample). "
            f"Received: {sigmas.tolist()}"
        )
    return sigmas


def sample(name, denoiser, x, sigmas, *, seed=None, callback=None, **options):
    """Runs sampler `name` from `x` at `sigmas[0]` through all of `sigmas`.

    Args:
        name: a sampler name (`SAMPLERS`).
        denoiser: `denoiser(x, sigma) -> x0_hat`, `sigma` of shape `(batch,)`.
        x: float samples at noise level `sigmas[0]` (sigma space).
        sigmas: noise levels, e.g. `karras_sigmas(...)` or `model.process.sigmas(...)`.
        seed: int seed of the per-step noise of stochastic samplers; the
            same seed gives the same result on one backend.
        callback: called after every step as `callback({"i", "x", "sigma",
            "sigma_next"})`; with a callback the steps run one by one
            instead of in one `fori_loop`.
        **options: the sampler's options (see the table in this module).

    Returns:
        The samples at `sigmas[-1]`.
    """
    sampler = get_sampler(name)
    options = sampler.resolve(options)
    sigmas_np = check_sigmas(sigmas)
    sigmas = ops.convert_to_tensor(sigmas_np)
    x = ops.convert_to_tensor(x, "float32")
    if seed is None:
        seed = secrets.randbelow(2**31 - 1)
    seed = keras.random.SeedGenerator(seed).next()
    state = sampler.initial_state(x, options)
    num_steps = len(sigmas_np) - 1
    if callback is None:
        x, _ = run_steps(sampler.step, denoiser, x, state, sigmas, seed, 0, num_steps, **options)
        return x
    for i in range(num_steps):
        x, state = run_steps(sampler.step, denoiser, x, state, sigmas, seed, i, i + 1, **options)
        callback({"i": i, "x": x, "sigma": float(sigmas_np[i]), "sigma_next": float(sigmas_np[i + 1])})
    return x


def _sample_function(name):
    sampler = SAMPLERS[name]

    def sample_fn(denoiser, x, sigmas, *, seed=None, callback=None, **options):
        return sample(name, denoiser, x, sigmas, seed=seed, callback=callback, **options)

    sample_fn.__name__ = sample_fn.__qualname__ = f"sample_{name}"
    option_text = ", ".join(f"{k}={v!r}" for k, v in sampler.options.items()) or "none"
    sample_fn.__doc__ = (
        f"Samples with {name!r}: `sample({name!r}, denoiser, x, sigmas, ...)`.\n\n"
        f"Options (defaults): {option_text}. The step: `{sampler.step.__module__}.{sampler.step.__name__}`.\n"
    )
    return sample_fn


sample_ddpm = _sample_function("ddpm")
sample_ddim = _sample_function("ddim")
sample_euler = _sample_function("euler")
sample_euler_ancestral = _sample_function("euler_ancestral")
sample_heun = _sample_function("heun")
sample_dpmpp_2m = _sample_function("dpmpp_2m")
sample_dpmpp_2m_sde = _sample_function("dpmpp_2m_sde")
sample_lms = _sample_function("lms")
sample_unipc = _sample_function("unipc")
sample_rk4 = _sample_function("rk4")
sample_ode_rk45 = _sample_function("ode_rk45")
sample_langevin = _sample_function("langevin")
sample_pc = _sample_function("pc")
sample_consistency = _sample_function("consistency")
sample_meanflow = _sample_function("meanflow")

__all__ = [
    "PREDICTORS",
    "SAMPLERS",
    "SIGMA_SCHEDULES",
    "Sampler",
    "check_sigmas",
    "default_num_steps",
    "denoiser_score",
    "exponential_sigmas",
    "get_sampler",
    "get_sigmas",
    "invert",
    "karras_sigmas",
    "ncsn_sigmas",
    "num_model_evaluations",
    "probability_flow",
    "run_steps",
    "sample",
    "sample_consistency",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_heun",
    "sample_langevin",
    "sample_lms",
    "sample_meanflow",
    "sample_ode_rk45",
    "sample_pc",
    "sample_rk4",
    "sample_unipc",
    "solve_rk45",
    "step_noise",
]
