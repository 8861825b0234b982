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
    np.testing.assert_allclose(s.sigmas**2, 1.0 / s.snr)
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
