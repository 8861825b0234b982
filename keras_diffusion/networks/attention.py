"""Self-attention over the pixels of a feature map, as used inside U-Nets."""

import keras
from keras import ops

from keras_diffusion.networks.normalization import GroupNorm


@keras.saving.register_keras_serializable(package="keras_diffusion")
class SpatialSelfAttention(keras.layers.Layer):
    """Residual multi-head self-attention over the `H * W` positions.

    Computes `x + proj(attention(q(n), k(n), v(n)))` with `n = GroupNorm(x)`,
    where every pixel is one token. The channel count is kept.

    Args:
        groups: Number of groups of the GroupNormalization; must divide the
            channel count of the input.
        num_heads: Number of attention heads; must divide the channel count.
        **kwargs: Standard `keras.layers.Layer` arguments (`name`, `dtype`).

    Returns:
        Called on a tensor of shape `(batch, height, width, channels)`,
        returns a tensor of the same shape.

    Example:
    >>> attn = SpatialSelfAttention(groups=4, num_heads=2)
    >>> tuple(attn(keras.random.normal((2, 8, 8, 16))).shape)
    (2, 8, 8, 16)
    """

    def __init__(self, groups=8, num_heads=1, **kwargs):
        super().__init__(**kwargs)
        for arg, value in (("groups", groups), ("num_heads", num_heads)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"`{arg}` must be a positive integer, got {value!r}."
                )
        self.groups = groups
        self.num_heads = num_heads

    def build(self, input_shape):
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError(
                "SpatialSelfAttention expects inputs of shape "
                f"(batch, height, width, channels) with known channels, got "
                f"{input_shape}."
            )
        channels = input_shape[-1]
        for arg, value in (("groups", self.groups), ("num_heads", self.num_heads)):
            if channels % value:
                raise ValueError(
                    f"The channel count {channels} is not divisible by "
                    f"`{arg}`={value}. Choose a `{arg}` that divides it."
                )
        # Sub-layers depend on the channel count, so they are made here.
        self.norm = GroupNorm(
            groups=self.groups, dtype=self.dtype_policy, name="norm"
        )
        self.query, self.key, self.value, self.proj = (
            keras.layers.Dense(channels, dtype=self.dtype_policy, name=name)
            for name in ("query", "key", "value", "proj")
        )
        for layer in (self.norm, self.query, self.key, self.value, self.proj):
            layer.build(input_shape)

    def call(self, inputs):
        batch, height, width, channels = ops.shape(inputs)
        head_dim = channels // self.num_heads
        normed = self.norm(inputs)

        def to_tokens(x):
            return ops.reshape(x, (batch, height * width, self.num_heads, head_dim))

        out = ops.dot_product_attention(
            to_tokens(self.query(normed)),
            to_tokens(self.key(normed)),
            to_tokens(self.value(normed)),
        )
        out = ops.reshape(out, (batch, height, width, channels))
        return inputs + self.proj(out)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"groups": self.groups, "num_heads": self.num_heads})
        return config
