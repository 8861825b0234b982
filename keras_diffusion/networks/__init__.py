"""Noise-prediction networks and their building blocks."""

from keras_diffusion.networks.attention import SpatialSelfAttention
from keras_diffusion.networks.ddim_unet import DDIM_UNET_PRESETS, NoiseVarianceEmbedding, build_ddim_unet
from keras_diffusion.networks.embeddings import SinusoidalEmbedding
from keras_diffusion.networks.unet import UNET_PRESETS, build_unet, unet_from_preset

__all__ = [
    "build_ddim_unet",
    "build_unet",
    "unet_from_preset",
    "UNET_PRESETS",
    "DDIM_UNET_PRESETS",
    "NoiseVarianceEmbedding",
    "SinusoidalEmbedding",
    "SpatialSelfAttention",
]
