"""LoRA adapters on SD3's MMDiT: enable, save, load, merge, count.

KerasHub's `Backbone.enable_lora` targets layers named `query`/`value` by
default, which exist only in the CLIP encoders. Here LoRA goes on the MMDiT
(`backbone.diffuser`), on layers inside its transformer blocks
(`joint_block_*`) only, as diffusers does; the timestep and pooled-text
embedding MLPs (also named `dense1`/`dense2`) are never targets.

Targets are Keras `Dense` layers: the attention projections
(`attention_qkv`, `attention_proj`, and `attention_qkv2`/`attention_proj2`
in MMDiT-X's dual attention blocks), and with `include_mlp` the block MLPs
(`dense1`, `dense2`). `Dense.enable_lora(rank, lora_alpha)` adds
`lora_kernel_a` `(in, rank)` and `lora_kernel_b` `(rank, out)` and computes
`x @ (W + alpha / rank * A @ B)`. Two layouts:

- `"fused"` (default): one rank-r adapter on each target; on the fused
  `attention_qkv` it is shared by q, k and v.
- `"diffusers"`: as diffusers' SD3 LoRA (`to_q`, `to_k`, `to_v`, `to_out`):
  separate rank-r q, k and v adapters on the fused `attention_qkv`,
  realised exactly as one Keras adapter of rank 3r (alpha 3 * alpha, so the
  scale stays alpha / r) whose `lora_kernel_b` is block diagonal: its
  `BlockDiagonal` constraint, which Keras' optimizers apply after every
  update, keeps the off-diagonal blocks at zero. Other targets get one
  adapter each, as in `"fused"`. Without a qkv target both layouts coincide
  (and are recorded as `"fused"`). One difference from diffusers: the
  off-block entries still receive gradients (then reset to zero), so they
  count in `global_clipnorm`'s norm.

A starts as PEFT's (`kaiming_uniform_(a=sqrt(5))`: uniform in
`+-1 / sqrt(in)`), drawn independently for every layer from one
`keras.random.SeedGenerator(seed)`; B starts at zero, so the model is
unchanged at first. Every other MMDiT variable is frozen, so only the
adapters train and the base weights stay bit-identical.

Adapters are saved alone, in a small `.npz` file (`save_lora`), keyed by each
layer's path inside the MMDiT, with the rank, alpha, layout and target
names, and applied to a freshly loaded model with `load_lora`. `merge_lora`
folds them into the base kernels.

Example:
>>> enable_lora(model, rank=4, layout="diffusers", seed=0)  # doctest: +SKIP
>>> save_lora(model, "sd3.lora.npz")  # doctest: +SKIP
>>> load_lora(sd3.from_preset("tiny"), "sd3.lora.npz")  # doctest: +SKIP
"""

import json
import math

import keras
import numpy as np
from keras import ops

from keras_diffusion.files import write_npz

LAYOUTS = ("fused", "diffusers")
QKV_TARGETS = ("attention_qkv", "attention_qkv2")
ATTENTION_TARGETS = ("attention_qkv", "attention_proj", "attention_qkv2", "attention_proj2")
MLP_TARGETS = ("dense1", "dense2")
_CONFIG_KEY = "__lora_config__"
_FORMAT = "keras_diffusion.sd3.lora/1"


@keras.saving.register_keras_serializable(package="keras_diffusion")
class BlockDiagonal(keras.constraints.Constraint):
    """Zeroes a 2D weight outside its `blocks` equal diagonal blocks.

    Args:
        blocks: the number of diagonal blocks; both dimensions must be
            divisible by it.

    Example:
    >>> BlockDiagonal(3)(keras.ops.ones((3, 6)))  # doctest: +SKIP
    [[1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1]]
    """

    def __init__(self, blocks):
        self.blocks = int(blocks)

    def __call__(self, w):
        w = ops.convert_to_tensor(w)
        rows, cols = w.shape
        row_block = ops.arange(rows) // (rows // self.blocks)
        col_block = ops.arange(cols) // (cols // self.blocks)
        on_block = ops.equal(ops.expand_dims(row_block, 1), ops.expand_dims(col_block, 0))
        return ops.where(on_block, w, ops.zeros_like(w))

    def get_config(self):
        return {"blocks": self.blocks}


def _diffuser(model):
    backbone = getattr(model, "backbone", model)
    return getattr(backbone, "diffuser", backbone)


def _block_layers(diffuser):
    """The layers inside the MMDiT's transformer blocks that can take LoRA.

    In `lora_layers`' order, so that `enable_lora` and `load_lora` list them alike.
    """
    inside = {id(layer) for block in diffuser.joint_blocks for layer in block._flatten_layers()}
    return [
        layer
        for layer in diffuser._flatten_layers(include_self=False)
        if id(layer) in inside and hasattr(layer, "enable_lora")
    ]


def _split(layer):
    """Whether `layer`'s adapter is three q/k/v adapters (diffusers layout)."""
    return isinstance(layer.lora_kernel_b.constraint, BlockDiagonal)


def _check(rank, alpha, layout):
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ValueError(f"`rank` must be a positive int, got {rank!r}.")
    if alpha is not None and not alpha > 0:
        raise ValueError(f"`alpha` must be positive, got {alpha!r}.")
    if layout not in LAYOUTS:
        raise ValueError(f"`layout` must be one of {LAYOUTS}, got {layout!r}.")


def _targets(diffuser, include_mlp, target_layer_names):
    names = target_layer_names
    if names is None:
        names = ATTENTION_TARGETS + (MLP_TARGETS if include_mlp else ())
    names = tuple(names)
    candidates = _block_layers(diffuser)
    targets = [layer for layer in candidates if layer.name in names]
    if not targets:
        found = sorted({layer.name for layer in candidates})
        raise ValueError(
            f"No layer in the MMDiT's blocks is named {list(names)}. Layers that take LoRA: {found}."
        )
    return targets


def _enable(diffuser, targets, rank, alpha, layout, seed):
    if lora_layers(diffuser):
        raise ValueError(
            "LoRA is already enabled on this MMDiT. Load a fresh model to start new "
            "adapters, or keep training the existing ones."
        )
    for variable in diffuser.weights:
        variable.trainable = False
    alpha = rank if alpha is None else alpha
    # PEFT's kaiming_uniform_(a=sqrt(5)): U(+-1/sqrt(fan_in)); one generator,
    # so every layer gets its own draw.
    initializer = keras.initializers.VarianceScaling(
        scale=1 / 3, mode="fan_in", distribution="uniform", seed=keras.random.SeedGenerator(seed)
    )
    for layer in targets:
        if layout == "diffusers" and layer.name in QKV_TARGETS:
            layer.enable_lora(3 * rank, lora_alpha=3 * alpha, a_initializer=initializer)
            layer.lora_kernel_b.constraint = BlockDiagonal(3)
        else:
            layer.enable_lora(rank, lora_alpha=alpha, a_initializer=initializer)
    return targets


def enable_lora(
    model, rank, alpha=None, *, layout="fused", include_mlp=False, target_layer_names=None, seed=None
):
    """Adds LoRA adapters to the MMDiT's blocks and freezes its other weights.

    Args:
        model: a `keras_diffusion.sd3.StableDiffusion3`, its backbone or
            its MMDiT.
        rank: the adapters' rank, a positive int (per q, k and v adapter in
            the `"diffusers"` layout).
        alpha: LoRA's alpha; the update is scaled by `alpha / rank`.
            Defaults to `rank` (scale 1).
        layout: `"fused"` (one adapter per layer) or `"diffusers"`
            (separate q, k and v adapters on `attention_qkv`); see the
            module docstring.
        include_mlp: also adapt the block MLPs' `dense1`/`dense2`.
        target_layer_names: names of block layers to adapt instead of the
            defaults (`ATTENTION_TARGETS`, plus `MLP_TARGETS` with
            `include_mlp`).
        seed: int seed (or None) for the `lora_kernel_a` draws;
            `lora_kernel_b` starts at zero.

    Returns:
        The list of adapted layers.

    Raises:
        ValueError: a bad rank, alpha or layout, LoRA already enabled, or no
            block layer with a target name.

    Example:
    >>> layers = enable_lora(model, rank=4, alpha=4, layout="diffusers")  # doctest: +SKIP
    >>> parameter_report(model)["lora"]  # doctest: +SKIP
    """
    _check(rank, alpha, layout)
    diffuser = _diffuser(model)
    return _enable(diffuser, _targets(diffuser, include_mlp, target_layer_names), rank, alpha, layout, seed)


def lora_layers(model):
    """The MMDiT layers that carry LoRA adapters, in a fixed order."""
    diffuser = _diffuser(model)
    return [
        layer
        for layer in diffuser._flatten_layers(include_self=False)
        if getattr(layer, "lora_enabled", False)
    ]


def lora_variables(model):
    """All `lora_kernel_a`/`lora_kernel_b` variables of the MMDiT."""
    return [v for layer in lora_layers(model) for v in (layer.lora_kernel_a, layer.lora_kernel_b)]


def _config(layers):
    """The rank, alpha, layout and target names of a model's adapters."""
    first = layers[0]
    parts = 3 if _split(first) else 1
    return {
        "rank": int(first.lora_rank) // parts,
        "alpha": float(first.lora_alpha) / parts,
        "layout": "diffusers" if any(_split(layer) for layer in layers) else "fused",
        "target_layer_names": sorted({layer.name for layer in layers}),
    }


def _key(layer):
    return layer.path


def save_lora(model, path):
    """Writes the LoRA adapters alone to an `.npz` file (atomically).

    The file holds `lora_kernel_a`/`lora_kernel_b` of each adapted layer,
    keyed by the layer's path in the MMDiT, plus the rank, alpha, layout and
    target names.

    Args:
        model: a `StableDiffusion3`, backbone or MMDiT with LoRA enabled.
        path: the file to write; its folder must exist.

    Returns:
        `path`.

    Example:
    >>> save_lora(model, "out/sd3.lora.npz")  # doctest: +SKIP
    """
    layers = lora_layers(model)
    if not layers:
        raise ValueError("This model has no LoRA adapters; call enable_lora(model, rank) first.")
    arrays = {}
    for layer in layers:
        arrays[f"{_key(layer)}/lora_kernel_a"] = ops.convert_to_numpy(layer.lora_kernel_a)
        arrays[f"{_key(layer)}/lora_kernel_b"] = ops.convert_to_numpy(layer.lora_kernel_b)
    arrays[_CONFIG_KEY] = np.array(json.dumps({"format": _FORMAT, **_config(layers)}))
    return write_npz(path, arrays)


def _check_same_adapters(config, layers, path):
    current = _config(layers)
    for name in ("rank", "alpha", "layout", "target_layer_names"):
        saved, model_value = config[name], current[name]
        same = math.isclose(saved, model_value) if name == "alpha" else saved == model_value
        if not same:
            raise ValueError(
                f"The LoRA file {path!r} has {name} {saved!r} but this model's adapters have "
                f"{name} {model_value!r}. Load the file into a fresh model (without LoRA): "
                "load_lora enables adapters matching the file."
            )


def load_lora(model, path):
    """Applies adapters saved by `save_lora` to a model (enabling LoRA if needed).

    On a model without LoRA the adapters are enabled on exactly the saved
    layers, with the file's rank, alpha and layout (files without a layout
    are `"fused"`).

    Args:
        model: a freshly loaded `StableDiffusion3` (or backbone, or MMDiT) of
            the same architecture, or one whose LoRA has the file's rank,
            alpha, layout and targets.
        path: the `.npz` file.

    Returns:
        The list of adapted layers.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a LoRA file of this package, adapters in the model
            that differ from the file's, or layers/shapes that do not match
            the model.

    Example:
    >>> model = keras_diffusion.sd3.from_preset("tiny")  # doctest: +SKIP
    >>> load_lora(model, "out/sd3.lora.npz")  # doctest: +SKIP
    """
    with np.load(path) as file:
        arrays = {name: file[name] for name in file.files}
    if _CONFIG_KEY not in arrays:
        raise ValueError(f"{path!r} is not a LoRA file written by save_lora (no config entry).")
    config = json.loads(str(arrays.pop(_CONFIG_KEY)))
    if config.get("format") != _FORMAT:
        raise ValueError(f"{path!r} has format {config.get('format')!r}; expected {_FORMAT!r}.")
    config.setdefault("layout", "fused")
    _check(config["rank"], config["alpha"], config["layout"])
    diffuser = _diffuser(model)
    saved = {name.rsplit("/", 1)[0] for name in arrays}
    layers = lora_layers(diffuser)
    if layers:
        _check_same_adapters(config, layers, path)
    else:
        candidates = [
            layer
            for layer in diffuser._flatten_layers(include_self=False)
            if _key(layer) in saved and hasattr(layer, "enable_lora")
        ]
        if candidates:
            layers = _enable(diffuser, candidates, config["rank"], config["alpha"], config["layout"], None)
    by_key = {_key(layer): layer for layer in layers}
    if saved != set(by_key):
        missing, extra = sorted(saved - set(by_key)), sorted(set(by_key) - saved)
        raise ValueError(
            f"The LoRA file {path!r} does not match this model's MMDiT: layers only in the "
            f"file: {missing[:5]}, layers only in the model: {extra[:5]}. Load it into the "
            "model it was trained on (same preset)."
        )
    for key, layer in by_key.items():
        for name in ("lora_kernel_a", "lora_kernel_b"):
            value = arrays[f"{key}/{name}"]
            variable = getattr(layer, name)
            if tuple(value.shape) != tuple(variable.shape):
                raise ValueError(
                    f"{key}/{name} has shape {value.shape} in {path!r} but "
                    f"{tuple(variable.shape)} in the model: the file was trained on another "
                    "architecture. Load it into the model it was trained on (same preset)."
                )
            variable.assign(value)
    return layers


def merge_lora(model):
    """Folds the adapters into the base kernels: `W <- W + alpha / rank * A @ B`.

    Afterwards the adapters are zero, so the model computes the same
    function, and `save_to_preset` writes the merged kernels (Keras' `Dense`
    always saves the merged kernel). Both layouts merge the same way: the
    diffusers layout's block-diagonal B adds q, k and v updates to their
    own columns.

    Args:
        model: a `StableDiffusion3`, backbone or MMDiT with LoRA enabled.

    Returns:
        The number of merged layers.

    Example:
    >>> merge_lora(model)  # doctest: +SKIP
    """
    layers = lora_layers(model)
    if not layers:
        raise ValueError("This model has no LoRA adapters to merge.")
    for layer in layers:
        # Dense saves the merged kernel; loading it while LoRA is enabled
        # assigns that kernel and zeroes the adapters.
        store = {}
        layer.save_own_variables(store)
        layer.load_own_variables(store)
    return len(layers)


def _adapter_size(fan_in, fan_out, rank, split):
    """Parameters of a layer's adapters: three (q, k, v) if `split`, else one."""
    if split:
        return 3 * rank * (fan_in + fan_out // 3)
    return rank * (fan_in + fan_out)


def parameter_report(model):
    """Counts the LoRA parameters against the whole model.

    `"lora"` is the effective count: in the `"diffusers"` layout only the
    on-block entries of each block-diagonal `lora_kernel_b` count (the
    others stay zero).

    Returns:
        dict with `"lora"` (adapter parameters), `"diffuser"` (MMDiT base
        parameters), `"total"` (the whole SD3 without adapters) and
        `"fraction"` (`lora / total`).

    Example:
    >>> parameter_report(model)  # doctest: +SKIP
    {'lora': 2816, 'diffuser': 244608, 'total': 611107, 'fraction': 0.004608}
    """
    backbone = getattr(model, "backbone", model)
    layers = lora_layers(model)
    stored = int(sum(np.prod(v.shape) for v in lora_variables(model)))
    lora = 0
    for layer in layers:
        split = _split(layer)
        rank = layer.lora_rank // 3 if split else layer.lora_rank
        lora += _adapter_size(layer.lora_kernel_a.shape[0], layer.lora_kernel_b.shape[1], rank, split)
    total = backbone.count_params() - stored
    diffuser = _diffuser(model).count_params() - stored
    return {"lora": lora, "diffuser": diffuser, "total": total, "fraction": round(lora / total, 6)}


def lora_parameter_counts(model, rank, *, include_mlp=False):
    """Adapter parameters each layout would add, from layer shapes alone.

    Enables nothing: counts `enable_lora(model, rank, layout=...,
    include_mlp=include_mlp)` would give for both layouts.

    Args:
        model: a `StableDiffusion3`, its backbone or its MMDiT.
        rank: the adapters' rank.
        include_mlp: count the block MLPs too.

    Returns:
        dict `{"fused": int, "diffusers": int}`.

    Example:
    >>> lora_parameter_counts(sd3.build_tiny(32), 4)  # doctest: +SKIP
    {'fused': 2816, 'diffusers': 3840}
    """
    _check(rank, None, "fused")
    targets = _targets(_diffuser(model), include_mlp, None)
    return {
        layout: sum(
            _adapter_size(*layer.kernel.shape, rank, layout == "diffusers" and layer.name in QKV_TARGETS)
            for layer in targets
        )
        for layout in LAYOUTS
    }
