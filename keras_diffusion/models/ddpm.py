"""`DDPM`: denoising diffusion probabilistic models (Ho et al. 2020)."""

import keras

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
        schedule: a `DiscreteVPSchedule` (the model's process, also
            `model.process`); the default is the linear one of Ho et al.
            (1e-4 to 0.02, T=1000).
        **kwargs: `prediction_type`, `loss_type`, `min_snr_gamma`,
            `num_classes`, `label_dropout`, `image_shape`, `seed`: see
            `DiffusionModel`.

    Example:
    >>> import numpy as np
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
        super().__init__(network, schedule if schedule is not None else DiscreteVPSchedule(), **kwargs)

    @property
    def schedule(self):
        """The `DiscreteVPSchedule` (the model's process), under diffusers' name."""
        return self.process

    def get_config(self):
        # The schedule's own config under "schedule": the format files have had since the first release.
        config = super().get_config()
        config.pop("process")
        config["schedule"] = self.process.get_config()
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["schedule"] = DiscreteVPSchedule.from_config(config["schedule"])
        return super().from_config(config)
