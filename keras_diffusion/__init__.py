"""keras-diffusion: backend-agnostic diffusion models for Keras 3.

Importing the package registers every serializable class, so
`keras.saving.load_model("m.keras")` works after `import keras_diffusion`;
`keras_diffusion.load_model("m.keras")` also says what is wrong with a bad file.
Choose the backend first (`KERAS_BACKEND=jax|tensorflow|torch`); the CLI's
`--backend` flag does it for you.

Example:
>>> import keras_diffusion as kd
>>> net = kd.networks.unet_from_preset("mnist_small")  # doctest: +SKIP
>>> model = kd.DDPM(net, kd.DiscreteVPSchedule("cosine"))  # doctest: +SKIP
"""

from keras_diffusion import callbacks
from keras_diffusion import datasets
from keras_diffusion import distill
from keras_diffusion import distribution
from keras_diffusion import images
from keras_diffusion import likelihood
from keras_diffusion import metrics
from keras_diffusion import models
from keras_diffusion import networks
from keras_diffusion import optimizers
from keras_diffusion import parameterizations
from keras_diffusion import processes
from keras_diffusion import resume
from keras_diffusion import samplers
from keras_diffusion.distill import ConsistencyModel
from keras_diffusion.distill import ConsistencyProcess
from keras_diffusion.distill import MeanFlow
from keras_diffusion.distill import ProgressiveDistillation
from keras_diffusion.files import load_model
from keras_diffusion.models import DDIM
from keras_diffusion.models import DDPM
from keras_diffusion.models import EDM
from keras_diffusion.models import DiffusionModel
from keras_diffusion.models import FlowMatching
from keras_diffusion.models import ScoreModel
from keras_diffusion.processes import ContinuousCosineSchedule
from keras_diffusion.processes import DiscreteVPSchedule
from keras_diffusion.processes import EDMProcess
from keras_diffusion.processes import RectifiedFlow
from keras_diffusion.processes import VESDE
from keras_diffusion.processes import VPSDE
from keras_diffusion.processes import subVPSDE

__version__ = "0.1.0"

__all__ = [
    "ConsistencyModel",
    "ConsistencyProcess",
    "ContinuousCosineSchedule",
    "DDIM",
    "DDPM",
    "DiffusionModel",
    "DiscreteVPSchedule",
    "EDM",
    "EDMProcess",
    "FlowMatching",
    "MeanFlow",
    "ProgressiveDistillation",
    "RectifiedFlow",
    "ScoreModel",
    "VESDE",
    "VPSDE",
    "callbacks",
    "datasets",
    "distill",
    "images",
    "likelihood",
    "load_model",
    "metrics",
    "models",
    "networks",
    "parameterizations",
    "processes",
    "resume",
    "samplers",
    "subVPSDE",
]
