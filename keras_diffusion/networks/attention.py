"""Self-attention over the pixels of a feature map, as used inside U-Nets."""

import contextlib
import contextvars

import keras
from keras import ops

from keras_diffusion.networks.normalization import GroupNorm


_EXPLICIT = contextvars.ContextVar("explicit_attention", default=False)


@contextlib.contextmanager
def explicit_attention():
    """Within it, `SpatialSelfAttention` computes `softmax(q k^T / sqrt(d)) v` with einsum, not a fused kernel.

    torch's fused CPU attention (what `ops.dot_product_attention` calls) has no
    forward-mode autodiff, so `keras.ops.jvp` through a U-Net with attention
    fails there; `log_likelihood` traces the network inside this. The result
    equals the fused attention's up to float32 rounding.

    Example:
    >>> attn = SpatialSelfAttention(groups=4, num_heads=2)
    >>> x = keras.random.normal((2, 8, 8, 16), seed=0)
    >>> fused = attn(x)
    >>> with explicit_attention():
    ...     explicit = attn(x)
    >>> float(ops.max(ops.abs(fused - explicit))) < 1e-5
    True
    """
    token = _EXPLICIT.set(True)
    try:
        yield
    finally:
        _EXPLICIT.reset(token)


def _einsum_attention(query, key, value):
    """`softmax(q k^T / sqrt(d)) v` on `(batch, tokens, heads, head_dim)` tensors."""
    scores = ops.einsum("bqhd,bkhd->bhqk", query, key) / ops.sqrt(ops.cast(ops.shape(query)[-1], query.dtype))
    return ops.einsum("bhqk,bkhd->bqhd", ops.softmax(scores, axis=-1), value)


@keras.saving.register_keras_serializable(package="keras_diffusion")
class SpatialSelfAttention(keras.layers.Layer):
    """Residual multi-head self-attention over the `H * W` positions.

    Computes `x + proj(attention(q(n), k(n), v(n)))` with `n = GroupNorm(x)`,
    where every pixel is one token. The channel count is kept.

    Args:
        groups: Number of groups of the GroupNormalization; must divide the
            channel count of the input.
        num_heads: Number of attention heads; must divide the channel count.
        data_format: `"channels_last"` (default) or `"channels_first"`, the
            layout of the feature map. The weights are the same in both.
        **kwargs: Standard `keras.layers.Layer` arguments (`name`, `dtype`).

    Returns:
        Called on a tensor of shape `(batch, height, width, channels)`,
        returns a tensor of the same shape.

    Example:
    >>> attn = SpatialSelfAttention(groups=4, num_heads=2)
    >>> tuple(attn(keras.random.normal((2, 8, 8, 16))).shape)
    (2, 8, 8, 16)
    """

    def __init__(self, groups=8, num_heads=1, data_format="channels_last", **kwargs):
        super().__init__(**kwargs)
        if data_format not in ("channels_last", "channels_first"):
            raise ValueError(
                f"`data_format` must be 'channels_last' or 'channels_first', got {data_format!r}."
            )
        self.data_format = data_format
        for arg, value in (("groups", groups), ("num_heads", num_heads)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"`{arg}` must be a positive integer, got {value!r}."
                )
        self.groups = groups
        self.num_heads = num_heads

    def build(self, input_shape):
        channel_axis = 1 if self.data_format == "channels_first" else -1
        if len(input_shape) != 4 or input_shape[channel_axis] is None:
            layout = "(batch, channels, height, width)" if channel_axis == 1 else "(batch, height, width, channels)"
            raise ValueError(
                f"SpatialSelfAttention expects inputs of shape {layout} with "
                f"known channels, got {input_shape}."
            )
        channels = input_shape[channel_axis]
        for arg, value in (("groups", self.groups), ("num_heads", self.num_heads)):
            if channels % value:
                raise ValueError(
                    f"The channel count {channels} is not divisible by "
                    f"`{arg}`={value}. Choose a `{arg}` that divides it."
                )
        # Sub-layers depend on the channel count, so they are made here.
        self.norm = GroupNorm(
            groups=self.groups, axis=channel_axis, dtype=self.dtype_policy, name="norm"
        )
        self.query, self.key, self.value, self.proj = (
            keras.layers.Dense(channels, dtype=self.dtype_policy, name=name)
            for name in ("query", "key", "value", "proj")
        )
        self.norm.build(input_shape)
        for layer in (self.query, self.key, self.value, self.proj):
            layer.build((None, None, channels))

    def call(self, inputs):
        channels_first = self.data_format == "channels_first"
        if channels_first:
            batch, channels, height, width = ops.shape(inputs)
        else:
            batch, height, width, channels = ops.shape(inputs)
        head_dim = channels // self.num_heads
        normed = self.norm(inputs)
        # One token per pixel: (batch, height * width, channels).
        if channels_first:
            normed = ops.transpose(ops.reshape(normed, (batch, channels, height * width)), (0, 2, 1))
        else:
            normed = ops.reshape(normed, (batch, height * width, channels))

        def to_heads(x):
            return ops.reshape(x, (batch, height * width, self.num_heads, head_dim))

        attention = _einsum_attention if _EXPLICIT.get() else ops.dot_product_attention
        out = attention(
            to_heads(self.query(normed)),
            to_heads(self.key(normed)),
            to_heads(self.value(normed)),
        )
        out = self.proj(ops.reshape(out, (batch, height * width, channels)))
        if channels_first:
            out = ops.reshape(ops.transpose(out, (0, 2, 1)), (batch, channels, height, width))
        else:
            out = ops.reshape(out, (batch, height, width, channels))
        return inputs + out

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"groups": self.groups, "num_heads": self.num_heads, "data_format": self.data_format}
        )
        return config
