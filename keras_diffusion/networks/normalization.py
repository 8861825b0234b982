"""Group normalization computed from per-channel statistics.

Keras' `GroupNormalization` reshapes `(B, H, W, C)` to `(B, H, W, G, C/G)`
and reduces over three non-adjacent axes. On CPU that costs about as much
as a 3x3 convolution of the same tensor (see the benchmarks README).
`GroupNorm` computes the same function with cheaper steps: per-channel
sums of `x` and `x**2` over `H, W` (one contiguous reduction), a tiny group
average of those `(B, C)` statistics, then one multiply-add per element.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_diffusion")
class GroupNorm(keras.layers.GroupNormalization):
    """`keras.layers.GroupNormalization`, faster for 4-D feature maps.

    Same arguments, weights (`gamma`, `beta`) and math as Keras' layer
    (`var = E[x^2] - E[x]^2`, as `keras.ops.moments` computes it), so
    weights move freely between the two. 4-D inputs take the fast path
    with `axis=-1` (channels last) or `axis=1` (channels first); others
    use Keras' own implementation.

    Args:
        groups: number of channel groups; must divide the channel count.
        **kwargs: every other `keras.layers.GroupNormalization` argument.

    Returns:
        Called on `(batch, height, width, channels)` (or, with `axis=1`,
        `(batch, channels, height, width)`), a tensor of that shape.

    Example:
    >>> x = keras.random.normal((2, 4, 4, 8))
    >>> fast, ref = GroupNorm(4), keras.layers.GroupNormalization(4)
    >>> bool(ops.max(ops.abs(fast(x) - ref(x))) < 1e-5)
    True
    """

    def call(self, inputs):
        if len(inputs.shape) != 4 or self.axis not in (-1, 3, 1):
            return super().call(inputs)
        channels_first = self.axis == 1
        channels = inputs.shape[1 if channels_first else -1]
        per_group = channels // self.groups
        x = ops.cast(inputs, "float32")
        spatial = (2, 3) if channels_first else (1, 2)

        # Per-channel means over the pixels, then averaged within each group.
        def group_mean(values):
            per_channel = ops.mean(values, axis=spatial)
            return ops.mean(ops.reshape(per_channel, (-1, self.groups, per_group)), axis=-1)

        mean, mean_sq = group_mean(x), group_mean(ops.square(x))
        inv = ops.rsqrt(mean_sq - ops.square(mean) + self.epsilon)
        # Back from (batch, groups) to (batch, channels).
        inv = ops.repeat(inv, per_group, axis=-1)
        mean = ops.repeat(mean, per_group, axis=-1)
        if self.scale:
            inv = inv * ops.cast(self.gamma, "float32")
        shift = -mean * inv
        if self.center:
            shift = shift + ops.cast(self.beta, "float32")
        if channels_first:
            out = x * inv[:, :, None, None] + shift[:, :, None, None]
        else:
            out = x * inv[:, None, None, :] + shift[:, None, None, :]
        return ops.cast(out, self.compute_dtype)
