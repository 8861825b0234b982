"""AdamW whose weight average warms up: Keras' `use_ema`, with diffusers' EMA warm-up.

Keras' EMA (`use_ema=True`) copies the weights at the first step and then
averages with a fixed momentum. After `n` steps the average still holds
`ema_momentum ** n` of the first weights: with 0.999 and 1,000 steps, 37%
of an untrained network, and a briefly trained model samples from it. The
warm-up raises the momentum with the step `t` as diffusers' `EMAModel(
use_ema_warmup=True)` does, `min(ema_momentum, 1 - (1 + t) ** -power)`: the
average's time scale `1 / (1 - momentum)` grows as `(1 + t) ** power` (with
the default 2/3: 22 steps after 100, 100 after 1,000) until it reaches the
momentum asked for.

Everything else is `keras.optimizers.AdamW`: `finalize_variable_values`,
`ema_overwrite_frequency`, saving, and sampling with the average
(`DiffusionModel.generate(use_ema=True)`).
"""

import keras
from keras import ops


def ema_warmup_momentum(step, ema_momentum, power=2.0 / 3.0):
    """The warmed-up EMA momentum after `step` optimizer steps (0 at the first).

    Args:
        step: int or scalar tensor, the optimizer's `iterations` before the
            update (0 at the first step, which copies the weights).
        ema_momentum: the momentum reached once warmed up.
        power: how fast it warms up; diffusers' default 2/3 suits runs
            shorter than about a million steps, 3/4 longer ones.

    Returns:
        A float32 scalar tensor, `min(ema_momentum, 1 - (1 + step) ** -power)`.

    Example:
    >>> round(float(ema_warmup_momentum(999, 0.9999)), 4)
    0.99
    """
    step = ops.cast(step, "float32")
    return ops.minimum(ops.cast(ema_momentum, "float32"), 1.0 - ops.power(1.0 + step, -power))


@keras.saving.register_keras_serializable(package="keras_diffusion")
class AdamW(keras.optimizers.AdamW):
    """`keras.optimizers.AdamW` with an EMA of the weights that warms up.

    Args:
        ema_warmup_power: the warm-up's power (`ema_warmup_momentum`); None
            gives Keras' own fixed momentum.
        **kwargs: `keras.optimizers.AdamW` arguments (`learning_rate`,
            `weight_decay`, `use_ema`, `ema_momentum`, ...).

    Example:
    >>> optimizer = AdamW(2e-3, weight_decay=1e-4, use_ema=True, ema_momentum=0.999)
    >>> optimizer.ema_warmup_power
    0.6666666666666666

    Reference:
        diffusers, `training_utils.EMAModel.get_decay`; Karras et al. 2024,
        "Analyzing and improving the training dynamics of diffusion models"
        (power-function EMA profiles).
    """

    def __init__(self, *args, ema_warmup_power=2.0 / 3.0, **kwargs):
        super().__init__(*args, **kwargs)
        if ema_warmup_power is not None and not ema_warmup_power > 0:
            raise ValueError(
                f"`ema_warmup_power` must be positive (diffusers uses 2/3 or 3/4), or None for Keras' fixed "
                f"momentum. Received: ema_warmup_power={ema_warmup_power}"
            )
        self.ema_warmup_power = ema_warmup_power

    def _update_model_variables_moving_average(self, trainable_variables):
        # Keras calls this after each update, with `iterations` not yet incremented.
        if self.ema_warmup_power is None:
            return super()._update_model_variables_moving_average(trainable_variables)
        if not self.use_ema:
            return None
        momentum = ema_warmup_momentum(self.iterations, self.ema_momentum, self.ema_warmup_power)
        for variable, average in zip(trainable_variables, self._model_variables_moving_average):
            if average is not None:
                weight = ops.cast(momentum, variable.dtype)
                average.assign(weight * average + (1.0 - weight) * variable)
        return None

    def get_config(self):
        config = super().get_config()
        config.update({"ema_warmup_power": self.ema_warmup_power})
        return config
