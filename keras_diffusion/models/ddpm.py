"""`DDPM`: denoising diffusion probabilistic models (Ho et al. 2020)."""

import keras
import numpy as np
from keras import ops

from keras_diffusion.models.base import DiffusionModel
from keras_diffusion.processes import DiscreteVPSchedule


@keras.saving.register_keras_serializable(package="keras_diffusion")
class DDPM(DiffusionModel):
    """A DDPM: a network on the discrete VP schedule, trained with `fit()`.

    Training draws integer timesteps uniformly from `[0, T)` and noise from
    `keras.random` (seeded `SeedGenerator`), so `compile()` + `fit()` work
    unchanged on TensorFlow, JAX and PyTorch. `generate()` samples with any
    sampler of `keras_diffusion.samplers` (through `denoise`, at fractional
    timesteps interpolated in log-sigma), using the optimizer's EMA weights
    when the optimizer keeps them (`use_ema=True`, the default of `compile()`).

    Args:
        network: a Keras model mapping `[x_t, t]` (plus `labels`) to a
            prediction shaped like `x_t`; see `keras_diffusion.networks`.
        schedule: a `DiscreteVPSchedule`; the default is the linear one of
            Ho et al. (1e-4 to 0.02, T=1000).
        **kwargs: `prediction_type`, `loss_type`, `min_snr_gamma`,
            `num_classes`, `label_dropout`, `image_shape`, `seed`: see
            `DiffusionModel`.

    Example:
    >>> from keras_diffusion.networks import build_unet
    >>> net = build_unet((16, 16, 1), widths=(8, 16), num_res_blocks=1,
    ...                  attention_resolutions=(), norm_groups=4)
    >>> model = DDPM(net, DiscreteVPSchedule("cosine"))
    >>> model.compile()
    >>> x = np.random.uniform(-1, 1, (8, 16, 16, 1)).astype("float32")
    >>> _ = model.fit(x, epochs=1, batch_size=4, verbose=0)
    >>> model.generate(2, sampler="ddim", num_steps=5, seed=0, verbose=0).shape
    (2, 16, 16, 1)
    """

    def __init__(self, network, schedule=None, **kwargs):
        super().__init__(network, **kwargs)
        self.schedule = schedule if schedule is not None else DiscreteVPSchedule()

    def sample_noise_levels(self, batch_size):
        T = self.schedule.num_train_timesteps
        t = keras.random.randint((batch_size,), 0, T, seed=self.seed_generator)
        alpha, sigma = self.schedule.alpha_sigma(t)
        return t, alpha, sigma

    def alpha_sigma(self, t):
        return self.schedule.alpha_sigma(ops.cast(t, "int32"))

    def sigmas(self, num_steps, timestep_spacing="leading"):
        """The schedule's noise levels at diffusers' inference timesteps, then 0.

        Args:
            num_steps: denoising steps, at most `num_train_timesteps`.
            timestep_spacing: `"leading"`, `"trailing"` or `"linspace"`
                (`DiscreteVPSchedule.inference_timesteps`).

        Returns:
            float32 numpy `(num_steps + 1,)`, descending, last entry 0.

        Example:
        >>> from keras_diffusion.networks import build_unet
        >>> model = DDPM(build_unet((8, 8, 1), widths=(8,), num_res_blocks=1,
        ...              attention_resolutions=(), norm_groups=4))
        >>> [round(float(s), 2) for s in model.sigmas(4, "trailing")]
        [157.41, 17.25, 3.42, 0.95, 0.0]
        """
        timesteps = self.schedule.inference_timesteps(num_steps, timestep_spacing)
        return np.append(self.schedule.sigmas[timesteps], 0.0).astype("float32")

    def sigma_to_t(self, sigma):
        """Fractional timesteps: linear interpolation in log-sigma between training timesteps.

        The same rule as diffusers' `_sigma_to_t` and k-diffusion's
        `DiscreteSchedule.sigma_to_t`; noise levels outside the training
        range map to `0` or `T - 1`.
        """
        log_sigmas = ops.convert_to_tensor(np.log(self.schedule.sigmas), "float32")  # ascending in t
        log_sigma = ops.log(ops.maximum(ops.cast(sigma, "float32"), 1e-10))
        below = ops.cast(log_sigmas[None, :] <= log_sigma[:, None], "int32")
        low = ops.clip(ops.sum(below, axis=1) - 1, 0, self.schedule.num_train_timesteps - 2)
        low_value, high_value = ops.take(log_sigmas, low), ops.take(log_sigmas, low + 1)
        weight = ops.clip((log_sigma - low_value) / (high_value - low_value), 0.0, 1.0)
        return ops.cast(low, "float32") + weight

    @property
    def sigma_range(self):
        return float(self.schedule.sigmas[0]), float(self.schedule.sigmas[-1])

    def default_num_steps(self, sampler):
        return self.schedule.num_train_timesteps if sampler == "ddpm" else 50

    def get_config(self):
        config = super().get_config()
        config["schedule"] = self.schedule.get_config()
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["schedule"] = DiscreteVPSchedule.from_config(config["schedule"])
        return super().from_config(config)
