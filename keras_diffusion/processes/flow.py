"""`RectifiedFlow`: the straight path `x_t = (1 - t) x0 + t eps` of flow matching and SD3."""

import math

import keras
import numpy as np
from keras import ops

from keras_diffusion.processes.base import Process
from keras_diffusion.processes.base import check_num_steps

TIME_SAMPLINGS = ("logit_normal", "uniform", "mode")


@keras.saving.register_keras_serializable(package="keras_diffusion")
class RectifiedFlow(Process):
    """Rectified flow: `x_t = (1 - t) x0 + t eps`, with the noise at `t = 1` (as SD3 and KerasHub).

    The velocity of this path is `eps - x0`; in sampler space the noise
    level is `sigma_hat = t / (1 - t)`, so `t = sigma_hat / (1 + sigma_hat)`
    and `x0_hat = x_t - t * v` (`keras_diffusion.parameterizations`). Euler
    steps in sampler space are exactly Euler steps of the flow ODE in `t`.

    Training times are `shift(u)` with `u` from `time_sampling`:
    `"logit_normal"` (`u = sigmoid(logit_mean + logit_std * n)`, SD3's
    default), `"uniform"` (Liu et al. 2022) or `"mode"` (SD3's mode
    sampling with `mode_scale`). SD3's time shift
    `shift(t) = shift * t / (1 + (shift - 1) * t)` moves the times towards the
    noise for `shift > 1` (KerasHub's SD3 uses 3.0); it also spaces the
    inference times, which are uniform in `t` from `t_max` to 0 before it.

    Args:
        shift: SD3's time shift, positive; 1.0 leaves times unchanged.
        time_sampling: `"logit_normal"`, `"uniform"` or `"mode"`.
        logit_mean: mean of the logit-normal.
        logit_std: standard deviation of the logit-normal.
        mode_scale: the scale of `"mode"` sampling (SD3: 1.29).
        t_min: the smallest time samplers visit before 0 (its noise level is
            `sigma_range[0]`).
        t_max: the time sampling starts from (before the shift); below 1,
            because `sigma_hat = t / (1 - t)` is infinite at `t = 1`.
        time_scale: the network is given `time_scale * t`. 1.0 gives it `t`
            in [0, 1] (for MLPs that read the time directly); 1000.0 gives
            the range a sinusoidal timestep embedding built for DDPM's
            integer timesteps resolves (`keras_diffusion.networks.build_unet`;
            KerasHub's and diffusers' SD3 MMDiT see `1000 * t` too).

    Reference: Liu, Gong & Liu 2022, "Flow Straight and Fast"; Lipman et al.
    2023, "Flow Matching for Generative Modeling"; Esser et al. 2024, "Scaling
    Rectified Flow Transformers" (SD3: logit-normal times, time shift).

    Example:
    >>> flow = RectifiedFlow(shift=3.0)
    >>> [round(float(t), 3) for t in flow.sigmas(2) / (1 + flow.sigmas(2))]
    [1.0, 0.75, 0.0]
    """

    kind = "flow"
    default_timestep_spacing = "linspace"

    def __init__(self, shift=1.0, time_sampling="logit_normal", logit_mean=0.0, logit_std=1.0, mode_scale=1.29,
                 t_min=1e-3, t_max=0.9999, time_scale=1.0):
        if not shift > 0:
            raise ValueError(
                f"shift must be positive (1.0 leaves the times unchanged; SD3 uses 3.0). Received: shift={shift}"
            )
        if time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"Unknown time_sampling: {time_sampling!r}. Use one of {TIME_SAMPLINGS}.")
        if not logit_std > 0:
            raise ValueError(f"logit_std must be positive. Received: logit_std={logit_std}")
        if not 0.0 < t_min < t_max < 1.0:
            raise ValueError(
                f"Need 0 < t_min < t_max < 1 (sigma_hat = t / (1 - t) is infinite at t = 1). "
                f"Received: t_min={t_min}, t_max={t_max}"
            )
        if not time_scale > 0:
            raise ValueError(
                f"time_scale must be positive (1.0 for t in [0, 1], 1000.0 for a DDPM-style timestep "
                f"embedding). Received: time_scale={time_scale}"
            )
        self.shift = float(shift)
        self.time_sampling = time_sampling
        self.logit_mean = float(logit_mean)
        self.logit_std = float(logit_std)
        self.mode_scale = float(mode_scale)
        self.t_min = float(t_min)
        self.t_max = float(t_max)
        self.time_scale = float(time_scale)

    def shift_time(self, t):
        """SD3's time shift `shift * t / (1 + (shift - 1) * t)` (tensor or numpy)."""
        return self.shift * t / (1.0 + (self.shift - 1.0) * t)

    def sample_t(self, batch_size, seed):
        """Training times `shift(u)`, `u` drawn by `time_sampling`."""
        if self.time_sampling == "uniform":
            u = keras.random.uniform((batch_size,), seed=seed)
        elif self.time_sampling == "logit_normal":
            u = ops.sigmoid(keras.random.normal((batch_size,), self.logit_mean, self.logit_std, seed=seed))
        else:  # SD3 eq. 20: a density with its mode shifted towards the middle by mode_scale
            v = keras.random.uniform((batch_size,), seed=seed)
            u = 1.0 - v - self.mode_scale * (ops.square(ops.cos(math.pi / 2 * v)) - 1.0 + v)
        return self.shift_time(u)

    def alpha_sigma(self, t):
        t = ops.cast(t, "float32")
        return 1.0 - t, t

    def t_to_sigma(self, t):
        t = ops.cast(t, "float32")
        return t / (1.0 - t)

    def sigma_to_t(self, sigma):
        sigma = ops.cast(sigma, "float32")
        return sigma / (1.0 + sigma)

    def sigma_to_alpha(self, sigma):
        return 1.0 / (1.0 + ops.cast(sigma, "float32"))

    def network_time(self, t):
        """`time_scale * t`: the network's time input."""
        return ops.cast(t, "float32") * self.time_scale

    def prior_std(self, sigma):
        """`1 + sigma`: `x_t = eps` at the first level, seen in sampler space (`x_t / (1 - t)`)."""
        return 1.0 + float(sigma)

    def _sigma_of(self, t):
        t = self.shift_time(np.asarray(t, np.float64))
        return t / (1.0 - t)

    @property
    def sigma_range(self):
        return float(self._sigma_of(self.t_min)), float(self._sigma_of(self.t_max))

    def sigmas(self, num_steps, timestep_spacing=None):
        """Noise levels at `shift(t)` for `t` uniform from `t_max` to 0 (`num_steps + 1` points).

        Args:
            num_steps: denoising steps.
            timestep_spacing: `"linspace"` (the only spacing of a flow).

        Returns:
            float32 numpy `(num_steps + 1,)`, descending, ending with 0.
        """
        check_num_steps(num_steps)
        if (timestep_spacing or "linspace") != "linspace":
            raise ValueError(
                f"RectifiedFlow spaces its times uniformly ('linspace'); received timestep_spacing="
                f"{timestep_spacing!r}. Drop it, or use sigma_schedule='karras'|'exponential'."
            )
        return self._sigma_of(np.linspace(self.t_max, 0.0, num_steps + 1)).astype("float32")

    def get_config(self):
        return {
            "shift": self.shift,
            "time_sampling": self.time_sampling,
            "logit_mean": self.logit_mean,
            "logit_std": self.logit_std,
            "mode_scale": self.mode_scale,
            "t_min": self.t_min,
            "t_max": self.t_max,
            "time_scale": self.time_scale,
        }
