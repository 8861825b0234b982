"""A diffusers `UNet2DModel` laid out like a `keras_diffusion` U-Net.

`build_unet`'s layout (per level: `num_res_blocks` residual blocks, each
followed by single-head self-attention at the chosen resolutions, a strided
3x3 conv between levels; res-attention-res middle; an up path with one extra
block per level, nearest upsampling + conv; GroupNorm-swish-conv head; a
time MLP of width `4 * widths[0]`) is the layout of diffusers' `UNet2DModel`
with `DownBlock2D`/`AttnDownBlock2D` and `UpBlock2D`/`AttnUpBlock2D`. So the
same config gives the same widths, block counts and attention placement,
and parameter counts within a fraction of a percent (the benchmark reports
both).

diffusers is a benchmark- and test-only dependency; this module imports it
only inside the function.
"""


def diffusers_unet_kwargs(network_config):
    """Translates `build_unet` arguments into `UNet2DModel` arguments.

    Args:
        network_config: a dict of `keras_diffusion.networks.build_unet`
            arguments (`image_shape`, `widths`, `num_res_blocks`,
            `attention_resolutions`, `norm_groups`).

    Returns:
        A dict of `diffusers.UNet2DModel` keyword arguments.

    Example:
    >>> kwargs = diffusers_unet_kwargs({"image_shape": (16, 16, 1),
    ...     "widths": (8, 16), "num_res_blocks": 1,
    ...     "attention_resolutions": (8,), "norm_groups": 4})
    >>> kwargs["down_block_types"], kwargs["up_block_types"]
    (('DownBlock2D', 'AttnDownBlock2D'), ('AttnUpBlock2D', 'UpBlock2D'))
    """
    unsupported = set(network_config) - {
        "image_shape", "widths", "num_res_blocks", "attention_resolutions", "norm_groups",
    }
    if unsupported:
        raise ValueError(
            f"No diffusers equivalent for the network arguments {sorted(unsupported)}. "
            "Benchmark an unconditional U-Net without dropout or a custom time width."
        )
    height, _, channels = network_config["image_shape"]
    widths = tuple(network_config["widths"])
    attention = set(network_config.get("attention_resolutions", (16, 8)))
    down = tuple(
        "AttnDownBlock2D" if height // 2**level in attention else "DownBlock2D"
        for level in range(len(widths))
    )
    up = tuple(name.replace("Down", "Up") for name in reversed(down))
    return {
        "sample_size": height,
        "in_channels": channels,
        "out_channels": channels,
        "block_out_channels": widths,
        "layers_per_block": network_config.get("num_res_blocks", 2),
        "down_block_types": down,
        "up_block_types": up,
        "norm_num_groups": network_config.get("norm_groups", 8),
        # None gives one head of the block's full width, as SpatialSelfAttention(num_heads=1).
        "attention_head_dim": None,
        # build_unet's GroupNormalization epsilon (Keras' default).
        "norm_eps": 1e-3,
    }


def build_diffusers_unet(network_config):
    """Builds the matched `diffusers.UNet2DModel` (PyTorch).

    Args:
        network_config: `build_unet` arguments, see `diffusers_unet_kwargs`.

    Returns:
        A `diffusers.UNet2DModel`.
    """
    from diffusers import UNet2DModel

    return UNet2DModel(**diffusers_unet_kwargs(network_config))


def attention_matmul_flops(network_config):
    """FLOPs of the attention matmuls (`q @ k^T` and `weights @ v`) for one image.

    `torch.utils.flop_counter` does not count PyTorch's CPU
    `scaled_dot_product_attention` kernel, so the benchmark adds this
    count, from the layout, to the counter's total for diffusers.

    Args:
        network_config: `build_unet` arguments, see `diffusers_unet_kwargs`.

    Returns:
        An int: `2 * 2 * tokens**2 * width` summed over the attention layers.
    """
    height = network_config["image_shape"][0]
    widths = tuple(network_config["widths"])
    blocks = network_config.get("num_res_blocks", 2)
    attention = set(network_config.get("attention_resolutions", (16, 8)))
    total = 0
    for level, width in enumerate(widths):
        size = height // 2**level
        if size in attention:
            # Down path: one per res block; up path: one more per level.
            total += (2 * blocks + 1) * 4 * size**4 * width
    lowest = height // 2 ** (len(widths) - 1)
    return total + 4 * lowest**4 * widths[-1]  # the middle block

