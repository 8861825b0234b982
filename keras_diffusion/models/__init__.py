"""Diffusion models as `keras.Model` subclasses."""

from keras_diffusion.models.base import DiffusionModel
from keras_diffusion.models.ddim import DDIM
from keras_diffusion.models.ddpm import DDPM
from keras_diffusion.models.edm import EDM
from keras_diffusion.models.flow import FlowMatching
from keras_diffusion.models.score import ScoreModel

__all__ = ["DDIM", "DDPM", "DiffusionModel", "EDM", "FlowMatching", "ScoreModel"]
