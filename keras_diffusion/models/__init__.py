"""Diffusion models as `keras.Model` subclasses."""

from keras_diffusion.models.base import DiffusionModel
from keras_diffusion.models.ddim import DDIM
from keras_diffusion.models.ddpm import DDPM

__all__ = ["DDIM", "DDPM", "DiffusionModel"]
