"""Frechet Inception Distance (Heusel et al. 2017), from running feature statistics."""

import keras
from keras import ops

from keras_diffusion.metrics._base import ExtractorMetric
from keras_diffusion.metrics._base import accumulator_dtype


def _matmul(a, b):
    """a @ b in the inputs' dtype.

    `ops.einsum`, because Keras' torch backend computes `ops.matmul` and
    `ops.dot` of float64 inputs in float32 (Keras 3.15).
    """
    return ops.einsum("ij,jk->ik", a, b)


def _gram(centered):
    """centered^T centered, the sum of outer products of the rows."""
    return ops.einsum("ni,nj->ij", centered, centered)


def _sqrt_psd(cov):
    """Square root of a symmetric PSD matrix, by `ops.eigh`.

    Eigenvalues below the dtype's rounding level (relative to the largest)
    are set to 0: features with no variance (e.g. ReLUs that never fire)
    then contribute exactly 0 instead of the square root of rounding noise.
    """
    eigenvalues, eigenvectors = ops.eigh(cov)
    resolution = 2.2e-16 if keras.backend.standardize_dtype(cov.dtype) == "float64" else 1.2e-7
    cutoff = ops.max(eigenvalues) * resolution * ops.cast(ops.shape(cov)[0], cov.dtype)
    eigenvalues = ops.where(eigenvalues > cutoff, eigenvalues, ops.zeros_like(eigenvalues))
    return _matmul(eigenvectors * ops.sqrt(eigenvalues), ops.transpose(eigenvectors))


def _trace_sqrt_product(cov_a, cov_b):
    """tr sqrt(A B) for symmetric PSD A and B.

    keras.ops has no general matrix square root, but the eigenvalues of
    A B are the squared singular values of sqrt(A) sqrt(B), so tr sqrt(A B)
    is the sum of those singular values. Taking singular values rather than
    the eigenvalues of sqrt(A) B sqrt(A) avoids squaring the matrix, which
    would cost half the digits in float32.
    """
    product = _matmul(_sqrt_psd(cov_a), _sqrt_psd(cov_b))
    return ops.sum(ops.svd(product, compute_uv=False))


def fid_from_statistics(mean_real, cov_real, mean_generated, cov_generated):
    """FID between two Gaussians: |mu_r - mu_g|^2 + tr(C_r + C_g - 2 sqrt(C_r C_g)).

    Args:
        mean_real: (D,) feature mean of the real images.
        cov_real: (D, D) feature covariance of the real images.
        mean_generated: (D,) and
        cov_generated: (D, D), the same for the generated images.

    Returns:
        A float32 scalar tensor (computed in float64 where the backend can).

    Example:
    >>> import numpy as np
    >>> eye = np.eye(3)
    >>> float(fid_from_statistics(np.zeros(3), eye, np.ones(3), 4 * eye))
    6.0
    """
    dtype = accumulator_dtype()
    mean_real, cov_real, mean_generated, cov_generated = (
        ops.cast(ops.convert_to_tensor(x), dtype)
        for x in (mean_real, cov_real, mean_generated, cov_generated)
    )
    diff = mean_real - mean_generated
    fid = (
        ops.sum(diff * diff)
        + ops.trace(cov_real)
        + ops.trace(cov_generated)
        - 2.0 * _trace_sqrt_product(cov_real, cov_generated)
    )
    return ops.cast(fid, "float32")


def _mean_and_cov(features):
    features = ops.cast(ops.convert_to_tensor(features), accumulator_dtype())
    if len(features.shape) != 2 or (features.shape[0] is not None and features.shape[0] < 2):
        raise ValueError(
            f"FID needs (N, D) features with N >= 2, got shape {tuple(features.shape)}."
        )
    mean = ops.mean(features, axis=0)
    centered = features - mean
    count = ops.cast(ops.shape(features)[0], features.dtype)
    return mean, _gram(centered) / (count - 1.0)


def fid_from_features(real_features, generated_features):
    """FID between two feature sets (means and unbiased covariances).

    Args:
        real_features: (N, D) features of real images, N >= 2.
        generated_features: (M, D) features of generated images, M >= 2.

    Returns:
        A float32 scalar tensor; 0 for identical sets.

    Example:
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(100, 4))
    >>> abs(float(fid_from_features(x, x))) < 1e-3
    True
    """
    return fid_from_statistics(*_mean_and_cov(real_features), *_mean_and_cov(generated_features))


class FID(ExtractorMetric):
    """Frechet distance between the feature distributions of real and generated images.

    `update_state` accumulates, for each of the two sets, the count, the
    mean and the sum of centered outer products of the features (merged
    batch by batch with Chan et al.'s parallel update, which stays accurate
    in float32), in float64 where the backend supports it. `result()`
    computes the FID of all images seen so far; unlike KID, it does not
    depend on how they were split into batches. The real and generated
    batches may differ in size.

    Args:
        feature_extractor: "inception" (InceptionV3 at 75x75; see
            `inception_features`), "mnist" (the bundled classifier's
            features), a `FeatureExtractor`/`keras.Model`/callable, or None
            when `update_state` receives (N, D) features.
        num_features: the feature dimension D; read from the extractor when
            it is a `keras.Model`. If unknown, the statistics are created on
            the first `update_state`, which must then run eagerly.
        name: metric name.
        **kwargs: passed to `keras.metrics.Metric`.

    Example:
    >>> from keras_diffusion.metrics import mnist_held_out
    >>> real, _ = mnist_held_out(num_images=200)
    >>> fid = FID(feature_extractor="mnist")
    >>> fid.update_state(real[:100], real[100:])
    >>> float(fid.result()) < 5.0
    True
    """

    def __init__(self, feature_extractor="inception", num_features=None, name="fid", **kwargs):
        super().__init__(feature_extractor, "features", name=name, **kwargs)
        if num_features is None and self.feature_extractor is not None:
            num_features = self.feature_extractor.num_features
        self.num_features = None
        if num_features is not None:
            self._create_statistics(int(num_features))

    def _create_statistics(self, num_features):
        self.num_features = num_features
        dtype = accumulator_dtype()
        self._statistics = {}
        for side in ("real", "generated"):
            self._statistics[side] = tuple(
                self.add_variable(shape=shape, initializer="zeros", dtype=dtype, name=f"{side}_{kind}")
                for kind, shape in (
                    ("count", ()),
                    ("mean", (num_features,)),
                    ("centered_outer_sum", (num_features, num_features)),
                )
            )

    def _accumulate(self, side, features):
        count, mean, outer_sum = self._statistics[side]
        features = ops.cast(features, count.dtype)
        batch_count = ops.cast(ops.shape(features)[0], count.dtype)
        batch_mean = ops.mean(features, axis=0)
        centered = features - batch_mean
        batch_outer_sum = _gram(centered)
        total = count + batch_count
        delta = batch_mean - mean
        mean.assign(mean + delta * (batch_count / total))
        outer_sum.assign(
            outer_sum
            + batch_outer_sum
            + ops.outer(delta, delta) * (count * batch_count / total)
        )
        count.assign(total)

    def update_state(self, real_images, generated_images, sample_weight=None):
        """Adds images (float (N, H, W, C) in [0, 1]) to the two sets; either may be None."""
        self.check_no_sample_weight(sample_weight)
        for side, images in (("real", real_images), ("generated", generated_images)):
            if images is None:
                continue
            features = self.features(images, f"{side}_images")
            if self.num_features is None:
                self._create_statistics(int(features.shape[1]))
            if features.shape[1] != self.num_features:
                raise ValueError(
                    f"FID was set up for {self.num_features} features, but the "
                    f"{side} images gave {features.shape[1]}. Use one feature "
                    "extractor for all images."
                )
            self._accumulate(side, features)

    def result(self):
        if self.num_features is None:
            raise ValueError("FID.result() was called before any update_state(); add images first.")
        (real_count, real_mean, real_sum), (generated_count, generated_mean, generated_sum) = (
            self._statistics["real"],
            self._statistics["generated"],
        )
        return fid_from_statistics(
            real_mean,
            real_sum / (real_count - 1.0),
            generated_mean,
            generated_sum / (generated_count - 1.0),
        )

    def reset_state(self):
        for variable in self.variables:
            variable.assign(ops.zeros(variable.shape, variable.dtype))

    def get_config(self):
        return {**super().get_config(), "num_features": self.num_features}
