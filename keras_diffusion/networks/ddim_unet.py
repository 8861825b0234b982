"""The residual U-Net of the keras.io "Denoising Diffusion Implicit Models" example.

András Béres' network differs from the DDPM U-Net (`unet.py`) in ways that
matter for reproducing his results, so it has its own builder:

- it is conditioned on the noise *variance* (not a timestep), through a
  sinusoidal embedding with log-spaced frequencies from 1 to
  `embedding_max_frequency`, given once at the input (upsampled to the image
  size and concatenated to the first features) rather than to every block;
- its residual blocks are BatchNorm (no centre, no scale), conv-swish, conv,
  with no time input; down-sampling is average pooling and up-sampling is
  bilinear; there is no attention;
- its last 1x1 conv is zero-initialised, so the untrained network predicts 0.

Everything is a registered Keras layer, so the network saves to `.keras`.
"""

import math
import numbers

import keras
from keras import layers
from keras import ops

DDIM_UNET_PRESETS = {
    # The keras.io DDIM network for 64x64 RGB flowers (1.95M parameters).
    "ddim_keras_io": {
        "image_shape": (64, 64, 3),
        "widths": (32, 64, 96, 128),
        "block_depth": 2,
        "embedding_dims": 32,
        "embedding_max_frequency": 1000.0,
    },
}


@keras.saving.register_keras_serializable(package="keras_diffusion")
class NoiseVarianceEmbedding(keras.layers.Layer):
    """Sinusoidal features of a noise variance, as the keras.io DDIM example computes them.

    The frequencies are `f_i = exp(linspace(log(min_frequency),
    log(max_frequency), dim // 2))[i]` and the features are
    `[sin(2 pi f_i v), cos(2 pi f_i v)]`. Variances lie in [0, 1], so
    frequencies from 1 to 1000 resolve both coarse and fine noise levels.

    Args:
        dim: even, positive size of the embedding.
        min_frequency: lowest frequency (keras.io: 1).
        max_frequency: highest frequency (keras.io: 1000).
        **kwargs: standard `keras.layers.Layer` arguments.

    Returns:
        Called on a float tensor `(batch,)`, returns `(batch, dim)`.

    Example:
    >>> emb = NoiseVarianceEmbedding(32)
    >>> tuple(emb(keras.ops.array([0.0, 0.5])).shape)
    (2, 32)
    """

    def __init__(self, dim=32, min_frequency=1.0, max_frequency=1000.0, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(dim, int) or dim < 2 or dim % 2:
            raise ValueError(f"`dim` must be a positive even integer, got {dim!r}. Use e.g. dim=32.")
        if not 0 < min_frequency < max_frequency:
            raise ValueError(
                "Frequencies must satisfy 0 < min_frequency < max_frequency. Received: "
                f"min_frequency={min_frequency}, max_frequency={max_frequency}"
            )
        self.dim = dim
        self.min_frequency = float(min_frequency)
        self.max_frequency = float(max_frequency)
        half = dim // 2
        low, high = math.log(self.min_frequency), math.log(self.max_frequency)
        steps = [low + (high - low) * i / (half - 1) for i in range(half)] if half > 1 else [low]
        # Host-side float64, so that every backend gets the same float32 values.
        self._angular_speeds = [2.0 * math.pi * math.exp(s) for s in steps]

    def call(self, variances):
        v = ops.reshape(ops.cast(variances, "float32"), (-1, 1))
        args = v * ops.convert_to_tensor([self._angular_speeds], dtype="float32")
        emb = ops.concatenate([ops.sin(args), ops.cos(args)], axis=-1)
        return ops.cast(emb, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"dim": self.dim, "min_frequency": self.min_frequency, "max_frequency": self.max_frequency}
        )
        return config


def _residual_block(x, width, name):
    residual = x if x.shape[-1] == width else layers.Conv2D(width, 1, name=f"{name}_skip")(x)
    x = layers.BatchNormalization(center=False, scale=False, name=f"{name}_norm")(x)
    x = layers.Conv2D(width, 3, padding="same", activation="swish", name=f"{name}_conv1")(x)
    x = layers.Conv2D(width, 3, padding="same", name=f"{name}_conv2")(x)
    return layers.Add(name=f"{name}_out")([x, residual])


def _validate(image_shape, widths, block_depth, embedding_dims):
    if len(image_shape) != 3 or any(not isinstance(d, numbers.Integral) or d < 1 for d in image_shape):
        raise ValueError(
            f"`image_shape` must be (height, width, channels) of positive integers, got {image_shape!r}."
        )
    if not widths or any(not isinstance(w, numbers.Integral) or w < 1 for w in widths):
        raise ValueError(f"`widths` must be positive channel counts, got {widths!r}. Use e.g. (32, 64, 96, 128).")
    if not isinstance(block_depth, numbers.Integral) or block_depth < 1:
        raise ValueError(f"`block_depth` must be a positive integer, got {block_depth!r}.")
    factor = 2 ** (len(widths) - 1)
    if image_shape[0] % factor or image_shape[1] % factor:
        raise ValueError(
            f"Image height and width {tuple(image_shape[:2])} must be divisible by "
            f"2**(len(widths) - 1) = {factor}: the U-Net halves them {len(widths) - 1} times. "
            "Resize the images or use fewer widths."
        )
    if not isinstance(embedding_dims, int) or embedding_dims < 2 or embedding_dims % 2:
        raise ValueError(f"`embedding_dims` must be a positive even integer, got {embedding_dims!r}.")


def build_ddim_unet(
    image_shape=(64, 64, 3),
    widths=(32, 64, 96, 128),
    block_depth=2,
    embedding_dims=32,
    embedding_max_frequency=1000.0,
    name="residual_unet",
):
    """Builds the keras.io DDIM residual U-Net, which predicts the noise of `x`.

    Args:
        image_shape: `(height, width, channels)`; height and width divisible
            by `2 ** (len(widths) - 1)`.
        widths: channels per resolution level, highest resolution first. The
            last one is the bottleneck, without down-sampling.
        block_depth: residual blocks per level on each path.
        embedding_dims: size of the noise-variance embedding.
        embedding_max_frequency: highest embedding frequency (the lowest is 1).
        name: the model's name.

    Returns:
        A functional `keras.Model` with inputs `[x, noise_variance]`: `x` float32
        `(batch, *image_shape)` and the noise variance `sigma**2` float32
        `(batch,)`; the output, float32, is shaped like `x`.

    Example:
    >>> net = build_ddim_unet((16, 16, 3), widths=(8, 16), block_depth=1)
    >>> x = keras.random.normal((2, 16, 16, 3))
    >>> tuple(net([x, keras.ops.array([0.1, 0.9])]).shape)
    (2, 16, 16, 3)
    """
    image_shape = tuple(image_shape)
    widths = tuple(widths)
    _validate(image_shape, widths, block_depth, embedding_dims)
    height, width = image_shape[:2]

    x_in = keras.Input(image_shape, dtype="float32", name="x")
    variance_in = keras.Input((), dtype="float32", name="noise_variance")

    e = NoiseVarianceEmbedding(embedding_dims, max_frequency=embedding_max_frequency, name="embedding")(
        variance_in
    )
    e = layers.Reshape((1, 1, embedding_dims))(e)
    e = layers.UpSampling2D(size=(height, width), interpolation="nearest", name="embedding_upsample")(e)

    x = layers.Conv2D(widths[0], 1, name="stem")(x_in)
    x = layers.Concatenate()([x, e])

    skips = []
    for level, w in enumerate(widths[:-1]):
        for i in range(block_depth):
            x = _residual_block(x, w, f"down{level}_res{i}")
            skips.append(x)
        x = layers.AveragePooling2D(2, name=f"down{level}_pool")(x)

    for i in range(block_depth):
        x = _residual_block(x, widths[-1], f"mid_res{i}")

    for level in reversed(range(len(widths) - 1)):
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"up{level}_upsample")(x)
        for i in range(block_depth):
            x = layers.Concatenate()([x, skips.pop()])
            x = _residual_block(x, widths[level], f"up{level}_res{i}")

    # Zero-initialised: the untrained network predicts 0, the mean of its targets.
    outputs = layers.Conv2D(image_shape[-1], 1, kernel_initializer="zeros", dtype="float32", name="out_conv")(x)
    return keras.Model([x_in, variance_in], outputs, name=name)
