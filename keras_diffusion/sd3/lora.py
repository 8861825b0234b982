"""LoRA adapters on SD3's MMDiT: enable, save, load, merge, count.

KerasHub's `Backbone.enable_lora` targets layers named `query`/`value` by
default, which exist only in the CLIP encoders. Here LoRA goes on the MMDiT
(`backbone.diffuser`): its attention projections (`attention_qkv`,
`attention_proj`, and `attention_qkv2`/`attention_proj2` in MMDiT-X's dual
attention blocks), and optionally its MLPs (`dense1`, `dense2`). Each target
is a Keras `Dense` layer; `Dense.enable_lora(rank, lora_alpha)` adds
`lora_kernel_a` `(in, rank)` and `lora_kernel_b` `(rank, out)` (zeros, so the
model is unchanged at first) and computes
`x @ (W + alpha / rank * A @ B)`. Every other MMDiT variable is frozen, so
only the adapters train and the base weights stay bit-identical.

Adapters are saved alone, in a small `.npz` file (`save_lora`), keyed by each
layer's path inside the MMDiT, and applied to a freshly loaded model with
`load_lora`. `merge_lora` folds them into the base kernels.
"""

import json

import keras
import numpy as np

from keras_diffusion.files import write_npz

ATTENTION_TARGETS = ("attention_qkv", "attention_proj", "attention_qkv2", "attention_proj2")
MLP_TARGETS = ("dense1", "dense2")
_CONFIG_KEY = "__lora_config__"
_FORMAT = "keras_diffusion.sd3.lora/1"


def _backbone(model):
    return getattr(model, "backbone", model)


def enable_lora(model, rank, alpha=None, *, include_mlp=False, target_layer_names=None, seed=None):
    """Adds LoRA adapters to the MMDiT and freezes its other weights.

    Args:
        model: a `keras_diffusion.sd3.StableDiffusion3` or its backbone.
        rank: the adapters' rank, a positive int.
        alpha: LoRA's alpha; the update is scaled by `alpha / rank`.
            Defaults to `rank` (scale 1).
        include_mlp: also adapt the MLP layers `dense1`/`dense2`.
        target_layer_names: layer names to adapt instead of the defaults
            (`ATTENTION_TARGETS`, plus `MLP_TARGETS` with `include_mlp`).
        seed: int seed for the `lora_kernel_a` initialiser (He uniform);
            `lora_kernel_b` starts at zero.

    Returns:
        The list of adapted layers.

    Raises:
        ValueError: a bad rank or alpha, LoRA already enabled, or no MMDiT
            layer with a target name.

    Example:
    >>> layers = enable_lora(model, rank=4, alpha=4)  # doctest: +SKIP
    >>> parameter_report(model)["trainable"]  # doctest: +SKIP
    """
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ValueError(f"`rank` must be a positive int, got {rank!r}.")
    if alpha is not None and not alpha > 0:
        raise ValueError(f"`alpha` must be positive, got {alpha!r}.")
    diffuser = _backbone(model).diffuser
    if lora_layers(model):
        raise ValueError(
            "LoRA is already enabled on this MMDiT. Load a fresh model to start new "
            "adapters, or keep training the existing ones."
        )
    names = target_layer_names
    if names is None:
        names = ATTENTION_TARGETS + (MLP_TARGETS if include_mlp else ())
    names = tuple(names)
    targets = [
        layer
        for layer in diffuser._flatten_layers(include_self=False)
        if layer.name in names and hasattr(layer, "enable_lora")
    ]
    if not targets:
        found = sorted({layer.name for layer in diffuser._flatten_layers() if hasattr(layer, "enable_lora")})
        raise ValueError(
            f"No MMDiT layer is named {list(names)}. Layers that take LoRA: {found}."
        )
    for variable in diffuser.weights:
        variable.trainable = False
    initializer = keras.initializers.HeUniform(seed=seed)
    for layer in targets:
        layer.enable_lora(rank, lora_alpha=alpha, a_initializer=initializer)
    return targets


def lora_layers(model):
    """The MMDiT layers that carry LoRA adapters, in a fixed order."""
    diffuser = _backbone(model).diffuser
    return [
        layer
        for layer in diffuser._flatten_layers(include_self=False)
        if getattr(layer, "lora_enabled", False)
    ]


def lora_variables(model):
    """All `lora_kernel_a`/`lora_kernel_b` variables of the MMDiT."""
    return [v for layer in lora_layers(model) for v in (layer.lora_kernel_a, layer.lora_kernel_b)]


def _key(layer):
    return layer.path


def save_lora(model, path):
    """Writes the LoRA adapters alone to an `.npz` file (atomically).

    The file holds `lora_kernel_a`/`lora_kernel_b` of each adapted layer,
    keyed by the layer's path in the MMDiT, plus the rank, alpha and
    target names.

    Args:
        model: a `StableDiffusion3` or backbone with LoRA enabled.
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
        arrays[f"{_key(layer)}/lora_kernel_a"] = keras.ops.convert_to_numpy(layer.lora_kernel_a)
        arrays[f"{_key(layer)}/lora_kernel_b"] = keras.ops.convert_to_numpy(layer.lora_kernel_b)
    config = {
        "format": _FORMAT,
        "rank": int(layers[0].lora_rank),
        "alpha": float(layers[0].lora_alpha),
        "target_layer_names": sorted({layer.name for layer in layers}),
    }
    arrays[_CONFIG_KEY] = np.array(json.dumps(config))
    return write_npz(path, arrays)


def load_lora(model, path):
    """Applies adapters saved by `save_lora` to a model (enabling LoRA if needed).

    Args:
        model: a freshly loaded `StableDiffusion3` (or backbone) of the same
            architecture, or one whose LoRA has the file's rank and targets.
        path: the `.npz` file.

    Returns:
        The list of adapted layers.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a LoRA file of this package, or layers/shapes that
            do not match the model.

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
    layers = lora_layers(model)
    if not layers:
        layers = enable_lora(
            model, config["rank"], config["alpha"], target_layer_names=config["target_layer_names"]
        )
    by_key = {_key(layer): layer for layer in layers}
    saved = {name.rsplit("/", 1)[0] for name in arrays}
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
                    f"{tuple(variable.shape)} in the model (rank {config['rank']} vs "
                    f"{layer.lora_rank}?)."
                )
            variable.assign(value)
    return layers


def merge_lora(model):
    """Folds the adapters into the base kernels: `W <- W + alpha / rank * A @ B`.

    Afterwards the adapters are zero, so the model computes the same
    function, and `save_to_preset` writes an ordinary model (Keras' `Dense`
    always saves the merged kernel).

    Args:
        model: a `StableDiffusion3` or backbone with LoRA enabled.

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


def parameter_report(model):
    """Counts trainable LoRA parameters against the whole model.

    Returns:
        dict with `"lora"` (adapter parameters), `"diffuser"` (MMDiT base
        parameters), `"total"` (the whole SD3 without adapters) and
        `"fraction"` (`lora / total`).

    Example:
    >>> parameter_report(model)  # doctest: +SKIP
    {'lora': 12288, 'diffuser': 244608, 'total': 610979, 'fraction': 0.0201}
    """
    backbone = _backbone(model)
    lora = int(sum(np.prod(v.shape) for v in lora_variables(model)))
    total = backbone.count_params() - lora
    diffuser = backbone.diffuser.count_params() - lora
    return {"lora": lora, "diffuser": diffuser, "total": total, "fraction": round(lora / total, 6)}
