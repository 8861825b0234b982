"""`ContinuousCosineSchedule`: the keras.io DDIM example's continuous cosine signal and noise rates."""

import math

import keras
import numpy as np
from keras import ops

from keras_diffusion.processes.base import TIMESTEP_SPACINGS
from keras_diffusion.processes.base import VariancePreserving
from keras_diffusion.processes.base import check_num_steps


@keras.saving.register_keras_serializable(package="keras_diffusion")
class ContinuousCosineSchedule(VariancePreserving):
    """Continuous-time cosine signal and noise rates (the keras.io DDIM example).

    Time `t` runs over [0, 1] and is drawn uniformly in training. The
    diffusion angle moves linearly from `arccos(max_signal_rate)` at `t=0` to
    `arccos(min_signal_rate)` at `t=1`; the signal rate is its cosine and the
    noise rate its sine, so `alpha(t)**2 + sigma(t)**2 = 1` (variance
    preserving). This is the simplified continuous version of Nichol &
    Dhariwal's cosine schedule that András Béres' keras.io example uses. In
    "x0 + sigma * eps" space the noise level is `tan(angle)`, so `t` follows
    from a noise level analytically. The network is given the noise variance
    `sigma(t)**2`, as in keras.io.

    Args:
        min_signal_rate: the signal rate at `t=1` (pure-noise end); must be
            positive, since samplers divide by it.
        max_signal_rate: the signal rate at `t=0` (cleanest end), at most 1.

    Example:
    >>> schedule = ContinuousCosineSchedule()
    >>> alpha, sigma = schedule.alpha_sigma(ops.convert_to_tensor([0.0, 1.0]))
    >>> [round(float(a), 2) for a in ops.convert_to_numpy(alpha)]
    [0.95, 0.02]
    >>> [round(s, 2) for s in schedule.sigmas(2).tolist()]
    [49.99, 1.35, 0.0]
    """

    default_timestep_spacing = "trailing"

    def __init__(self, min_signal_rate=0.02, max_signal_rate=0.95):
        if not 0.0 < min_signal_rate < max_signal_rate <= 1.0:
            raise ValueError(
                "Signal rates must satisfy 0 < min_signal_rate < max_signal_rate <= 1. "
                f"Received: min_signal_rate={min_signal_rate}, max_signal_rate={max_signal_rate}"
            )
        self.min_signal_rate = float(min_signal_rate)
        self.max_signal_rate = float(max_signal_rate)
        self.start_angle = math.acos(self.max_signal_rate)
        self.end_angle = math.acos(self.min_signal_rate)

    def sample_t(self, batch_size, seed):
        """Times drawn uniformly from [0, 1)."""
        return keras.random.uniform((batch_size,), seed=seed)

    def angle(self, t):
        """The diffusion angle at times `t` (a float tensor or array)."""
        return self.start_angle + ops.cast(t, "float32") * (self.end_angle - self.start_angle)

    def alpha_sigma(self, t):
        """Returns `(signal_rate, noise_rate)` float32 tensors at times `t` in [0, 1]."""
        angle = self.angle(t)
        return ops.cos(angle), ops.sin(angle)

    def t_to_sigma(self, t):
        """`tan(angle(t))`."""
        return ops.tan(self.angle(t))

    def sigma_to_t(self, sigma):
        """Times at noise levels `sigma = noise_rate / signal_rate`: the inverse of `tan(angle(t))`.

        Noise levels outside the schedule's range give times outside [0, 1].
        """
        angle = ops.arctan(ops.cast(sigma, "float32"))
        return (angle - self.start_angle) / (self.end_angle - self.start_angle)

    def network_time(self, t):
        """The noise variance `sigma(t)**2`: what the keras.io network is conditioned on."""
        return ops.square(self.alpha_sigma(t)[1])

    @property
    def sigma_range(self):
        """`(sigma_min, sigma_max)`: the noise levels at `t=0` and `t=1`."""
        return math.tan(self.start_angle), math.tan(self.end_angle)

    def inference_times(self, num_steps, spacing="trailing"):
        """The descending times a sampler visits.

        Args:
            num_steps: a positive number of denoising steps.
            spacing: `"trailing"` (`1 - i / n`, i.e. 1 down to `1/n`: the
                keras.io example's steps), `"leading"` (`(n - 1 - i) / n`,
                ending at 0) or `"linspace"` (`n` points from 1 to 0).

        Returns:
            A float64 numpy array of `num_steps` descending times in [0, 1].

        Example:
        >>> ContinuousCosineSchedule().inference_times(4).tolist()
        [1.0, 0.75, 0.5, 0.25]
        """
        check_num_steps(num_steps)
        steps = np.arange(num_steps, dtype=np.float64)
        if spacing == "trailing":
            return 1.0 - steps / num_steps
        if spacing == "leading":
            return (num_steps - 1 - steps) / num_steps
        if spacing == "linspace":
            return np.linspace(1.0, 0.0, num_steps) if num_steps > 1 else np.ones(1)
        raise ValueError(f"Unknown timestep_spacing: {spacing!r}. Use one of {TIMESTEP_SPACINGS}.")

    def sigmas(self, num_steps, timestep_spacing=None):
        """Descending noise levels `tan(angle(t))` at `inference_times`, then 0.

        With the default `"trailing"` spacing, deterministic DDIM on these
        levels takes exactly the keras.io example's steps: from `t=1` down to
        `t=1/n`, whose clean-image estimate is the result.

        Returns:
            A float32 numpy array of `num_steps + 1` noise levels.
        """
        times = self.inference_times(num_steps, timestep_spacing or self.default_timestep_spacing)
        angles = self.start_angle + times * (self.end_angle - self.start_angle)
        return np.append(np.tan(angles), 0.0).astype("float32")

    def default_num_steps(self, sampler):
        """keras.io's `plot_diffusion_steps`: 20."""
        return 20

    def get_config(self):
        return {"min_signal_rate": self.min_signal_rate, "max_signal_rate": self.max_signal_rate}
