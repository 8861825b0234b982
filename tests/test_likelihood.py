"""Bits/dim through the probability-flow ODE against the exact Gaussian log-density, on every backend.

For data `N(MU, S^2)` per dimension and the exact denoiser, the probability-flow
ODE's log-likelihood at `sigma_min` is `log N(x; MU, S^2 + sigma_min^2)`
(`../shared/NOTES.md`) when the prior is the exact `N(MU, S^2 + sigma_max^2)`.
The prior used is the process's zero-mean one, which moves the answer by
about `MU / sigma_max` nats per dimension (0.006 at sigma_max = 50); the
expected value below carries that term exactly, through the exact flow map.
"""

import keras
import numpy as np
import pytest
from keras import ops

from keras_diffusion.likelihood import draw_probes
from keras_diffusion.likelihood import log_likelihood
from keras_diffusion.likelihood import ode_log_likelihood
from tests.oracles import MU
from tests.oracles import S
from tests.oracles import exact_denoiser
from tests.test_score import exact_model


def _exact_log_p(x, sigma):
    var = S**2 + sigma**2
    return np.sum(-0.5 * np.log(2 * np.pi * var) - (x - MU) ** 2 / (2 * var), axis=1)


def _expected(x, sigma_min, sigma_max, prior_std):
    """What the ODE gives exactly: `log N(x; MU, S^2 + sigma_min^2)` with the prior swapped at `sigma_max`."""
    z = MU + np.sqrt((S**2 + sigma_max**2) / (S**2 + sigma_min**2)) * (x - MU)
    prior = np.sum(-0.5 * np.log(2 * np.pi * prior_std**2) - z**2 / (2 * prior_std**2), axis=1)
    return _exact_log_p(x, sigma_min) - _exact_log_p(z, sigma_max) + prior


def _data(n, seed=0):
    return np.random.default_rng(seed).normal(MU, S, (n, 2)).astype("float32")


def test_rademacher_probes_give_the_exact_log_density():
    # The exact denoiser's Jacobian is a multiple of I, so e^T J e is exact for +-1 probes.
    x = _data(64)
    probes = draw_probes(x.shape, "rademacher", 1, keras.random.SeedGenerator(0))
    log_p, nfe = ode_log_likelihood(exact_denoiser, x, probes, 0.01, 50.0, 50.0)
    np.testing.assert_allclose(ops.convert_to_numpy(log_p), _expected(x, 0.01, 50.0, 50.0), atol=2e-3)
    # The prior's zero mean is the only gap to the exact log-density.
    np.testing.assert_allclose(ops.convert_to_numpy(log_p), _exact_log_p(x, 0.01), atol=0.05)
    assert 10 < int(ops.convert_to_numpy(nfe)) < 500


def test_gaussian_probes_are_unbiased():
    x = _data(256, seed=1)
    probes = draw_probes(x.shape, "gaussian", 4, keras.random.SeedGenerator(1))
    log_p, _ = ode_log_likelihood(exact_denoiser, x, probes, 0.01, 50.0, 50.0)
    error = ops.convert_to_numpy(log_p) - _expected(x, 0.01, 50.0, 50.0)
    assert np.std(error) > 1e-2  # the estimator is noisy...
    assert abs(np.mean(error)) < 4 * np.std(error) / np.sqrt(len(error))  # ...and unbiased


@pytest.mark.parametrize("name", ["ve", "subvp"])  # sub-VP: alpha < 1 and sigma != sqrt(1 - alpha^2)
def test_bits_per_dim_of_a_score_model(name):
    model = exact_model(name)
    images = np.random.default_rng(2).integers(80, 200, (16, 2)).astype("uint8")
    bpd, nfe = log_likelihood(model, images, dequantize=False, seed=0, return_nfe=True)
    x = images / 127.5 - 1.0
    sigma_min, sigma_max = model.process.sigma_range
    alpha_min = float(ops.convert_to_numpy(model.process.sigma_to_alpha(sigma_min)))
    # The data is x_t at sigma_min: x = x_t / alpha in sigma space, with the Jacobian of the scaling.
    log_p = _expected(x / alpha_min, sigma_min, sigma_max, model.process.prior_std(sigma_max)) - 2 * np.log(alpha_min)
    expected = -log_p / (2 * np.log(2)) + 7.0
    np.testing.assert_allclose(bpd, expected, atol=5e-3)
    assert nfe > 0
    # Dequantization moves each pixel by less than one level: a close but different value.
    noisy = model.log_likelihood(images, seed=0)
    assert np.all(np.abs(noisy - bpd) < 0.1) and not np.allclose(noisy, bpd)


def test_batches_give_the_same_bits_per_dim():
    model = exact_model("ve")
    images = np.random.default_rng(4).integers(0, 256, (10, 2)).astype("uint8")
    whole = log_likelihood(model, images, dequantize=False)
    batched, nfe = log_likelihood(model, images, dequantize=False, batch_size=4, return_nfe=True)  # 4 + 4 + 2 (padded)
    np.testing.assert_allclose(batched, whole, atol=2e-3)
    assert batched.shape == (10,) and nfe > 0
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        log_likelihood(model, images, batch_size=0)


def test_a_network_with_attention_has_a_likelihood():
    """torch's fused attention kernel has no forward-mode AD; likelihoods attend with einsum."""
    from keras_diffusion.models import ScoreModel
    from keras_diffusion.networks import SpatialSelfAttention
    from keras_diffusion.processes import VESDE

    x, t = keras.Input((4, 4, 1)), keras.Input(())
    # The time enters with as many channels as the features: TF's forward-mode autodiff fails on a
    # (batch, 1, 1, 1) bias broadcast over channels after a convolution.
    time = keras.layers.Reshape((1, 1, 4))(keras.layers.Dense(4)(keras.layers.Reshape((1,))(t)))
    h = keras.layers.Conv2D(4, 1)(x) + time
    network = keras.Model([x, t], keras.layers.Conv2D(1, 1)(SpatialSelfAttention(groups=2, num_heads=2)(h)))
    images = np.random.default_rng(5).integers(0, 256, (2, 4, 4, 1)).astype("uint8")
    model = ScoreModel(network, sde=VESDE(sigma_min=0.5, sigma_max=1.0), seed=0)  # a short, cheap solve
    bpd = model.log_likelihood(images, rtol=1e-2, atol=1e-2, seed=0)
    assert bpd.shape == (2,) and np.all(np.isfinite(bpd))


def test_bad_input():
    model = exact_model("ve")
    with pytest.raises(ValueError, match=r"images in \[0, 255\]"):
        log_likelihood(model, np.full((2, 2), 300.0))
    with pytest.raises(ValueError, match=r"images in \[0, 255\]"):
        log_likelihood(model, np.full((2, 2), -0.5))
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        log_likelihood(model, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="Unknown probe"):
        log_likelihood(model, np.zeros((2, 2)), probe="sphere")
    with pytest.raises(ValueError, match="num_probes"):
        log_likelihood(model, np.zeros((2, 2)), num_probes=0)


def test_a_backend_without_jvp_is_refused(monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "numpy")
    with pytest.raises(ValueError, match="keras.ops.jvp.*KERAS_BACKEND=jax, tensorflow or torch"):
        log_likelihood(exact_model("ve"), np.zeros((2, 2)))


def test_every_model_family_has_a_likelihood():
    """An EDM with its exact denoiser: the same ODE over EDMProcess's sigma_range (0.002 to 80)."""
    from keras_diffusion.models import EDM
    from tests.oracles import ExactEDMOutput
    from tests.oracles import stand_in

    model = EDM(stand_in(ExactEDMOutput()))
    images = np.random.default_rng(3).integers(80, 200, (8, 2)).astype("uint8")
    bpd = model.log_likelihood(images, dequantize=False, seed=0)
    expected = -_expected(images / 127.5 - 1.0, 0.002, 80.0, 80.0) / (2 * np.log(2)) + 7.0
    np.testing.assert_allclose(bpd, expected, atol=5e-3)
