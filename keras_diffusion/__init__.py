"""keras-diffusion: backend-agnostic diffusion models for Keras 3.

The public names load lazily, so that `python -m keras_diffusion --backend jax`
can choose the Keras backend before Keras is imported.

Example:
>>> import keras_diffusion as kd
>>> net = kd.networks.unet_from_preset("mnist_small")  # doctest: +SKIP
>>> model = kd.DDPM(net)  # doctest: +SKIP
"""

import importlib

__version__ = "0.1.0"

_LAZY = {
    "DDPM": "keras_diffusion.models",
    "DiffusionModel": "keras_diffusion.models",
    "DiscreteVPSchedule": "keras_diffusion.processes",
}
_SUBMODULES = ("callbacks", "datasets", "images", "models", "networks", "processes", "samplers")


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"keras_diffusion.{name}")
    raise AttributeError(f"module 'keras_diffusion' has no attribute {name!r}")


__all__ = sorted(_LAZY) + list(_SUBMODULES)
