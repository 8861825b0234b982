"""Inception Score (Salimans et al. 2016) from a classifier's probabilities."""

from keras import ops

from keras_diffusion.metrics._base import ExtractorMetric
from keras_diffusion.metrics._base import accumulator_dtype

_TINY = 1e-12


def inception_score_from_probabilities(probabilities):
    """IS = exp(mean over images of KL(p(y|x) || p(y))), over one split.

    Args:
        probabilities: (N, K) class probabilities, rows summing to 1.

    Returns:
        A float32 scalar tensor between 1 and K: K when the images are
        confidently classified and spread evenly over the K classes.

    Example:
    >>> import numpy as np
    >>> round(float(inception_score_from_probabilities(np.eye(4))), 4)
    4.0
    """
    probabilities = ops.cast(ops.convert_to_tensor(probabilities), accumulator_dtype())
    if len(probabilities.shape) != 2:
        raise ValueError(
            f"Inception Score takes (N, K) class probabilities, got shape {tuple(probabilities.shape)}."
        )
    count = ops.cast(ops.shape(probabilities)[0], probabilities.dtype)
    return _score(
        count,
        ops.sum(probabilities, axis=0),
        ops.sum(probabilities * ops.log(ops.maximum(probabilities, _TINY))),
    )


def _score(count, probability_sum, p_log_p_sum):
    marginal = probability_sum / count
    mean_kl = p_log_p_sum / count - ops.sum(marginal * ops.log(ops.maximum(marginal, _TINY)))
    return ops.cast(ops.exp(mean_kl), "float32")


class InceptionScore(ExtractorMetric):
    """Inception Score of generated images, over all images seen (one split).

    Accumulates the number of images, the sum of their class
    probabilities and the sum of p log p, which give the exact IS of the
    whole set at `result()`. (Salimans et al. report the mean over 10
    splits; one split scores a little higher on small sets.)

    Args:
        feature_extractor: "inception" (InceptionV3's ImageNet classes at
            299x299), "mnist" (the bundled classifier's 10 digit classes,
            the "MNIST score" of TF-GAN), a `FeatureExtractor`/`keras.Model`/
            callable returning class probabilities, or None when
            `update_state` receives (N, K) probabilities.
        num_classes: K; read from the extractor when it is a `keras.Model`.
            If unknown, the sums are created on the first `update_state`,
            which must then run eagerly.
        name: metric name.
        **kwargs: passed to `keras.metrics.Metric`.

    Example:
    >>> from keras_diffusion.metrics import mnist_held_out
    >>> real, _ = mnist_held_out()
    >>> score = InceptionScore(feature_extractor="mnist")
    >>> score.update_state(real)
    >>> float(score.result()) > 9.0
    True
    """

    def __init__(self, feature_extractor="inception", num_classes=None, name="inception_score", **kwargs):
        super().__init__(feature_extractor, "probabilities", name=name, **kwargs)
        if num_classes is None and self.feature_extractor is not None:
            num_classes = self.feature_extractor.num_features
        self.num_classes = None
        if num_classes is not None:
            self._create_sums(int(num_classes))

    def _create_sums(self, num_classes):
        self.num_classes = num_classes
        dtype = accumulator_dtype()
        self.count = self.add_variable(shape=(), initializer="zeros", dtype=dtype, name="count")
        self.probability_sum = self.add_variable(
            shape=(num_classes,), initializer="zeros", dtype=dtype, name="probability_sum"
        )
        self.p_log_p_sum = self.add_variable(shape=(), initializer="zeros", dtype=dtype, name="p_log_p_sum")

    def update_state(self, generated_images, sample_weight=None):
        """Adds generated images, float (N, H, W, C) in [0, 1]."""
        self.check_no_sample_weight(sample_weight)
        probabilities = self.features(generated_images, "generated_images")
        if self.num_classes is None:
            self._create_sums(int(probabilities.shape[1]))
        if probabilities.shape[1] != self.num_classes:
            raise ValueError(
                f"InceptionScore was set up for {self.num_classes} classes, got "
                f"probabilities of shape {tuple(probabilities.shape)}."
            )
        probabilities = ops.cast(probabilities, self.count.dtype)
        self.count.assign(self.count + ops.cast(ops.shape(probabilities)[0], self.count.dtype))
        self.probability_sum.assign(self.probability_sum + ops.sum(probabilities, axis=0))
        self.p_log_p_sum.assign(
            self.p_log_p_sum + ops.sum(probabilities * ops.log(ops.maximum(probabilities, _TINY)))
        )

    def result(self):
        if self.num_classes is None:
            raise ValueError(
                "InceptionScore.result() was called before any update_state(); add images first."
            )
        return _score(self.count, self.probability_sum, self.p_log_p_sum)

    def reset_state(self):
        for variable in self.variables:
            variable.assign(ops.zeros(variable.shape, variable.dtype))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}
