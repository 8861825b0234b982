"""Noise schedules against diffusers' DDPMScheduler/DDIMScheduler."""

import numpy as np
import pytest
from keras import ops

from keras_diffusion.processes import DiscreteVPSchedule

diffusers = pytest.importorskip("diffusers", reason="diffusers is the test-only numerical oracle")

DIFFUSERS_NAMES = {"linear": "linear", "cosine": "squaredcos_cap_v2", "sigmoid": "sigmoid"}


@pytest.mark.parametrize("name", ["linear", "cosine", "sigmoid"])
def test_schedules_match_diffusers(name):
    ours = DiscreteVPSchedule(name, num_train_timesteps=1000)
    theirs = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=DIFFUSERS_NAMES[name])
    np.testing.assert_allclose(ours.betas, theirs.betas.numpy(), atol=1e-5)
    np.testing.assert_allclose(ours.alphas_cumprod, theirs.alphas_cumprod.numpy(), atol=1e-5)


def test_cosine_betas_are_clipped():
    schedule = DiscreteVPSchedule("cosine", num_train_timesteps=1000)
    assert schedule.betas.max() == pytest.approx(0.999)
    assert np.all(np.diff(schedule.alphas_cumprod) < 0)


def test_derived_quantities_are_consistent():
    s = DiscreteVPSchedule("linear")
    np.testing.assert_allclose(s.sqrt_alphas_cumprod**2 + s.sqrt_one_minus_alphas_cumprod**2, 1.0)
    np.testing.assert_allclose(s.train_sigmas**2, 1.0 / s.snr)
    # Ho et al.: the posterior variance at t is below beta_t, and 0 at t = 0.
    assert s.posterior_variance[0] == 0.0
    assert np.all(s.posterior_variance[1:] < s.betas[1:])


def test_add_noise_matches_diffusers():
    import torch

    ours = DiscreteVPSchedule("cosine")
    theirs = diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=(3, 4, 4, 2)).astype("float32")
    noise = rng.normal(size=x0.shape).astype("float32")
    t = np.array([0, 500, 999])
    expected = theirs.add_noise(torch.tensor(x0), torch.tensor(noise), torch.tensor(t)).numpy()
    got = ops.convert_to_numpy(ours.add_noise(x0, noise, ops.convert_to_tensor(t, "int32")))
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("num_steps", [1, 7, 50, 1000])
def test_timestep_spacing_matches_diffusers(spacing, num_steps):
    theirs = diffusers.DDIMScheduler(timestep_spacing=spacing)
    theirs.set_timesteps(num_steps)
    ours = DiscreteVPSchedule().inference_timesteps(num_steps, spacing)
    np.testing.assert_array_equal(ours, theirs.timesteps.numpy())


def test_bad_arguments_have_clear_errors():
    with pytest.raises(ValueError, match="Unknown beta_schedule: 'quadratic'"):
        DiscreteVPSchedule("quadratic")
    with pytest.raises(ValueError, match="num_steps=1001 is larger than the 1000 timesteps"):
        DiscreteVPSchedule().inference_timesteps(1001)
    with pytest.raises(ValueError, match="Unknown timestep_spacing"):
        DiscreteVPSchedule().inference_timesteps(10, "uniform")
    with pytest.raises(ValueError, match="positive integer"):
        DiscreteVPSchedule().inference_timesteps(0)


def test_config_round_trip():
    s = DiscreteVPSchedule("sigmoid", num_train_timesteps=200, beta_start=2e-4, beta_end=0.03)
    again = DiscreteVPSchedule.from_config(s.get_config())
    np.testing.assert_array_equal(again.alphas_cumprod, s.alphas_cumprod)


# ------------------------------------------------------ the process contract, for every process
import keras  # noqa: E402

from keras_diffusion.processes import ContinuousCosineSchedule  # noqa: E402
from keras_diffusion.processes import EDMProcess  # noqa: E402
from keras_diffusion.processes import RectifiedFlow  # noqa: E402

PROCESSES = {
    "discrete_vp": DiscreteVPSchedule("cosine"),
    "continuous_cosine": ContinuousCosineSchedule(),
    "rectified_flow": RectifiedFlow(),
    "rectified_flow_shift3": RectifiedFlow(shift=3.0, time_sampling="uniform"),
    "edm": EDMProcess(),
}


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_marginals_follow_the_kind_and_sigma_hat_is_sigma_over_alpha(name):
    process = PROCESSES[name]
    t = process.sample_t(256, keras.random.SeedGenerator(0))
    alpha, sigma = (ops.convert_to_numpy(v).astype("float64") for v in process.alpha_sigma(t))
    identity = {"vp": alpha**2 + sigma**2, "flow": alpha + sigma, "ve": alpha}[process.kind]
    np.testing.assert_allclose(identity, 1.0, atol=1e-5)
    sigma_hat = ops.convert_to_numpy(process.t_to_sigma(t))
    keep = alpha > 1e-3  # sigma_hat is infinite where the signal is gone
    np.testing.assert_allclose(sigma_hat[keep], (sigma / alpha)[keep], rtol=1e-4)
    np.testing.assert_allclose(ops.convert_to_numpy(process.sigma_to_alpha(sigma_hat[keep])), alpha[keep], rtol=1e-4)
    # add_noise of N(mu, s^2) data has mean alpha mu and variance alpha^2 s^2 + sigma^2, for any data shape.
    x0 = np.full((256, 3, 2), 0.5, "float32")
    noise = np.random.default_rng(0).normal(size=x0.shape).astype("float32")
    x_t = ops.convert_to_numpy(process.add_noise(x0, noise, t))
    np.testing.assert_allclose(x_t, alpha[:, None, None] * 0.5 + sigma[:, None, None] * noise, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_t_to_sigma_hat_round_trip(name):
    process = PROCESSES[name]
    if process.kind == "ve":
        t = np.array([0.002, 0.5, 80.0], "float32")
    elif name == "discrete_vp":
        t = np.array([0, 10, 500, 999], "float32")
    else:
        t = np.array([0.001, 0.25, 0.5, 0.9], "float32")
    back = ops.convert_to_numpy(process.sigma_to_t(process.t_to_sigma(t)))
    np.testing.assert_allclose(back, t, rtol=1e-4, atol=2e-3 if name == "discrete_vp" else 1e-6)


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_inference_levels_descend_to_zero_within_the_range_and_the_prior_is_noise(name):
    process = PROCESSES[name]
    sigmas = process.sigmas(10)
    assert sigmas.shape == (11,) and sigmas.dtype == np.float32 and sigmas[-1] == 0
    assert np.all(np.diff(sigmas) < 0)
    sigma_min, sigma_max = process.sigma_range
    assert sigma_min < sigma_max and sigmas[0] <= sigma_max * (1 + 1e-5)
    std = process.prior_std(sigmas[0])
    if process.kind == "ve":
        assert std == pytest.approx(sigmas[0])
    else:  # x_T = eps in x_t space
        assert std * float(ops.convert_to_numpy(process.sigma_to_alpha(np.array([sigmas[0]])))[0]) == pytest.approx(1.0)
    assert type(process).from_config(process.get_config()).get_config() == process.get_config()


def test_rectified_flow_time_sampling_and_shift():
    seed = 3
    for sampling, expected_mean in (("uniform", 0.5), ("logit_normal", 0.5), ("mode", 0.5)):
        t = ops.convert_to_numpy(RectifiedFlow(time_sampling=sampling).sample_t(20000, keras.random.SeedGenerator(seed)))
        assert t.min() >= 0 and t.max() <= 1 and abs(t.mean() - expected_mean) < 0.02
    u = ops.convert_to_numpy(keras.random.uniform((1000,), seed=keras.random.SeedGenerator(seed)))
    shifted = ops.convert_to_numpy(RectifiedFlow(shift=3.0, time_sampling="uniform").sample_t(1000, keras.random.SeedGenerator(seed)))
    np.testing.assert_allclose(shifted, 3 * u / (1 + 2 * u), rtol=1e-5)
    # Logit-normal times are concentrated in the middle; "uniform" ones are not.
    logit = ops.convert_to_numpy(RectifiedFlow().sample_t(20000, keras.random.SeedGenerator(seed)))
    assert np.mean(np.abs(logit - 0.5) < 0.25) > 0.65 > np.mean(np.abs(u - 0.5) < 0.25)
    times = RectifiedFlow(shift=3.0).sigmas(4)
    uniform = np.linspace(0.9999, 0.0, 5)  # uniform in t from t_max, then SD3's shift
    np.testing.assert_allclose(times / (1 + times), 3 * uniform / (1 + 2 * uniform), rtol=1e-5)


def test_network_time_of_each_process():
    t = np.array([0.25, 0.5], "float32")
    np.testing.assert_allclose(ops.convert_to_numpy(RectifiedFlow().network_time(t)), t)
    # A DDPM-style sinusoidal embedding (build_unet) needs the range of integer timesteps.
    scaled = RectifiedFlow(time_scale=1000.0)
    np.testing.assert_allclose(ops.convert_to_numpy(scaled.network_time(t)), 1000 * t)
    assert RectifiedFlow.from_config(scaled.get_config()).time_scale == 1000.0
    with pytest.raises(ValueError, match="time_scale must be positive.*time_scale=0"):
        RectifiedFlow(time_scale=0)
    np.testing.assert_allclose(ops.convert_to_numpy(EDMProcess().network_time(t)), np.log(t) / 4, rtol=1e-6)
    cosine = ContinuousCosineSchedule()
    np.testing.assert_allclose(ops.convert_to_numpy(cosine.network_time(t)),
                               ops.convert_to_numpy(cosine.sigma(t)) ** 2, rtol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(DiscreteVPSchedule().network_time(np.array([3, 7]))), [3.0, 7.0])
