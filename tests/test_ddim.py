"""DDIM (the keras.io model): schedule, conditioning, fit/evaluate with KID, saving, sampling."""

import math

import keras
import numpy as np
import pytest
from keras import ops

from keras_diffusion.models import DDIM
from keras_diffusion.networks import DDIM_UNET_PRESETS
from keras_diffusion.networks import build_ddim_unet
from keras_diffusion.networks import unet_from_preset
from keras_diffusion.processes import ContinuousCosineSchedule

SHAPE = (8, 8, 3)
START, END = math.acos(0.95), math.acos(0.02)  # keras.io: max and min signal rates


def tiny_network(seed=0):
    """The keras.io architecture at 8x8, with random weights so that every layer matters."""
    net = build_ddim_unet(SHAPE, widths=(8, 16), block_depth=1, embedding_dims=8)
    rng = np.random.default_rng(seed)
    for v in net.trainable_weights:
        v.assign(rng.normal(scale=0.1, size=v.shape).astype("float32"))
    return net


def tiny_extractor():
    return keras.Sequential(
        [keras.Input(SHAPE), keras.layers.Conv2D(4, 1), keras.layers.GlobalAveragePooling2D()]
    )


def images(n=16, seed=0):
    # Off-centre and not unit variance, so that normalization is visible.
    return np.random.default_rng(seed).uniform(-0.2, 0.8, (n,) + SHAPE).astype("float32")


def keras_io_reverse_diffusion(network, initial_noise, diffusion_steps):
    """The keras.io example's `reverse_diffusion`, in numpy around the network."""
    num_images = initial_noise.shape[0]
    step_size = 1.0 / diffusion_steps

    def rates(t):
        angle = START + t * (END - START)
        return math.sin(angle), math.cos(angle)

    next_noisy = initial_noise
    for step in range(diffusion_steps):
        noisy = next_noisy
        t = 1.0 - step * step_size
        noise_rate, signal_rate = rates(t)
        variance = np.full((num_images,), noise_rate**2, "float32")
        pred_noises = ops.convert_to_numpy(network([noisy, variance], training=False))
        pred_images = (noisy - noise_rate * pred_noises) / signal_rate
        next_noise_rate, next_signal_rate = rates(t - step_size)
        next_noisy = next_signal_rate * pred_images + next_noise_rate * pred_noises
    return pred_images


@pytest.fixture(scope="module")
def trained():
    """A tiny DDIM, adapted and trained for one epoch with validation (which measures KID)."""
    model = DDIM(tiny_network(), kid_feature_extractor=tiny_extractor(), kid_diffusion_steps=2, seed=0)
    x = images()
    model.adapt(x)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=1e-4, use_ema=True, ema_momentum=0.999))
    history = model.fit(x, epochs=1, batch_size=8, validation_data=(images(8, seed=1),), verbose=0)
    return model, history.history


def test_rates_match_keras_io():
    t = np.linspace(0.0, 1.0, 11).astype("float32")
    alpha, sigma = ContinuousCosineSchedule().alpha_sigma(ops.convert_to_tensor(t))
    angles = START + t * (END - START)
    np.testing.assert_allclose(ops.convert_to_numpy(alpha), np.cos(angles), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(sigma), np.sin(angles), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(alpha)[[0, -1]], [0.95, 0.02], atol=1e-6)


def test_sigma_to_t_inverts_the_schedule():
    schedule = ContinuousCosineSchedule()
    t = np.random.default_rng(0).uniform(0.0, 1.0, 64)
    sigma = np.tan(START + t * (END - START)).astype("float32")
    back = ops.convert_to_numpy(schedule.sigma_to_t(ops.convert_to_tensor(sigma)))
    np.testing.assert_allclose(back, t, atol=2e-6)
    np.testing.assert_allclose(schedule.sigma_range, (math.tan(START), math.tan(END)))


def test_sigmas_take_the_keras_io_steps():
    model = DDIM(tiny_network(), kid_feature_extractor=None)
    sigmas = model.process.sigmas(4)
    times = np.array([1.0, 0.75, 0.5, 0.25])  # keras.io: 1 - step / diffusion_steps
    np.testing.assert_allclose(sigmas, np.append(np.tan(START + times * (END - START)), 0.0), rtol=1e-6)
    np.testing.assert_allclose(model.process.sigmas(4, "leading")[:-1], np.tan(START + (times - 0.25) * (END - START)), rtol=1e-6)


class VarianceSpy(keras.Model):
    """A "network" whose prediction is the conditioning input it received, broadcast."""

    def call(self, inputs, training=False):
        x, variance = inputs
        return ops.zeros_like(x) + ops.reshape(variance, (-1, 1, 1, 1))


def test_network_receives_the_noise_variance():
    model = DDIM(VarianceSpy(), kid_feature_extractor=None, image_shape=SHAPE, seed=0)
    out = model(images(8), training=True)
    received = ops.convert_to_numpy(out["prediction"])[:, 0, 0, 0]
    np.testing.assert_allclose(received, ops.convert_to_numpy(out["sigma"]) ** 2, rtol=1e-5)
    assert received.min() > 0.0 and received.max() < 1.0


def test_adapt_fits_the_normalizer():
    model = DDIM(tiny_network(), kid_feature_extractor=None)
    x = images(32)
    model.adapt(x)
    np.testing.assert_allclose(
        ops.convert_to_numpy(model.normalizer.mean).ravel(), x.mean(axis=(0, 1, 2)), rtol=1e-4
    )
    normalized = ops.convert_to_numpy(model.normalize(x))
    np.testing.assert_allclose(normalized.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(normalized.std(axis=(0, 1, 2)), 1.0, rtol=1e-3)
    np.testing.assert_allclose(ops.convert_to_numpy(model.denormalize(normalized)), x, atol=1e-5)


def test_fit_reports_losses_and_evaluate_reports_kid(trained):
    model, history = trained
    for name in ("loss", "noise_loss", "image_loss", "val_loss", "val_image_loss", "val_kid"):
        assert np.isfinite(history[name]).all(), (name, history[name])
    assert "kid" not in history  # like keras.io, KID is measured only when evaluating
    # The image loss is the noise error scaled by sigma / alpha, which exceeds 1 on average.
    assert history["image_loss"][0] > history["noise_loss"][0]
    logs = model.evaluate(images(8, seed=2), batch_size=8, verbose=0, return_dict=True)
    assert set(logs) >= {"loss", "noise_loss", "image_loss", "kid"}
    assert np.isfinite(logs["kid"]) and logs["kid"] != 0.0


def test_generate_reproduces_keras_io_sampling(trained):
    model, _ = trained
    noise = np.random.default_rng(3).normal(size=(2,) + SHAPE).astype("float32")
    ours = model.generate(2, num_steps=5, initial_noise=noise, use_ema=False, verbose=False, return_float=True)
    reference = keras_io_reverse_diffusion(model.network, noise, 5)
    reference = np.clip(ops.convert_to_numpy(model.denormalize(reference)), -1.0, 1.0)
    np.testing.assert_allclose(ours, reference, atol=2e-4)


def test_deterministic_ddim_equals_euler(trained):
    # In sigma space, DDIM with eta=0 and the Euler step are the same update.
    model, _ = trained
    noise = np.random.default_rng(4).normal(size=(2,) + SHAPE).astype("float32")
    # Same shapes and steps as the keras.io test, so that the compiled DDIM loop is reused.
    ddim = model.generate(2, sampler="ddim", num_steps=5, initial_noise=noise, verbose=False, return_float=True)
    euler = model.generate(2, sampler="euler", num_steps=5, initial_noise=noise, verbose=False, return_float=True)
    np.testing.assert_allclose(ddim, euler, atol=1e-5)
    as_uint8 = model.generate(2, num_steps=5, initial_noise=noise, verbose=False)
    assert as_uint8.dtype == np.uint8
    np.testing.assert_allclose(as_uint8 / 127.5 - 1.0, ddim, atol=1.0 / 127.5 + 1e-6)


def test_invert_works_in_the_normalized_space():
    # The untrained network predicts zero noise, so DDIM and its inversion are exact
    # identities in sigma space: only the normalization is left to get right.
    model = DDIM(build_ddim_unet(SHAPE, widths=(8, 16), block_depth=1, embedding_dims=8), kid_feature_extractor=None)
    x = images(2)
    model.adapt(images(32))
    noise = model.invert(x, num_steps=3)
    back = model.generate(2, num_steps=3, initial_noise=noise, verbose=False, return_float=True)
    np.testing.assert_allclose(back, x, atol=1e-5)


def test_keras_file_round_trip(trained, tmp_path):
    model, _ = trained
    path = str(tmp_path / "ddim.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, DDIM) and loaded.kid is None  # a custom extractor is not saved
    np.testing.assert_allclose(
        ops.convert_to_numpy(loaded.normalizer.mean), ops.convert_to_numpy(model.normalizer.mean)
    )
    np.testing.assert_allclose(
        ops.convert_to_numpy(loaded.normalizer.variance), ops.convert_to_numpy(model.normalizer.variance)
    )
    before = model.generate(2, seed=5, num_steps=5, verbose=False, return_float=True)
    after = loaded.generate(2, seed=5, num_steps=5, verbose=False, return_float=True)
    np.testing.assert_allclose(after, before, atol=1e-5)
    assert loaded.get_config()["schedule"] == model.get_config()["schedule"]


def test_preset_is_the_keras_io_network():
    # Building the 64x64 preset costs half a minute on JAX (one XLA compile per new weight
    # shape), so the preset's values are checked, and the architecture on a small copy.
    assert DDIM_UNET_PRESETS["ddim_keras_io"] == {
        "image_shape": (64, 64, 3),
        "widths": (32, 64, 96, 128),
        "block_depth": 2,
        "embedding_dims": 32,
        "embedding_max_frequency": 1000.0,
    }
    net = unet_from_preset("ddim_keras_io", image_shape=SHAPE, widths=(8, 16), block_depth=1, embedding_dims=8)
    assert [i.name for i in net.inputs] == ["x", "noise_variance"]
    assert not any("attention" in layer.name for layer in net.layers)
    assert not np.any(ops.convert_to_numpy(net.get_layer("out_conv").kernel))
    norms = [layer for layer in net.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and not any(norm.center or norm.scale for norm in norms)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="kid_diffusion_steps"):
        DDIM(tiny_network(), kid_feature_extractor=None, kid_diffusion_steps=0)
    with pytest.raises(ValueError, match="unconditional"):
        DDIM(tiny_network(), kid_feature_extractor=None, num_classes=10)
    with pytest.raises(ValueError, match="min_signal_rate"):
        ContinuousCosineSchedule(min_signal_rate=0.0)
