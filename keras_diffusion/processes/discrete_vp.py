"""`DiscreteVPSchedule`: the DDPM process, `T` integer timesteps with linear, cosine or sigmoid betas.

The schedule is computed once in float64 numpy; the per-timestep tables are
what the model gathers from during training and sampling. The names follow
diffusers (`beta_schedule`, `num_train_timesteps`, `alphas_cumprod`,
`timestep_spacing`), so users can move between the two.
"""

import math

import keras
import numpy as np
from keras import ops

from keras_diffusion.processes.base import TIMESTEP_SPACINGS
from keras_diffusion.processes.base import VariancePreserving
from keras_diffusion.processes.base import check_num_steps

BETA_SCHEDULES = ("linear", "cosine", "sigmoid")


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
class DiscreteVPSchedule(VariancePreserving):
    """The discrete variance-preserving (DDPM) noise schedule.

    Training draws integer timesteps uniformly from `[0, T)`; the network is
    given the timestep; sampling visits diffusers' inference timesteps
    (`"leading"` by default), and fractional timesteps between them
    (`sigma_to_t` interpolates in log-sigma, as diffusers and k-diffusion do).

    Args:
        beta_schedule: `"linear"` (Ho et al.: `beta_start` to `beta_end`),
            `"cosine"` (Nichol & Dhariwal, s=0.008, betas clipped at 0.999;
            diffusers' `"squaredcos_cap_v2"`) or `"sigmoid"` (GeoDiff).
        num_train_timesteps: the number of training timesteps `T`.
        beta_start: first beta of the linear and sigmoid schedules.
        beta_end: last beta of the linear and sigmoid schedules.

    Attributes (numpy float64 arrays of length `T`): `betas`, `alphas`,
    `alphas_cumprod`, `sqrt_alphas_cumprod`, `sqrt_one_minus_alphas_cumprod`,
    `train_sigmas` (the noise level `sqrt((1 - a) / a)` of each timestep in
    "x0 + sigma * eps" space, as in Karras et al. 2022), `snr` and
    `posterior_variance`.

    Example:
    >>> schedule = DiscreteVPSchedule("cosine", num_train_timesteps=1000)
    >>> schedule.alphas_cumprod.shape
    (1000,)
    >>> [round(float(s), 2) for s in DiscreteVPSchedule().sigmas(4, "trailing")]
    [157.41, 17.25, 3.42, 0.95, 0.0]
    """

    default_timestep_spacing = "leading"

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
        self.train_sigmas = np.sqrt((1.0 - self.alphas_cumprod) / self.alphas_cumprod)
        self.snr = self.alphas_cumprod / (1.0 - self.alphas_cumprod)
        alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        # "fixed_small" in diffusers: beta_tilde of Ho et al. eq. (7).
        self.posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

    def sample_t(self, batch_size, seed):
        """Integer timesteps drawn uniformly from `[0, T)`."""
        return keras.random.randint((batch_size,), 0, self.num_train_timesteps, seed=seed)

    def alpha_sigma(self, t):
        """Returns `(sqrt(a_t), sqrt(1 - a_t))` as float32 tensors for integer timesteps `t` in `[0, T)`."""
        t = ops.cast(t, "int32")
        alpha = ops.take(ops.convert_to_tensor(self.sqrt_alphas_cumprod, "float32"), t)
        sigma = ops.take(ops.convert_to_tensor(self.sqrt_one_minus_alphas_cumprod, "float32"), t)
        return alpha, sigma

    def t_to_sigma(self, t):
        """`train_sigmas[t]` for integer timesteps `t`."""
        return ops.take(ops.convert_to_tensor(self.train_sigmas, "float32"), ops.cast(t, "int32"))

    def sigma_to_t(self, sigma):
        """Fractional timesteps: linear interpolation in log-sigma between training timesteps.

        The same rule as diffusers' `_sigma_to_t` and k-diffusion's
        `DiscreteSchedule.sigma_to_t`; noise levels outside the training
        range map to `0` or `T - 1`.
        """
        log_sigmas = ops.convert_to_tensor(np.log(self.train_sigmas), "float32")  # ascending in t
        log_sigma = ops.log(ops.maximum(ops.cast(sigma, "float32"), 1e-10))
        below = ops.cast(log_sigmas[None, :] <= log_sigma[:, None], "int32")
        low = ops.clip(ops.sum(below, axis=1) - 1, 0, self.num_train_timesteps - 2)
        low_value, high_value = ops.take(log_sigmas, low), ops.take(log_sigmas, low + 1)
        weight = ops.clip((log_sigma - low_value) / (high_value - low_value), 0.0, 1.0)
        return ops.cast(low, "float32") + weight

    @property
    def sigma_range(self):
        """The noise levels of the first and last training timestep."""
        return float(self.train_sigmas[0]), float(self.train_sigmas[-1])

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
        check_num_steps(num_steps)
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

    def sigmas(self, num_steps, timestep_spacing=None):
        """The noise levels at diffusers' inference timesteps (`inference_timesteps`), then 0.

        Args:
            num_steps: denoising steps, at most `num_train_timesteps`.
            timestep_spacing: `"leading"` (default), `"trailing"` or `"linspace"`.

        Returns:
            float32 numpy `(num_steps + 1,)`, descending, last entry 0.
        """
        timesteps = self.inference_timesteps(num_steps, timestep_spacing or self.default_timestep_spacing)
        return np.append(self.train_sigmas[timesteps], 0.0).astype("float32")

    def default_num_steps(self, sampler):
        """50 for every sampler, the ancestral `"ddpm"` one too (diffusers' `DDPMPipeline` runs all `T`).

        At 50 steps the ancestral sampler gives a briefly trained model its
        best FID (README, "Samplers compared"); all 1,000 improve it little
        for 20 times the cost.
        """
        return 50

    def get_config(self):
        return {
            "beta_schedule": self.beta_schedule,
            "num_train_timesteps": self.num_train_timesteps,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
        }
