"""Sinusoidal timestep embedding, the standard way diffusion networks see `t`."""

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_diffusion")
class SinusoidalEmbedding(keras.layers.Layer):
    """Map timesteps to `[sin(t * f_i), cos(t * f_i)]` features.

    The frequencies are `f_i = exp(-log(max_period) * i / (dim // 2))` for
    `i = 0 .. dim // 2 - 1`, i.e. diffusers' `get_timestep_embedding` with
    `downscale_freq_shift=0`, `flip_sin_to_cos=False`. (The keras.io DDPM
    example divides by `dim // 2 - 1` instead; the difference is a slight
    rescaling of the frequency ladder and does not matter for training.)

    Args:
        dim: Even, positive size of the embedding.
        max_period: Controls the lowest frequency, `1 / max_period`.
        **kwargs: Standard `keras.layers.Layer` arguments (`name`, `dtype`).

    Returns:
        Called on a float tensor of shape `(batch,)` (integer or continuous
        timesteps), returns a tensor of shape `(batch, dim)`.

    Example:
    >>> emb = SinusoidalEmbedding(64)
    >>> tuple(emb(keras.ops.array([0.0, 10.0, 999.0])).shape)
    (3, 64)
    """

    def __init__(self, dim, max_period=10000.0, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(dim, int) or dim < 2 or dim % 2:
            raise ValueError(
                f"`dim` must be a positive even integer, got {dim!r}. "
                "Use e.g. dim=64."
            )
        if max_period <= 1:
            raise ValueError(
                f"`max_period` must be > 1, got {max_period!r}. "
                "The usual value is 10000.0."
            )
        self.dim = dim
        self.max_period = float(max_period)
        half = dim // 2
        # Computed in float64 on the host so every backend gets the same
        # float32 frequencies.
        self._frequencies = [
            math.exp(-math.log(self.max_period) * i / half) for i in range(half)
        ]

    def call(self, t):
        t = ops.reshape(ops.cast(t, "float32"), (-1, 1))
        freqs = ops.convert_to_tensor(self._frequencies, dtype="float32")
        args = t * ops.expand_dims(freqs, 0)
        emb = ops.concatenate([ops.sin(args), ops.cos(args)], axis=-1)
        return ops.cast(emb, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.dim)

    def get_config(self):
        config = super().get_config()
        config.update({"dim": self.dim, "max_period": self.max_period})
        return config
