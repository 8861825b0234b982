"""The score SDEs against score_sde's closed forms (float64 numpy), on every backend."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_diffusion.processes import VESDE
from keras_diffusion.processes import VPSDE
from keras_diffusion.processes import get_sde
from keras_diffusion.processes import subVPSDE

T = np.array([1e-5, 0.01, 0.1, 0.37, 0.8, 1.0])


def _np(x):
    return ops.convert_to_numpy(x).astype(np.float64)


def _log_mean_coeff(t, b0=0.1, b1=20.0):
    return -0.25 * t**2 * (b1 - b0) - 0.5 * t * b0


def test_vp_marginal_drift_and_diffusion_match_score_sde():
    sde = VPSDE()
    x = np.ones((len(T), 3), "float32")
    mean, std = sde.marginal_prob(ops.convert_to_tensor(x), ops.convert_to_tensor(T, "float32"))
    m = _log_mean_coeff(T)
    np.testing.assert_allclose(_np(mean)[:, 0], np.exp(m), rtol=1e-5)
    np.testing.assert_allclose(_np(std), np.sqrt(1 - np.exp(2 * m)), rtol=1e-4)
    drift, diffusion = sde.sde(ops.convert_to_tensor(x), ops.convert_to_tensor(T, "float32"))
    beta = 0.1 + T * 19.9
    np.testing.assert_allclose(_np(drift)[:, 0], -0.5 * beta, rtol=1e-5)
    np.testing.assert_allclose(_np(diffusion), np.sqrt(beta), rtol=1e-5)
    alpha, sigma = sde.alpha_sigma(ops.convert_to_tensor(T, "float32"))
    np.testing.assert_allclose(_np(alpha) ** 2 + _np(sigma) ** 2, 1.0, rtol=1e-5)


def test_subvp_std_is_one_minus_alpha_squared():
    sde = subVPSDE()
    t = ops.convert_to_tensor(T, "float32")
    _, std = sde.marginal_prob(None, t)
    m = _log_mean_coeff(T)
    np.testing.assert_allclose(_np(std), 1 - np.exp(2 * m), rtol=1e-4)
    _, diffusion = sde.sde(ops.ones((len(T), 2)), t)
    beta = 0.1 + T * 19.9
    np.testing.assert_allclose(_np(diffusion), np.sqrt(beta * (1 - np.exp(-0.2 * T - 19.9 * T**2))), rtol=1e-4)
    # Its std lies below VP's at every time.
    assert np.all(_np(std) < _np(VPSDE().marginal_prob(None, t)[1]))


def test_ve_marginal_and_diffusion_match_score_sde():
    sde = VESDE()
    t = ops.convert_to_tensor(T, "float32")
    mean, std = sde.marginal_prob(ops.ones((len(T), 2)), t)
    sigma = 0.01 * (50 / 0.01) ** T
    np.testing.assert_allclose(_np(mean), 1.0)
    np.testing.assert_allclose(_np(std), sigma, rtol=1e-5)
    _, diffusion = sde.sde(ops.ones((len(T), 2)), t)
    np.testing.assert_allclose(_np(diffusion), sigma * np.sqrt(2 * np.log(50 / 0.01)), rtol=1e-5)


@pytest.mark.parametrize("sde", [VESDE(), VPSDE(), subVPSDE()], ids=["ve", "vp", "subvp"])
def test_sigma_hat_is_std_over_mean_and_round_trips(sde):
    t = ops.convert_to_tensor(T, "float32")
    alpha, std = sde.marginal_prob(None, t)
    sigma = sde.t_to_sigma(t)
    np.testing.assert_allclose(_np(sigma), _np(std) / _np(alpha), rtol=1e-4)
    np.testing.assert_allclose(_np(sde.sigma_to_t(sigma)), T, rtol=2e-3, atol=1e-7)
    np.testing.assert_allclose(_np(sde.sigma_to_alpha(sigma)), _np(alpha), rtol=1e-5)
    low, high = sde.sigma_range
    np.testing.assert_allclose([low, high], _np(sigma)[[0, -1]], rtol=1e-5)
    sigmas = sde.sigmas(5)
    assert sigmas[-1] == 0 and np.all(np.diff(sigmas) < 0)
    np.testing.assert_allclose(sigmas[[0, -2]], [high, low], rtol=1e-5)


def test_priors():
    for sde, std in ((VESDE(), 50.0), (VPSDE(), 1.0), (subVPSDE(), 1.0)):
        z = sde.prior_sampling((4000, 3), seed=keras.random.SeedGenerator(0))
        assert abs(np.std(_np(z)) / std - 1) < 0.05
        expected = -1.5 * np.log(2 * np.pi * std**2) - np.sum(_np(z) ** 2, axis=1) / (2 * std**2)
        np.testing.assert_allclose(_np(sde.prior_logp(z)), expected, rtol=1e-4)
    # In sampler space the prior std is that of x_T / alpha(1).
    vp = VPSDE()
    assert vp.prior_std(vp.sigma_range[1]) == pytest.approx(np.exp(-_log_mean_coeff(1.0)), rel=1e-4)
    sub = subVPSDE()
    assert sub.prior_std(sub.sigma_range[1]) == pytest.approx(np.exp(-_log_mean_coeff(1.0)), rel=1e-4)
    assert VESDE().prior_std(50.0) == 50.0


def test_discretize():
    x = ops.ones((2, 3))
    t = ops.convert_to_tensor([0.0, 1.0])
    f, g = VPSDE().discretize(x, t)
    betas = np.linspace(0.1 / 1000, 20 / 1000, 1000)[[0, 999]]
    np.testing.assert_allclose(_np(f)[:, 0], np.sqrt(1 - betas) - 1, rtol=1e-4, atol=2e-8)  # float32 cancellation
    np.testing.assert_allclose(_np(g), np.sqrt(betas), rtol=1e-5)
    f, g = VESDE().discretize(x, t)
    levels = np.exp(np.linspace(np.log(0.01), np.log(50), 1000))
    np.testing.assert_allclose(_np(g), [0.01, np.sqrt(levels[-1] ** 2 - levels[-2] ** 2)], rtol=1e-4)
    f, g = subVPSDE().discretize(x, t)
    _, diffusion = subVPSDE().sde(x, t)
    np.testing.assert_allclose(_np(g), _np(diffusion) * np.sqrt(1e-3), rtol=1e-6)


def test_unknown_sde_and_bad_arguments():
    assert isinstance(get_sde("subvp"), subVPSDE)
    with pytest.raises(ValueError, match="Unknown SDE: 'vpp'.*'ve', 'vp', 'subvp'"):
        get_sde("vpp")
    with pytest.raises(ValueError, match="beta_min < beta_max"):
        VPSDE(beta_min=20, beta_max=0.1)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        VESDE(sigma_min=0)
    with pytest.raises(ValueError, match="timestep_spacing"):
        VESDE().sigmas(4, "leading")


def test_config_round_trip():
    for sde in (VESDE(0.02, 80.0), VPSDE(0.2, 10.0), subVPSDE()):
        again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(sde))
        assert type(again) is type(sde) and again.get_config() == sde.get_config()
