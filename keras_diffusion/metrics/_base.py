"""What the three metrics share: resolving and applying the feature extractor."""

import functools
import warnings

import keras
from keras import ops

from keras_diffusion.metrics.features import get_feature_extractor


class ExtractorMetric(keras.metrics.Metric):
    """A metric computed on the features of images.

    Args:
        feature_extractor: see `get_feature_extractor`.
        output: "features" or "probabilities", what a name resolves to.
        name: metric name.
        **kwargs: passed to `keras.metrics.Metric`.
    """

    def __init__(self, feature_extractor, output, name, **kwargs):
        super().__init__(name=name, **kwargs)
        self._extractor_argument = feature_extractor if isinstance(feature_extractor, str) else None
        self.feature_extractor = get_feature_extractor(feature_extractor, output=output)

    @property
    def feature_extractor_name(self):
        """The extractor's name ("none" when inputs are features already)."""
        return "none" if self.feature_extractor is None else self.feature_extractor.name

    def features(self, inputs, argument):
        """Returns float32 (N, D) features of `inputs` (images, or features)."""
        if self.feature_extractor is not None:
            return self.feature_extractor(inputs)
        features = ops.convert_to_tensor(inputs)
        if len(features.shape) != 2:
            raise ValueError(
                f"{type(self).__name__}(feature_extractor=None) takes feature "
                f"vectors (N, D) as `{argument}`, got shape {tuple(features.shape)}. "
                "Pass images with feature_extractor='mnist' or 'inception' (or "
                "your own), or flatten your features."
            )
        return ops.cast(features, "float32")

    @staticmethod
    def check_no_sample_weight(sample_weight):
        """Raises: these metrics weigh every image equally."""
        if sample_weight is not None:
            raise ValueError(
                "`sample_weight` is not supported by the sample-quality metrics; "
                "pass only the images you want counted."
            )

    def get_config(self):
        config = super().get_config()
        if self.feature_extractor is None or self._extractor_argument is not None:
            config["feature_extractor"] = self._extractor_argument
        else:
            # Saving a compiled model must not fail over a metric; loading it says what is missing.
            config["custom_feature_extractor"] = self.feature_extractor.name
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        custom = config.pop("custom_feature_extractor", None)
        if custom is not None:
            raise ValueError(
                f"This {cls.__name__} was saved with the custom feature extractor "
                f"{custom!r}, which cannot be saved. Create the metric in code with "
                "that extractor."
            )
        return cls(**config)


def accumulator_dtype():
    """"float64" where the backend computes in it, else "float32".

    JAX without `jax_enable_x64` turns float64 into float32; the running
    statistics are then kept with a numerically stable update instead.
    """
    return _accumulator_dtype(keras.backend.backend())


@functools.lru_cache(maxsize=None)
def _accumulator_dtype(backend):
    del backend  # The cache key only.
    with warnings.catch_warnings():
        # JAX warns that it truncates float64; that is what is probed.
        warnings.simplefilter("ignore")
        return keras.backend.standardize_dtype(ops.zeros((), "float64").dtype)
