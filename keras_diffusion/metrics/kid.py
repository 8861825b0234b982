"""Kernel Inception Distance (Binkowski et al. 2018), as in keras.io's DDIM example."""

import keras
from keras import ops

from keras_diffusion.metrics._base import ExtractorMetric


def _polynomial_kernel(a, b):
    dimensions = ops.cast(ops.shape(a)[1], "float32")
    return (ops.matmul(a, ops.transpose(b)) / dimensions + 1.0) ** 3.0


def _check_batch(features, argument):
    size = features.shape[0]
    if size is not None and size < 2:
        raise ValueError(
            f"KID needs at least 2 {argument} per batch (its unbiased estimate "
            f"divides by N - 1), got {size}. Pass larger batches."
        )


def kid_from_features(real_features, generated_features):
    """Unbiased KID between two sets of features, with the polynomial kernel.

    `k(x, y) = (x . y / D + 1) ** 3`; KID is the unbiased squared MMD:
    the mean of k over distinct real pairs, plus the same over generated
    pairs, minus twice the mean over all real/generated pairs. It can be
    slightly negative when the two sets come from one distribution.

    Args:
        real_features: (N, D) tensor or array, N >= 2.
        generated_features: (M, D), M >= 2.

    Returns:
        A float32 scalar tensor.

    Example:
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    >>> round(float(kid_from_features(x, x + 3.0)), 2) > 0.5
    True
    """
    real = ops.cast(ops.convert_to_tensor(real_features), "float32")
    generated = ops.cast(ops.convert_to_tensor(generated_features), "float32")
    if len(real.shape) != 2 or len(generated.shape) != 2 or real.shape[1] != generated.shape[1]:
        raise ValueError(
            "KID takes two (N, D) feature arrays with the same D, got shapes "
            f"{tuple(real.shape)} and {tuple(generated.shape)}."
        )
    _check_batch(real, "real images")
    _check_batch(generated, "generated images")
    n = ops.cast(ops.shape(real)[0], "float32")
    m = ops.cast(ops.shape(generated)[0], "float32")
    kernel_real = _polynomial_kernel(real, real)
    kernel_generated = _polynomial_kernel(generated, generated)
    kernel_cross = _polynomial_kernel(real, generated)
    mean_real = (ops.sum(kernel_real) - ops.trace(kernel_real)) / (n * (n - 1.0))
    mean_generated = (ops.sum(kernel_generated) - ops.trace(kernel_generated)) / (m * (m - 1.0))
    return mean_real + mean_generated - 2.0 * ops.mean(kernel_cross)


class KID(ExtractorMetric):
    """Kernel Inception Distance, averaged over the batches it is given.

    Like the keras.io DDIM example, each `update_state` computes the
    unbiased KID of one batch of real and one batch of generated images
    (`kid_from_features`) and the result is their mean (a
    `keras.metrics.Mean`), so the metric runs inside a compiled
    `test_step`/`evaluate()` on every backend. Averaging over batches is
    KID's usual subset estimate; the batches play the subsets' role.

    Args:
        feature_extractor: "inception" (InceptionV3 with ImageNet weights at
            75x75, as on keras.io; needs the weights, see
            `inception_features`), "mnist" (the bundled classifier's
            features), a `FeatureExtractor`/`keras.Model`/callable, or None
            when `update_state` receives (N, D) features rather than images.
        name: metric name.
        **kwargs: passed to `keras.metrics.Metric` (e.g. `dtype`).

    Example:
    >>> from keras_diffusion.metrics import mnist_held_out
    >>> real, _ = mnist_held_out(num_images=64)
    >>> kid = KID(feature_extractor="mnist")
    >>> kid.update_state(real[:32], real[32:])
    >>> abs(float(kid.result())) < 0.1
    True
    """

    def __init__(self, feature_extractor="inception", name="kid", **kwargs):
        super().__init__(feature_extractor, "features", name=name, **kwargs)
        self.kid_tracker = keras.metrics.Mean(name="kid_tracker")

    def update_state(self, real_images, generated_images, sample_weight=None):
        """Adds one batch: images float (N, H, W, C) in [0, 1], N >= 2 each."""
        self.check_no_sample_weight(sample_weight)
        kid = kid_from_features(
            self.features(real_images, "real_images"),
            self.features(generated_images, "generated_images"),
        )
        self.kid_tracker.update_state(kid)

    def result(self):
        return self.kid_tracker.result()

    def reset_state(self):
        self.kid_tracker.reset_state()

