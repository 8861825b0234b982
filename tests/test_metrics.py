"""KID, FID and Inception Score against direct numpy/scipy computations.

Also: the bundled MNIST classifier's held-out accuracy, KID/FID inside a
compiled `evaluate()`, and the errors for input an extractor cannot take.
"""

import keras
import numpy as np
import pytest
import scipy.linalg
from keras import ops

from keras_diffusion import metrics
from keras_diffusion.metrics import features as features_module


def _numpy_kid(x, y):
    """Unbiased squared MMD with k(a, b) = (a.b / d + 1)^3, pair by pair."""
    d = x.shape[1]

    def kernel(a, b):
        return (a @ b.T / d + 1.0) ** 3

    n, m = len(x), len(y)
    k_xx, k_yy = kernel(x, x), kernel(y, y)
    within_x = sum(k_xx[i, j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    within_y = sum(k_yy[i, j] for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    return within_x + within_y - 2 * kernel(x, y).mean()


def _scipy_fid(x, y):
    mu_x, mu_y = x.mean(0), y.mean(0)
    cov_x, cov_y = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(cov_x @ cov_y).real
    return ((mu_x - mu_y) ** 2).sum() + np.trace(cov_x + cov_y - 2 * covmean)


def _features(rng, n, d, shift=0.0, scale=1.0):
    mixing = rng.normal(size=(d, d)) / np.sqrt(d)
    return (rng.normal(size=(n, d)) @ mixing * scale + shift).astype("float32")


def _tiny_extractor_model():
    """8x8x1 images -> 4 features, with fixed weights."""
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, activation="tanh", kernel_initializer=keras.initializers.GlorotUniform(0)),
            keras.layers.GlobalAveragePooling2D(),
        ]
    )
    return model


def test_kid_matches_numpy(rng):
    real, generated = _features(rng, 24, 6), _features(rng, 20, 6, shift=0.5, scale=1.5)
    expected = _numpy_kid(real.astype("float64"), generated.astype("float64"))
    kid = float(metrics.kid_from_features(real, generated))
    np.testing.assert_allclose(kid, expected, rtol=1e-4, atol=1e-5)
    assert kid > 0.1

    # The metric averages the per-batch KIDs, as on keras.io.
    metric = metrics.KID(feature_extractor=None)
    metric.update_state(real[:12], generated[:10])
    metric.update_state(real[12:], generated[10:])
    per_batch = [_numpy_kid(real[:12], generated[:10]), _numpy_kid(real[12:], generated[10:])]
    np.testing.assert_allclose(float(metric.result()), np.mean(per_batch), rtol=1e-4, atol=1e-5)
    metric.reset_state()
    assert float(metric.result()) == 0.0


def test_fid_matches_scipy_over_uneven_batches(rng):
    real, generated = _features(rng, 200, 8), _features(rng, 150, 8, shift=0.3, scale=1.4)
    expected = _scipy_fid(real.astype("float64"), generated.astype("float64"))
    np.testing.assert_allclose(float(metrics.fid_from_features(real, generated)), expected, rtol=1e-4)

    # Offset features: the running update must not lose the covariance to cancellation.
    metric = metrics.FID(feature_extractor=None, num_features=8)
    for r, g in ((slice(0, 50), slice(0, 70)), (slice(50, 130), slice(70, 80)), (slice(130, 200), slice(80, 150))):
        metric.update_state(real[r] + 100.0, generated[g] + 100.0)
    np.testing.assert_allclose(float(metric.result()), expected, rtol=1e-3)
    metric.reset_state()
    metric.update_state(real, None)
    metric.update_state(None, real)
    assert abs(float(metric.result())) < 1e-3
    # Without num_features, the statistics are made on the first (eager) update.
    lazy = metrics.FID(feature_extractor=None)
    lazy.update_state(real, generated)
    np.testing.assert_allclose(float(lazy.result()), expected, rtol=1e-4)


def test_fid_of_a_set_with_itself_is_zero_to_working_precision(rng):
    # 64-D features of 40 images: a rank-deficient covariance, where float32
    # rounding is ~1e-4 of the trace; float64, where the backend has it, ~1e-12.
    from keras_diffusion.metrics._base import accumulator_dtype

    x = _features(rng, 40, 64).astype("float64")
    trace = np.trace(np.cov(x, rowvar=False))
    tolerance = 1e-9 if accumulator_dtype() == "float64" else 1e-3
    assert abs(float(metrics.fid_from_features(x, x))) < tolerance * trace
    metric = metrics.FID(feature_extractor=None, num_features=64)
    metric.update_state(x[:15], x[:25])
    metric.update_state(x[15:], x[25:])
    assert abs(float(metric.result())) < tolerance * trace


def test_fid_statistics_closed_form():
    # Diagonal covariances: tr sqrt(A B) = sum sqrt(a_i b_i).
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    expected = 3.0 + a.sum() + b.sum() - 2 * np.sqrt(a * b).sum()
    value = metrics.fid_from_statistics(np.zeros(3), np.diag(a), np.ones(3), np.diag(b))
    np.testing.assert_allclose(float(value), expected, rtol=1e-5)


@pytest.fixture(scope="module")
def held_out():
    return metrics.mnist_held_out()


def test_mnist_fid_real_vs_real_and_noise(held_out):
    real = held_out[0][:400]
    fid = metrics.FID(feature_extractor="mnist")
    fid.update_state(real[:200], real[:200])
    same = float(fid.result())
    fid.reset_state()
    fid.update_state(real[:200], real[200:])
    other_half = float(fid.result())
    fid.reset_state()
    noise = np.random.default_rng(0).uniform(size=real[:200].shape).astype("float32")
    fid.update_state(real[:200], noise)
    against_noise = float(fid.result())
    assert abs(same) < 1e-2
    assert against_noise > 20 * other_half
    assert against_noise > 50.0

    kid = metrics.KID(feature_extractor="mnist")
    kid.update_state(real[:200], real[200:])
    kid_real = float(kid.result())
    kid.reset_state()
    kid.update_state(real[:200], noise)
    assert float(kid.result()) > 20 * max(kid_real, 1e-3)


def test_inception_score_analytic():
    # N classes, each image classified with certainty, classes evenly used: IS = N.
    np.testing.assert_allclose(float(metrics.inception_score_from_probabilities(np.eye(5)[np.arange(20) % 5])), 5.0, rtol=1e-5)
    # Every image in the same class: IS = 1.
    np.testing.assert_allclose(float(metrics.inception_score_from_probabilities(np.eye(5)[np.zeros(8, int)])), 1.0, rtol=1e-5)
    # Uniform predictions: no information, IS = 1.
    np.testing.assert_allclose(float(metrics.inception_score_from_probabilities(np.full((6, 4), 0.25))), 1.0, rtol=1e-5)
    # Confident softmax over 4 classes with probability q on the right one:
    # KL = log 4 - H(q, (1-q)/3, (1-q)/3, (1-q)/3).
    logits = np.eye(4)[np.arange(12) % 4] * 5.0
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    q = p[0, 0]
    entropy = -(q * np.log(q) + (1 - q) * np.log((1 - q) / 3))
    metric = metrics.InceptionScore(feature_extractor=None, num_classes=4)
    metric.update_state(p[:5])
    metric.update_state(p[5:])
    np.testing.assert_allclose(float(metric.result()), 4 * np.exp(-entropy), rtol=1e-5)


def test_bundled_classifier_accuracy(held_out):
    images, labels = held_out
    predicted = metrics.mnist_classifier().predict(images, batch_size=500, verbose=0).argmax(-1)
    accuracy = (predicted == labels).mean()
    assert accuracy >= metrics.MNIST_HELD_OUT_ACCURACY - 0.003, accuracy
    # 28x28 digits (not padded) are resized to 32x32 and still recognized.
    small, small_labels = metrics.mnist_held_out(image_size=28, num_images=200)
    probabilities = metrics.mnist_classifier_probabilities()(small)
    assert (ops.convert_to_numpy(probabilities).argmax(-1) == small_labels).mean() > 0.95
    score = metrics.InceptionScore(feature_extractor="mnist")
    score.update_state(images)
    assert float(score.result()) > 9.0
    # MNIST_FEATURE_SCALE belongs to these weights: mean square 1 on the training digits.
    train_images, _ = metrics.mnist_training_split()
    features = ops.convert_to_numpy(metrics.mnist_classifier_features()(train_images[:1000]))
    assert np.mean(features**2) == pytest.approx(1.0, abs=0.06)


def test_extractor_resizes_and_converts_channels(rng):
    model = _tiny_extractor_model()
    extractor = metrics.FeatureExtractor(model, name="tiny")
    assert (extractor.image_size, extractor.channels, extractor.num_features) == ((8, 8), 1, 4)
    images = rng.uniform(size=(3, 16, 16, 3)).astype("float32")
    gray = (images * np.array([0.299, 0.587, 0.114], "float32")).sum(-1, keepdims=True)
    expected = model(ops.image.resize(gray, (8, 8), interpolation="bilinear"))
    np.testing.assert_allclose(ops.convert_to_numpy(extractor(images)), ops.convert_to_numpy(expected), atol=1e-5)
    as_uint8 = np.round(images[:, :8, :8, :1] * 255).astype("uint8")
    np.testing.assert_allclose(
        ops.convert_to_numpy(extractor(as_uint8)),
        ops.convert_to_numpy(model(as_uint8.astype("float32") / 255)),
        atol=1e-5,
    )


def test_kid_and_fid_in_compiled_evaluate(rng):
    """As compile() metrics, update_state(y_true, y_pred) runs inside the compiled test step."""
    extractor = metrics.FeatureExtractor(_tiny_extractor_model(), name="tiny")
    generator = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Rescaling(0.5, offset=0.2)])
    kid, fid = metrics.KID(feature_extractor=extractor), metrics.FID(feature_extractor=extractor)
    generator.compile(loss="mse", metrics=[kid, fid])
    noise = rng.uniform(size=(32, 8, 8, 1)).astype("float32")
    real = rng.uniform(size=(32, 8, 8, 1)).astype("float32") ** 2
    logs = generator.evaluate(noise, real, batch_size=16, return_dict=True, verbose=0)
    generated = noise * 0.5 + 0.2
    feats = lambda x: ops.convert_to_numpy(extractor(x)).astype("float64")  # noqa: E731
    expected_kid = np.mean([_numpy_kid(feats(real[i : i + 16]), feats(generated[i : i + 16])) for i in (0, 16)])
    np.testing.assert_allclose(logs["kid"], expected_kid, rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(logs["fid"], _scipy_fid(feats(real), feats(generated)), rtol=1e-3, atol=1e-6)


def test_bad_input_errors(rng):
    extractor = metrics.mnist_classifier_features()
    with pytest.raises(ValueError, match=r"\(N, H, W, C\).*images\[\.\.\., None\]"):
        extractor(np.zeros((2, 28, 28), "float32"))
    with pytest.raises(ValueError, match=r"reshape\(-1, 28, 28, 1\)"):
        extractor(np.zeros((2, 784), "float32"))
    with pytest.raises(ValueError, match="1-channel images, got 4 channels.*images\\[\\.\\.\\., :3\\]"):
        extractor(np.zeros((2, 32, 32, 4), "float32"))
    flat = keras.Sequential([keras.Input((784,)), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match=r"takes inputs of shape \(None, 784\).*batch of images"):
        metrics.FID(feature_extractor=flat)
    unpooled = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3)])
    with pytest.raises(ValueError, match="Add pooling"):
        metrics.KID(feature_extractor=unpooled)
    with pytest.raises(ValueError, match="Unknown feature extractor 'mnsit'"):
        metrics.KID(feature_extractor="mnsit")
    with pytest.raises(ValueError, match=r"feature vectors \(N, D\)"):
        metrics.FID(feature_extractor=None).update_state(np.zeros((2, 8, 8, 1)), np.zeros((2, 8, 8, 1)))
    with pytest.raises(ValueError, match="at least 2 real images"):
        metrics.KID(feature_extractor=None).update_state(np.zeros((1, 4)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="same D"):
        metrics.kid_from_features(np.zeros((3, 4)), np.zeros((3, 5)))
    with pytest.raises(ValueError, match="at least 75x75"):
        metrics.inception_features(image_size=32)
    with pytest.raises(ValueError, match="sample_weight"):
        metrics.KID(feature_extractor=None).update_state(np.zeros((2, 4)), np.zeros((2, 4)), sample_weight=1.0)
    with pytest.raises(ValueError, match="before any update_state"):
        metrics.FID(feature_extractor=None).result()


def test_inception_offline_error(monkeypatch, tmp_path):
    """Without network access, the ImageNet weights fail fast with a way out."""
    def unreachable(fname, origin, **kwargs):
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -2] Name or service not known")

    monkeypatch.setattr(keras.utils, "get_file", unreachable)
    with pytest.raises(ConnectionError, match="pass `weights=` the path of a local copy") as info:
        metrics.KID(feature_extractor="inception")
    assert "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5" in str(info.value)
    assert "feature_extractor='mnist'" in str(info.value)
    with pytest.raises(ConnectionError, match="inception_v3_weights_tf_dim_ordering_tf_kernels.h5"):
        metrics.InceptionScore(feature_extractor="inception")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        metrics.inception_features(weights=str(tmp_path / "missing.h5"))


@pytest.mark.slow
def test_inception_architecture_with_random_weights():
    """The real InceptionV3 path, minus the download: 2,048 features, 1,000 classes."""
    extractor = metrics.inception_features(weights=None)
    assert (extractor.image_size, extractor.channels, extractor.num_features) == ((75, 75), 3, 2048)
    assert tuple(extractor(np.zeros((2, 16, 16, 1), "float32")).shape) == (2, 2048)
    probabilities = metrics.inception_probabilities(weights=None)(np.zeros((2, 32, 32, 3), "float32"))
    np.testing.assert_allclose(ops.convert_to_numpy(ops.sum(probabilities, axis=-1)), 1.0, rtol=1e-5)


def test_config_round_trip():
    kid = metrics.KID(feature_extractor="mnist", name="kid_mnist")
    restored = metrics.KID.from_config(kid.get_config())
    assert (restored.name, restored.feature_extractor_name) == ("kid_mnist", "mnist_classifier")
    fid = metrics.FID.from_config(metrics.FID(feature_extractor=None, num_features=3).get_config())
    assert (fid.feature_extractor, fid.num_features) == (None, 3)
    score = metrics.InceptionScore.from_config(metrics.InceptionScore(feature_extractor="mnist").get_config())
    assert score.num_classes == 10
    custom = metrics.KID(feature_extractor=_tiny_extractor_model())
    with pytest.raises(ValueError, match="custom feature extractor 'sequential"):
        metrics.KID.from_config(custom.get_config())
