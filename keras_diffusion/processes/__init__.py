"""Noise processes: how clean data `x0` becomes noisy `x_t`, and every question about time.

Every process has the form `x_t = alpha(t) * x0 + sigma(t) * eps` and is one
small class (as in score_sde's `sde_lib.py`) that answers, for the models and
samplers, everything about its time and noise:

- `sample_t(batch_size, seed)`: the training times;
- `alpha_sigma(t)` (`alpha(t)`, `sigma(t)`), `add_noise(x0, noise, t)`;
- `t_to_sigma(t)` and `sigma_to_t(sigma)`: to and from the noise level
  `sigma_hat = sigma(t) / alpha(t)` of "x0 + sigma_hat * eps" space, where
  every sampler works (Karras et al. 2022); `sigma_to_alpha(sigma_hat)`;
- `sigma_range`, `sigmas(num_steps, timestep_spacing)` (the inference noise
  levels, ending with 0) and `default_num_steps(sampler)`;
- `network_time(t)`: what the network is given as time;
- `prior_std(sigma_hat)`: the prior at the first noise level.

| process | paper | `x_t` | network time |
|---|---|---|---|
| `DiscreteVPSchedule` | Ho et al. 2020 (DDPM) | `sqrt(a_t) x0 + sqrt(1 - a_t) eps`, `t` in `[0, T)` | `t` |
| `ContinuousCosineSchedule` | keras.io DDIM | `cos(angle) x0 + sin(angle) eps`, `t` in [0, 1] | `sin(angle)**2` |
| `RectifiedFlow` | Liu et al. 2022; Esser et al. 2024 (SD3) | `(1 - t) x0 + t eps`, noise at `t = 1` | `t` |
| `EDMProcess` | Karras et al. 2022 | `x0 + t eps` (`t` is sigma) | `log(sigma) / 4` |
| `VESDE` | Song et al. 2021 (score SDE) | `x0 + smin (smax / smin)^t eps`, `t` in [1e-5, 1] | `log(sigma)` |
| `VPSDE`, `subVPSDE` | Song et al. 2021 (score SDE) | `exp(m(t)) x0 + std(t) eps`, `t` in [1e-5, 1] | `999 t` |

Example:
>>> import numpy as np
>>> flow = RectifiedFlow()
>>> t = keras.ops.convert_to_tensor([0.25, 0.5])
>>> [round(float(s), 4) for s in keras.ops.convert_to_numpy(flow.t_to_sigma(t))]
[0.3333, 1.0]
>>> np.allclose(keras.ops.convert_to_numpy(flow.sigma_to_t(flow.t_to_sigma(t))), [0.25, 0.5])
True
"""

import keras  # noqa: F401 -- used by the doctest above

from keras_diffusion.processes.base import TIMESTEP_SPACINGS
from keras_diffusion.processes.base import Process
from keras_diffusion.processes.base import append_dims
from keras_diffusion.processes.continuous_vp import ContinuousCosineSchedule
from keras_diffusion.processes.discrete_vp import BETA_SCHEDULES
from keras_diffusion.processes.discrete_vp import DiscreteVPSchedule
from keras_diffusion.processes.edm import EDMProcess
from keras_diffusion.processes.flow import TIME_SAMPLINGS
from keras_diffusion.processes.flow import RectifiedFlow
from keras_diffusion.processes.sde import SDES
from keras_diffusion.processes.sde import VESDE
from keras_diffusion.processes.sde import VPSDE
from keras_diffusion.processes.sde import ScoreSDE
from keras_diffusion.processes.sde import get_sde
from keras_diffusion.processes.sde import subVPSDE

__all__ = [
    "BETA_SCHEDULES",
    "TIMESTEP_SPACINGS",
    "TIME_SAMPLINGS",
    "ContinuousCosineSchedule",
    "DiscreteVPSchedule",
    "EDMProcess",
    "Process",
    "RectifiedFlow",
    "SDES",
    "ScoreSDE",
    "VESDE",
    "VPSDE",
    "append_dims",
    "get_sde",
    "subVPSDE",
]
