"""Sample-quality metrics: KID, FID and Inception Score, with feature extractors.

The metrics are `keras.metrics.Metric`s. They take images as floats in
[0, 1] with shape (N, H, W, C): `update_state(real_images,
generated_images)` (KID, FID) or `update_state(generated_images)` (IS),
then `result()` and `reset_state()`. Each takes a `feature_extractor`:
"inception" (InceptionV3 with ImageNet weights), "mnist" (a classifier
whose weights ship with this package, for offline MNIST evaluation), your
own `keras.Model`, or None for inputs that already are features.

Example:
>>> from keras_diffusion.metrics import FID, KID, mnist_held_out
>>> real, _ = mnist_held_out(num_images=200)
>>> kid = KID(feature_extractor="mnist")
>>> kid.update_state(real[:100], real[100:])
>>> float(kid.result()) < 0.05
True
"""

from keras_diffusion.metrics.features import FEATURE_EXTRACTORS
from keras_diffusion.metrics.features import MNIST_HELD_OUT_ACCURACY
from keras_diffusion.metrics.features import FeatureExtractor
from keras_diffusion.metrics.features import build_mnist_classifier
from keras_diffusion.metrics.features import get_feature_extractor
from keras_diffusion.metrics.features import inception_features
from keras_diffusion.metrics.features import inception_probabilities
from keras_diffusion.metrics.features import mnist_classifier
from keras_diffusion.metrics.features import mnist_classifier_features
from keras_diffusion.metrics.features import mnist_classifier_probabilities
from keras_diffusion.metrics.features import mnist_held_out
from keras_diffusion.metrics.features import mnist_training_split
from keras_diffusion.metrics.fid import FID
from keras_diffusion.metrics.fid import fid_from_features
from keras_diffusion.metrics.fid import fid_from_statistics
from keras_diffusion.metrics.inception_score import InceptionScore
from keras_diffusion.metrics.inception_score import inception_score_from_probabilities
from keras_diffusion.metrics.kid import KID
from keras_diffusion.metrics.kid import kid_from_features

__all__ = [
    "FEATURE_EXTRACTORS",
    "FID",
    "KID",
    "MNIST_HELD_OUT_ACCURACY",
    "FeatureExtractor",
    "InceptionScore",
    "build_mnist_classifier",
    "fid_from_features",
    "fid_from_statistics",
    "get_feature_extractor",
    "inception_features",
    "inception_probabilities",
    "inception_score_from_probabilities",
    "kid_from_features",
    "mnist_classifier",
    "mnist_classifier_features",
    "mnist_classifier_probabilities",
    "mnist_held_out",
    "mnist_training_split",
]
