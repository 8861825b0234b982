"""Noise processes: how clean data `x0` becomes noisy `x_t`.

Every process here has the form `x_t = alpha(t) * x0 + sigma(t) * eps`.
`DiscreteVPSchedule` is the DDPM one: `T` integer timesteps with betas from
the linear (Ho et al. 2020), cosine (Nichol & Dhariwal 2021) or sigmoid
(GeoDiff) schedule. The schedule is computed once in float64 numpy; the
per-timestep tables are what the model gathers from during training and
sampling.

The names follow diffusers (`beta_schedule`, `num_train_timesteps`,
`alphas_cumprod`, `timestep_spacing`), so users can move between the two.
"""

import math

import keras
import numpy as np
from keras import ops

BETA_SCHEDULES = ("linear", "cosine", "sigmoid")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


def append_dims(values, ndim):
    """Reshapes a `(batch,)` tensor to `(batch, 1, ..., 1)` with `ndim` dims."""
    return ops.reshape(values, (-1,) + (1,) * (ndim - 1))


def _cosine_betas(num_timesteps, s=0.008, max_beta=0.999):
    def alpha_bar(t):
        return math.cos((t + s) / (1 + s) * math.pi / 2) ** 2

    return np.array(
        [
            min(1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), max_beta)
            for i in range(num_timesteps)
        ],
        dtype=np.float64,
    )


@keras.saving.register_keras_serializable(package="keras_diffusion")
class DiscreteVPSchedule:
    """The discrete variance-preserving (DDPM) noise schedule.

    Args:
        beta_schedule: `"linear"` (Ho et al.: `beta_start` to `beta_end`),
            `"cosine"` (Nichol & Dhariwal, s=0.008, betas clipped at 0.999;
            diffusers' `"squaredcos_cap_v2"`) or `"sigmoid"` (GeoDiff).
        num_train_timesteps: the number of training timesteps `T`.
        beta_start: first beta of the linear and sigmoid schedules.
        beta_end: last beta of the linear and sigmoid schedules.

    Attributes (numpy float64 arrays of length `T`): `betas`, `alphas`,
    `alphas_cumprod`, `sqrt_alphas_cumprod`, `sqrt_one_minus_alphas_cumprod`,
    `sigmas` (the noise level `sqrt((1 - a) / a)` in "x0 + sigma * eps"
    space, as in Karras et al. 2022), `snr` and `posterior_variance`.

    Example:
    >>> schedule = DiscreteVPSchedule("cosine", num_train_timesteps=1000)
    >>> schedule.alphas_cumprod.shape
    (1000,)
    >>> bool(schedule.alphas_cumprod[0] > schedule.alphas_cumprod[-1])
    True
    """

    def __init__(self, beta_schedule="linear", num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02):
        if beta_schedule == "squaredcos_cap_v2":
            beta_schedule = "cosine"
        if beta_schedule not in BETA_SCHEDULES:
            raise ValueError(
                f"Unknown beta_schedule: {beta_schedule!r}. Use one of {BETA_SCHEDULES}."
            )
        if int(num_train_timesteps) < 2:
            raise ValueError(
                f"num_train_timesteps must be at least 2. Received: {num_train_timesteps}"
            )
        if not 0 < beta_start < beta_end < 1:
            raise ValueError(
                "Betas must satisfy 0 < beta_start < beta_end < 1. "
                f"Received: beta_start={beta_start}, beta_end={beta_end}"
            )
        self.beta_schedule = beta_schedule
        self.num_train_timesteps = int(num_train_timesteps)
        self.beta_start = float(beta_start)
        self.beta_end = float(beta_end)

        T = self.num_train_timesteps
        if beta_schedule == "linear":
            betas = np.linspace(beta_start, beta_end, T, dtype=np.float64)
        elif beta_schedule == "cosine":
            betas = _cosine_betas(T)
        else:
            x = np.linspace(-6, 6, T, dtype=np.float64)
            betas = 1 / (1 + np.exp(-x)) * (beta_end - beta_start) + beta_start
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(self.alphas)
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sigmas = np.sqrt((1.0 - self.alphas_cumprod) / self.alphas_cumprod)
        self.snr = self.alphas_cumprod / (1.0 - self.alphas_cumprod)
        alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        # "fixed_small" in diffusers: beta_tilde of Ho et al. eq. (7).
        self.posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

    def alpha_sigma(self, timesteps):
        """Returns `(alpha_t, sigma_t)` as float32 tensors for integer timesteps.

        Args:
            timesteps: int tensor of shape `(batch,)` with values in `[0, T)`.
        """
        alpha = ops.take(ops.convert_to_tensor(self.sqrt_alphas_cumprod, "float32"), timesteps)
        sigma = ops.take(ops.convert_to_tensor(self.sqrt_one_minus_alphas_cumprod, "float32"), timesteps)
        return alpha, sigma

    def add_noise(self, x0, noise, timesteps):
        """Returns `x_t = sqrt(a_t) * x0 + sqrt(1 - a_t) * noise` (diffusers' `add_noise`)."""
        alpha, sigma = self.alpha_sigma(timesteps)
        ndim = len(x0.shape)
        return append_dims(alpha, ndim) * x0 + append_dims(sigma, ndim) * noise

    def inference_timesteps(self, num_steps, spacing="leading"):
        """The descending integer timesteps a sampler visits, as diffusers spaces them.

        Args:
            num_steps: how many denoising steps, at most `T`.
            spacing: `"leading"` (`arange(n) * (T // n)`), `"trailing"`
                (`round(arange(T, 0, -T / n)) - 1`) or `"linspace"`
                (`round(linspace(0, T - 1, n))`), each reversed.

        Returns:
            An int64 numpy array of `num_steps` descending timesteps.

        Example:
        >>> DiscreteVPSchedule().inference_timesteps(4, "trailing").tolist()
        [999, 749, 499, 249]
        """
        T = self.num_train_timesteps
        if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
            raise ValueError(f"num_steps must be a positive integer. Received: num_steps={num_steps!r}")
        if num_steps > T:
            raise ValueError(
                f"num_steps={num_steps} is larger than the {T} timesteps the model was "
                f"trained with. Use num_steps <= {T}."
            )
        if spacing == "leading":
            steps = (np.arange(num_steps) * (T // num_steps)).round()[::-1]
        elif spacing == "trailing":
            steps = np.round(np.arange(T, 0, -T / num_steps)) - 1
        elif spacing == "linspace":
            steps = np.linspace(0, T - 1, num_steps).round()[::-1]
        else:
            raise ValueError(
                f"Unknown timestep_spacing: {spacing!r}. Use one of {TIMESTEP_SPACINGS}."
            )
        return steps.astype(np.int64)

    def get_config(self):
        return {
            "beta_schedule": self.beta_schedule,
            "num_train_timesteps": self.num_train_timesteps,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="keras_diffusion")
class ContinuousCosineSchedule:
    """Continuous-time cosine signal and noise rates (the keras.io DDIM example).

    Time `t` runs over [0, 1]. The diffusion angle moves linearly from
    `arccos(max_signal_rate)` at `t=0` to `arccos(min_signal_rate)` at `t=1`;
    the signal rate is its cosine and the noise rate its sine, so
    `alpha(t)**2 + sigma(t)**2 = 1` (variance preserving). This is the
    simplified continuous version of Nichol & Dhariwal's cosine schedule that
    András Béres' keras.io example uses. In "x0 + sigma * eps" space the noise
    level is `tan(angle)`, so `t` follows from a noise level analytically.

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

    def angle(self, t):
        """The diffusion angle at times `t` (a float tensor or array)."""
        return self.start_angle + ops.cast(t, "float32") * (self.end_angle - self.start_angle)

    def alpha_sigma(self, t):
        """Returns `(signal_rate, noise_rate)` float32 tensors at times `t` in [0, 1]."""
        angle = self.angle(t)
        return ops.cos(angle), ops.sin(angle)

    def add_noise(self, x0, noise, t):
        """Returns `x_t = alpha(t) * x0 + sigma(t) * noise` for times `t` of shape `(batch,)`."""
        alpha, sigma = self.alpha_sigma(t)
        ndim = len(x0.shape)
        return append_dims(alpha, ndim) * x0 + append_dims(sigma, ndim) * noise

    def sigma_to_t(self, sigma):
        """Times at noise levels `sigma = noise_rate / signal_rate`: the inverse of `tan(angle(t))`.

        Noise levels outside the schedule's range give times outside [0, 1].
        """
        angle = ops.arctan(ops.cast(sigma, "float32"))
        return (angle - self.start_angle) / (self.end_angle - self.start_angle)

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
        if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
            raise ValueError(f"num_steps must be a positive integer. Received: num_steps={num_steps!r}")
        steps = np.arange(num_steps, dtype=np.float64)
        if spacing == "trailing":
            return 1.0 - steps / num_steps
        if spacing == "leading":
            return (num_steps - 1 - steps) / num_steps
        if spacing == "linspace":
            return np.linspace(1.0, 0.0, num_steps) if num_steps > 1 else np.ones(1)
        raise ValueError(f"Unknown timestep_spacing: {spacing!r}. Use one of {TIMESTEP_SPACINGS}.")

    def sigmas(self, num_steps, spacing="trailing"):
        """Descending noise levels `tan(angle(t))` at `inference_times`, then 0.

        With the default `"trailing"` spacing, deterministic DDIM on these
        levels takes exactly the keras.io example's steps: from `t=1` down to
        `t=1/n`, whose clean-image estimate is the result.

        Returns:
            A float32 numpy array of `num_steps + 1` noise levels.
        """
        times = self.inference_times(num_steps, spacing)
        angles = self.start_angle + times * (self.end_angle - self.start_angle)
        return np.append(np.tan(angles), 0.0).astype("float32")

    def get_config(self):
        return {"min_signal_rate": self.min_signal_rate, "max_signal_rate": self.max_signal_rate}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
