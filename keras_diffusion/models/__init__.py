"""Diffusion models as `keras.Model` subclasses."""

from keras_diffusion.models.base import DiffusionModel
from keras_diffusion.models.ddpm import DDPM

__all__ = ["DDPM", "DiffusionModel"]
