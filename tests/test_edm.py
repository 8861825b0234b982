"""EDM: the exact denoiser through the preconditioning, Heun, every sampler, training, saving, errors."""

import keras
import numpy as np
import pytest

from keras_diffusion import EDM
from keras_diffusion.parameterizations import get_parameterization
from keras_diffusion.processes import ContinuousCosineSchedule
from keras_diffusion.processes import EDMProcess
from keras_diffusion.processes import RectifiedFlow
from keras_diffusion.samplers import SAMPLERS
from oracles import MU
from oracles import S
from oracles import ExactEDMOutput
from oracles import exact_denoiser
from oracles import exact_flow_map
from oracles import langevin_moments
from oracles import mlp
from oracles import stand_in

DETERMINISTIC = ("ddim", "euler", "heun", "dpmpp_2m", "lms", "unipc", "rk4", "ode_rk45")


def exact_model():
    return EDM(stand_in(ExactEDMOutput()), seed=0)


def test_denoise_is_the_exact_denoiser():
    x = np.random.default_rng(0).normal(size=(5, 2)).astype("float32") * 3
    for sigma in (0.01, 1.0, 50.0):
        got = keras.ops.convert_to_numpy(exact_model().denoise(x, sigma))
        np.testing.assert_allclose(got, exact_denoiser(x, sigma), rtol=1e-4, atol=1e-5)


def test_preconditioning_coefficients_and_loss_weight():
    edm = get_parameterization("edm", EDMProcess())
    sigma, sd = np.array([0.1, 1.0, 10.0], "float32"), 0.5
    rng = np.random.default_rng(0)
    x0, noise, out = (rng.normal(size=(3, 4)).astype("float32") for _ in range(3))
    s = sigma[:, None]
    x = x0 + s * noise
    x0_t, noise_t, out_t, x_t, s_t = (keras.ops.convert_to_tensor(v) for v in (x0, noise, out, x, s))
    d = sd**2 / (s**2 + sd**2) * x + s * sd / np.sqrt(s**2 + sd**2) * out  # c_skip x + c_out F
    np.testing.assert_allclose(keras.ops.convert_to_numpy(edm.x0(out_t, x_t, s_t, 1.0)), d, rtol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(edm.network_input(x_t, 1.0, s_t)), x / np.sqrt(s**2 + sd**2),
                               rtol=1e-5)
    # Karras' weight on the error of D equals weight 1 on the error of F against the target.
    weight = (s**2 + sd**2) / (s * sd) ** 2
    target = keras.ops.convert_to_numpy(edm.target(x0_t, noise_t, x_t, 1.0, s_t))
    np.testing.assert_allclose(weight * (d - x0) ** 2, (out - target) ** 2, rtol=1e-3, atol=1e-5)
    assert np.allclose(keras.ops.convert_to_numpy(EDMProcess().network_time(sigma)), np.log(sigma) / 4)


def test_heun_is_the_default_and_lands_on_the_exact_flow_map():
    model = exact_model()
    noise = np.random.default_rng(1).normal(size=(64, 2)).astype("float32")
    kwargs = dict(initial_noise=noise, verbose=False, return_float=True)
    default = model.generate(64, **kwargs)
    np.testing.assert_array_equal(default, model.generate(64, sampler="heun", num_steps=18, **kwargs))
    exact = exact_flow_map(noise * 80.0, 80.0)
    errors = [np.abs(model.generate(64, sampler="heun", num_steps=n, **kwargs) - exact).max() for n in (18, 36)]
    assert errors[0] < 0.1 and errors[1] < 0.35 * errors[0]  # second order: twice the steps, a quarter the error


def test_heun_with_churn_keeps_the_data_distribution():
    options = {"s_churn": 40.0, "s_tmin": 0.05, "s_tmax": 50.0, "s_noise": 1.003}
    got = exact_model().generate(4096, num_steps=100, seed=0, sampler_options=options, verbose=False,
                                 return_float=True)
    assert abs(got.mean() - MU) < 0.03 and abs(got.std() - S) < 0.03


# The few-step models' samplers (consistency, meanflow) run on their own models: tests/test_distill.py.
@pytest.mark.parametrize("sampler", sorted(set(SAMPLERS) - {"consistency", "meanflow"}))
def test_every_sampler_works_on_edm(sampler):
    model = exact_model()
    n = 512 if sampler in DETERMINISTIC else 2048 if sampler == "langevin" else 4096
    noise = np.random.default_rng(2).normal(size=(n, 2)).astype("float32")
    num_steps = 10 if sampler == "langevin" else 200  # NCSN's 10 levels of 100 Langevin steps
    got = model.generate(n, sampler=sampler, num_steps=num_steps, initial_noise=noise, seed=0, verbose=False,
                         return_float=True)
    if sampler in DETERMINISTIC:  # first-order samplers (ddim, euler) are within 0.04 at 200 steps
        atol = 0.04 if sampler in ("ddim", "euler") else 0.005
        np.testing.assert_allclose(got, exact_flow_map(noise * 80.0, 80.0), atol=atol)
    elif sampler == "langevin":  # its step size is stable on EDM's levels; 10 levels leave the std high
        mean, std = langevin_moments(model.process.sigmas(10), 80.0)
        # Within 4 standard errors of 4,096 values (Langevin's 1,000 evaluations make n = 2048 the budget).
        assert abs(got.mean() - mean) < 4 * std / 64 and abs(got.std() / std - 1) < 4 / 90, (got.mean(), got.std(), std)
    else:
        assert abs(got.mean() - MU) < 0.03 and abs(got.std() - S) < 0.03


def _data(n=256):
    return np.random.default_rng(0).normal(MU, S, (n, 2)).astype("float32")


def test_fit_trains():
    model = EDM(mlp(), seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    x0 = _data(512)
    noisy = x0 + 0.5 * np.random.default_rng(1).normal(size=x0.shape).astype("float32")

    def denoising_error():  # at a fixed noise level, with fixed noise: not as noisy as the epoch loss
        return float(np.mean((keras.ops.convert_to_numpy(model.denoise(noisy, 0.5)) - x0) ** 2))

    before = denoising_error()
    losses = model.fit(_data(), epochs=3, batch_size=64, verbose=0).history["loss"]
    optimal = S**2 * 0.25 / (S**2 + 0.25)  # the posterior variance at sigma = 0.5: the exact denoiser's error
    after = denoising_error()
    assert np.isfinite(losses).all() and after < before and after < 1.15 * optimal


def test_lognormal_training_sigmas():
    sigma = keras.ops.convert_to_numpy(EDMProcess().sample_t(20000, keras.random.SeedGenerator(0)))
    assert abs(np.log(sigma).mean() + 1.2) < 0.05 and abs(np.log(sigma).std() - 1.2) < 0.05


def test_class_conditioning_guidance_and_saving(tmp_path):
    model = EDM(mlp(num_classes=2), EDMProcess(sigma_max=20.0), num_classes=2, seed=0)
    model.compile()
    labels = np.arange(32) % 2
    model.fit({"images": _data(32), "labels": labels}, epochs=1, batch_size=16, verbose=0)
    path = str(tmp_path / "edm.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, EDM) and loaded.process.sigma_max == 20.0
    kwargs = dict(num_steps=4, seed=1, labels=[0, 1, 1], guidance_scale=2.0, verbose=False, return_float=True)
    np.testing.assert_allclose(loaded.generate(3, **kwargs), model.generate(3, **kwargs), atol=1e-6)


def test_clear_errors():
    with pytest.raises(ValueError, match="sigma_min < sigma_max.*sigma_min=80"):
        EDMProcess(sigma_min=80.0, sigma_max=0.002)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        EDMProcess(sigma_min=1.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="'edm' does not fit RectifiedFlow.*EDMProcess"):
        EDM(mlp(), RectifiedFlow())
    with pytest.raises(ValueError, match="'edm' does not fit ContinuousCosineSchedule"):
        EDM(mlp(), ContinuousCosineSchedule())
    with pytest.raises(ValueError, match="'v_prediction' does not fit EDMProcess"):
        EDM(mlp(), prediction_type="v_prediction")
    with pytest.raises(ValueError, match="timestep_spacing='trailing' does not apply"):
        exact_model().generate(2, timestep_spacing="trailing", verbose=False)
