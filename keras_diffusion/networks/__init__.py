"""Noise-prediction networks and their building blocks."""

from keras_diffusion.networks.attention import SpatialSelfAttention
from keras_diffusion.networks.embeddings import SinusoidalEmbedding
from keras_diffusion.networks.unet import UNET_PRESETS, build_unet, unet_from_preset

__all__ = [
    "build_unet",
    "unet_from_preset",
    "UNET_PRESETS",
    "SinusoidalEmbedding",
    "SpatialSelfAttention",
]
