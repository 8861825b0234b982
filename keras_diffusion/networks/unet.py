"""DDPM U-Net noise-prediction network, built with the Keras functional API.

The layout follows the keras.io "Denoising Diffusion Probabilistic Model"
example (itself after Ho et al., 2020). Being a plain functional `keras.Model`
made of registered layers, it saves to and loads from `.keras` files without
custom Model classes.
"""

import numbers
import random

import keras
from keras import layers

from keras_diffusion.networks.attention import SpatialSelfAttention
from keras_diffusion.networks.ddim_unet import DDIM_UNET_PRESETS
from keras_diffusion.networks.ddim_unet import build_ddim_unet
from keras_diffusion.networks.embeddings import SinusoidalEmbedding
from keras_diffusion.networks.normalization import GroupNorm

UNET_PRESETS = {
    # The network of the keras.io DDPM example (63.2M parameters).
    "ddpm_keras_io": {
        "image_shape": (64, 64, 3),
        "widths": (64, 128, 256, 512),
        "num_res_blocks": 2,
        "attention_resolutions": (16, 8),
        "norm_groups": 8,
    },
    # 1.7M parameters for 32x32 grayscale digits. Narrow high-resolution
    # levels and the parameters at 8x8/4x4 keep a CPU training step cheap:
    # about 1.5-2x faster than (32, 64, 64) or (24, 48, 96) on 2 cores.
    "mnist_small": {
        "image_shape": (32, 32, 1),
        "widths": (16, 32, 64, 96),
        "num_res_blocks": 1,
        "attention_resolutions": (8,),
        "norm_groups": 8,
    },
}


def _validate_args(
    image_shape,
    widths,
    num_res_blocks,
    attention_resolutions,
    norm_groups,
    dropout,
    num_classes,
    time_embedding_dim,
):
    """Raise a ValueError naming the first bad argument of `build_unet`."""
    if len(image_shape) != 3 or any(
        not isinstance(d, numbers.Integral) or d < 1 for d in image_shape
    ):
        raise ValueError(
            "`image_shape` must be (height, width, channels) of positive "
            f"integers, got {image_shape!r}."
        )
    if not widths:
        raise ValueError(
            f"`widths` must list at least one channel count, got {widths!r}. "
            "Use e.g. widths=(64, 128, 256, 512)."
        )
    if not isinstance(norm_groups, int) or norm_groups < 1:
        raise ValueError(
            f"`norm_groups` must be a positive integer, got {norm_groups!r}."
        )
    for width in widths:
        if not isinstance(width, numbers.Integral) or width < 1 or width % norm_groups:
            raise ValueError(
                f"Every width must be a positive multiple of "
                f"`norm_groups`={norm_groups}, got widths={widths!r}. Change "
                "the widths or norm_groups so that each width divides evenly."
            )
    factor = 2 ** (len(widths) - 1)
    height, image_width = image_shape[:2]
    if height % factor or image_width % factor:
        raise ValueError(
            f"Image height and width {(height, image_width)} must be divisible by "
            f"2**(len(widths) - 1) = {factor}, because the U-Net halves them "
            f"{len(widths) - 1} times. Resize/pad the images or use fewer "
            "widths."
        )
    if not isinstance(num_res_blocks, int) or num_res_blocks < 1:
        raise ValueError(
            f"`num_res_blocks` must be a positive integer, got "
            f"{num_res_blocks!r}."
        )
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"`dropout` must be in [0, 1), got {dropout!r}.")
    resolutions = [height // 2**level for level in range(len(widths))]
    unknown = [r for r in attention_resolutions if r not in resolutions]
    if unknown:
        raise ValueError(
            f"`attention_resolutions` {tuple(attention_resolutions)!r} contains "
            f"{unknown!r}, which matches no level of this U-Net. The valid "
            f"resolutions (feature-map heights) are {resolutions!r}."
        )
    if num_classes is not None and (
        not isinstance(num_classes, int) or num_classes < 1
    ):
        raise ValueError(
            f"`num_classes` must be None or a positive integer, got "
            f"{num_classes!r}."
        )
    if time_embedding_dim is not None and (
        not isinstance(time_embedding_dim, int) or time_embedding_dim < 1
    ):
        raise ValueError(
            f"`time_embedding_dim` must be None or a positive integer, got "
            f"{time_embedding_dim!r}."
        )


def _residual_block(x, temb, width, groups, dropout, data_format, name):
    """GroupNorm-swish-conv twice, with the time embedding added in between."""
    channels_first = data_format == "channels_first"
    axis = 1 if channels_first else -1
    if x.shape[axis] == width:
        residual = x
    else:
        residual = layers.Conv2D(width, 1, data_format=data_format, name=f"{name}_skip")(x)
    h = GroupNorm(groups, axis=axis, name=f"{name}_norm1")(x)
    h = layers.Activation("swish")(h)
    h = layers.Conv2D(width, 3, padding="same", data_format=data_format, name=f"{name}_conv1")(h)
    t = layers.Dense(width, name=f"{name}_time")(temb)
    t = layers.Reshape((width, 1, 1) if channels_first else (1, 1, width))(t)
    h = layers.Add()([h, t])
    h = GroupNorm(groups, axis=axis, name=f"{name}_norm2")(h)
    h = layers.Activation("swish")(h)
    if dropout > 0:
        # A seed (drawn as Keras draws a missing one) keeps torch's dropout on a SeedGenerator,
        # whose state a checkpoint restores; without one, torch uses its global generator.
        h = layers.Dropout(dropout, seed=random.randint(1, int(1e9)))(h)
    h = layers.Conv2D(width, 3, padding="same", data_format=data_format, name=f"{name}_conv2")(h)
    return layers.Add(name=f"{name}_out")([h, residual])


def build_unet(
    image_shape,
    widths=(64, 128, 256, 512),
    num_res_blocks=2,
    attention_resolutions=(16, 8),
    norm_groups=8,
    dropout=0.0,
    num_classes=None,
    time_embedding_dim=None,
    data_format=None,
    interval_input=False,
    name="unet",
):
    """Build a DDPM U-Net that predicts the noise in `x` at timestep `t`.

    Layout (keras.io DDPM example): a 3x3 conv stem; one level per entry of
    `widths`, each with `num_res_blocks` residual blocks (followed by
    self-attention where the level's resolution is in
    `attention_resolutions`) and a strided-conv downsample between levels; a
    res-attention-res middle block; a mirrored up path that concatenates the
    skips and upsamples with nearest-neighbour + conv; and a
    GroupNorm-swish-conv head. Unlike keras.io, the head's conv is
    zero-initialised, so the untrained network predicts 0 and early training
    is more stable.

    Args:
        image_shape: `(height, width, channels)` of the images.
        widths: Channel count of each resolution level, highest resolution
            first. Height and width must be divisible by
            `2 ** (len(widths) - 1)`.
        num_res_blocks: Residual blocks per level on the down path (the up
            path has one more per level, for the extra skip).
        attention_resolutions: Feature-map heights at which self-attention
            follows each residual block, e.g. `(16, 8)`. The middle block
            always has attention.
        norm_groups: Groups of every GroupNormalization; must divide every
            width.
        dropout: Dropout rate inside residual blocks, in `[0, 1)`.
        num_classes: If an int, the model takes a third input `labels` with
            values in `[0, num_classes]`; `num_classes` itself is the null
            label for classifier-free guidance.
        time_embedding_dim: Width of the time-embedding MLP; defaults to
            `4 * widths[0]`.
        data_format: The layout of the feature maps inside the network,
            `"channels_last"` or `"channels_first"`; `None` takes
            `keras.config.image_data_format()`. Inputs and outputs are
            channels-last either way, and the weights are the same, so
            the math does not change. `"channels_first"` samples about 1.1x
            faster on the torch backend (no layout copies around each
            convolution), is much slower on JAX, and runs on TensorFlow
            only when compiled with XLA (benchmarks/README.md).
        interval_input: If True, the model takes a third input `h` after
            `t`: the length `t - r` of the interval of a MeanFlow model's
            average velocity `u(z, r, t)`, embedded by its own sinusoidal
            embedding and MLP and added to the time embedding (Geng et al.
            2025 embed `t` and `t - r` separately).
        name: Name of the model.

    Returns:
        A functional `keras.Model` with inputs `[x, t]`, then `h` with
        `interval_input`, then `labels` with `num_classes`:
        `x` float32 `(batch, *image_shape)`, `t` and `h` float32 `(batch,)`,
        `labels` int32 `(batch,)`; and a float32 output shaped like `x`.

    Example:
    >>> model = build_unet((16, 16, 1), widths=(8, 16), norm_groups=4,
    ...                    attention_resolutions=(8,))
    >>> x = keras.random.normal((2, 16, 16, 1))
    >>> tuple(model([x, keras.ops.array([1.0, 500.0])]).shape)
    (2, 16, 16, 1)
    """
    image_shape = tuple(image_shape)
    widths = tuple(widths)
    attention_resolutions = tuple(attention_resolutions)
    _validate_args(
        image_shape,
        widths,
        num_res_blocks,
        attention_resolutions,
        norm_groups,
        dropout,
        num_classes,
        time_embedding_dim,
    )
    data_format = data_format or keras.config.image_data_format()
    if data_format not in ("channels_last", "channels_first"):
        raise ValueError(
            f"`data_format` must be 'channels_last', 'channels_first' or None, got {data_format!r}."
        )
    channels_first = data_format == "channels_first"
    channel_axis = 1 if channels_first else -1
    emb_dim = time_embedding_dim or 4 * widths[0]
    height = image_shape[0]

    x_in = keras.Input(image_shape, dtype="float32", name="x")
    t_in = keras.Input((), dtype="float32", name="t")
    inputs = [x_in, t_in]

    temb = SinusoidalEmbedding(widths[0], name="time_sinusoidal")(t_in)
    temb = layers.Dense(emb_dim, activation="swish", name="time_dense1")(temb)
    temb = layers.Dense(emb_dim, name="time_dense2")(temb)
    if interval_input:
        h_in = keras.Input((), dtype="float32", name="h")
        inputs.append(h_in)
        hemb = SinusoidalEmbedding(widths[0], name="interval_sinusoidal")(h_in)
        hemb = layers.Dense(emb_dim, activation="swish", name="interval_dense1")(hemb)
        # Zero-initialized: the interval starts out ignored, so a network initialized from a flow
        # model's (MeanFlow.from_flow) starts as that flow's velocity.
        hemb = layers.Dense(emb_dim, kernel_initializer="zeros", name="interval_dense2")(hemb)
        temb = layers.Add(name="time_interval_embedding")([temb, hemb])
    if num_classes is not None:
        labels_in = keras.Input((), dtype="int32", name="labels")
        inputs.append(labels_in)
        # One extra row: index `num_classes` is the unconditional label.
        lemb = layers.Embedding(num_classes + 1, emb_dim, name="label_embedding")(
            labels_in
        )
        temb = layers.Add(name="time_label_embedding")([temb, lemb])
    # Every residual block starts its time projection with swish; apply it
    # once here instead of in each block.
    temb = layers.Activation("swish", name="time_swish")(temb)

    def block(x, width, name):
        return _residual_block(x, temb, width, norm_groups, dropout, data_format, name)

    def attention(x, name):
        return SpatialSelfAttention(groups=norm_groups, data_format=data_format, name=name)(x)

    def conv(width, name, **kwargs):
        return layers.Conv2D(width, 3, padding="same", data_format=data_format, name=name, **kwargs)

    x = layers.Permute((3, 1, 2), name="to_channels_first")(x_in) if channels_first else x_in
    x = conv(widths[0], "stem")(x)
    skips = [x]
    for level, width in enumerate(widths):
        use_attention = height // 2**level in attention_resolutions
        for i in range(num_res_blocks):
            x = block(x, width, f"down{level}_res{i}")
            if use_attention:
                x = attention(x, f"down{level}_attn{i}")
            skips.append(x)
        if level < len(widths) - 1:
            x = conv(width, f"down{level}_downsample", strides=2)(x)
            skips.append(x)

    x = block(x, widths[-1], "mid_res0")
    x = attention(x, "mid_attn")
    x = block(x, widths[-1], "mid_res1")

    for level in reversed(range(len(widths))):
        width = widths[level]
        use_attention = height // 2**level in attention_resolutions
        for i in range(num_res_blocks + 1):
            x = layers.Concatenate(axis=channel_axis)([x, skips.pop()])
            x = block(x, width, f"up{level}_res{i}")
            if use_attention:
                x = attention(x, f"up{level}_attn{i}")
        if level > 0:
            x = layers.UpSampling2D(2, data_format=data_format, interpolation="nearest")(x)
            x = conv(width, f"up{level}_upsample")(x)

    x = GroupNorm(norm_groups, axis=channel_axis, name="out_norm")(x)
    x = layers.Activation("swish")(x)
    # float32 keeps the output float32 under a mixed-precision policy.
    outputs = conv(image_shape[-1], "out_conv", kernel_initializer="zeros", dtype="float32")(x)
    if channels_first:
        outputs = layers.Permute((2, 3, 1), name="to_channels_last")(outputs)
    return keras.Model(inputs, outputs, name=name)


def unet_from_preset(name, /, **overrides):
    """Build a U-Net from a named configuration in `UNET_PRESETS`.

    Args:
        name: A key of `UNET_PRESETS`: `"ddpm_keras_io"` (64x64 RGB, the
            keras.io DDPM network) or `"mnist_small"` (32x32 grayscale, fast
            on CPU); or of `DDIM_UNET_PRESETS`: `"ddim_keras_io"` (the
            keras.io DDIM network, built by `build_ddim_unet`).
        **overrides: `build_unet` arguments replacing the preset's values,
            e.g. `num_classes=10` (`name=` names the model, since the
            preset name is positional-only).

    Returns:
        The functional `keras.Model` returned by `build_unet` (or
        `build_ddim_unet`).

    Example:
    >>> model = unet_from_preset("mnist_small", num_classes=10)
    >>> [i.name for i in model.inputs]
    ['x', 't', 'labels']
    """
    if name in DDIM_UNET_PRESETS:
        return build_ddim_unet(**{**DDIM_UNET_PRESETS[name], **overrides})
    if name not in UNET_PRESETS:
        raise ValueError(
            f"Unknown U-Net preset {name!r}. Known presets: "
            f"{sorted({**UNET_PRESETS, **DDIM_UNET_PRESETS})}."
        )
    return build_unet(**{**UNET_PRESETS[name], **overrides})
