"""Noise-level schedules, the model's sigma contract, an analytic oracle, and peer bugs.

The oracle (Karras et al. 2022; DESIGN.md): for data ~ N(0, s_d^2) the ideal
denoiser is `D(x, sigma) = x * s_d^2 / (s_d^2 + sigma^2)`, and the
probability-flow ODE maps `x(sigma_max)` to `x * s_d / sqrt(s_d^2 + sigma_max^2)`
exactly. Deterministic samplers must land there; their error must shrink
with their order as the steps grow.
"""

import keras
import numpy as np
import pytest
from keras import ops

from keras_diffusion.models import DDPM
from keras_diffusion.processes import DiscreteVPSchedule
from keras_diffusion.samplers import SAMPLERS
from keras_diffusion.samplers import check_sigmas
from keras_diffusion.samplers import exponential_sigmas
from keras_diffusion.samplers import get_sigmas
from keras_diffusion.samplers import karras_sigmas
from keras_diffusion.samplers import sample

S_D = 0.5
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
DETERMINISTIC = ("ddim", "euler", "heun", "dpmpp_2m", "lms", "unipc", "rk4", "ode_rk45")
STOCHASTIC = ("ddpm", "euler_ancestral", "dpmpp_2m_sde")


def ideal_denoiser(x, sigma):
    sigma = ops.reshape(sigma, (-1, 1, 1, 1))
    return x * S_D**2 / (S_D**2 + sigma**2)


def _x_T(batch=64):
    return (np.random.default_rng(0).normal(size=(batch, 2, 2, 1)) * SIGMA_MAX).astype("float32")


def _exact(x):
    return x * S_D / np.sqrt(S_D**2 + SIGMA_MAX**2)


def _tiny_ddpm():
    """A DDPM whose stand-in network predicts `eps = t / 1000` everywhere."""
    x = keras.Input((4, 4, 1))
    t = keras.Input(())
    out = keras.layers.Lambda(lambda a: a[0] * 0.0 + ops.reshape(a[1], (-1, 1, 1, 1)) / 1000.0)([x, t])
    return DDPM(keras.Model([x, t], out), DiscreteVPSchedule("linear"))


def test_karras_and_exponential_schedules_follow_their_formulas():
    sigmas = karras_sigmas(10, SIGMA_MIN, SIGMA_MAX, rho=7.0)
    assert sigmas.dtype == np.float32 and sigmas.shape == (11,)
    np.testing.assert_allclose([sigmas[0], sigmas[-2]], [SIGMA_MAX, SIGMA_MIN], rtol=1e-6)
    # sigma^(1/rho) is evenly spaced (EDM eq. 5).
    np.testing.assert_allclose(np.diff(np.diff(sigmas[:-1].astype("float64") ** (1 / 7.0))), 0.0, atol=1e-5)
    log_exp = np.log(exponential_sigmas(10, SIGMA_MIN, SIGMA_MAX)[:-1].astype("float64"))
    np.testing.assert_allclose(np.diff(np.diff(log_exp)), 0.0, atol=1e-5)


def test_sigma_schedules_end_in_exactly_one_zero():
    """Regression test for the repeated-final-sigma bug.

    diffusers' DPMSolverMultistepScheduler with `use_karras_sigmas=True` once
    appended the last sigma again instead of 0, so the final step had size 0
    and images kept residual noise: huggingface/diffusers#5689, fixed in
    huggingface/diffusers#6477. Every schedule here must strictly decrease
    and end with one 0, and a sampler on it must reach the clean sample.
    """
    model = _tiny_ddpm()
    for name in ("model", "karras", "exponential"):
        sigmas = get_sigmas(model.process, 12, name)
        assert sigmas[-1] == 0.0 and sigmas[-2] > 0.0, name
        assert np.all(np.diff(sigmas) < 0), name
    # The last step of DPM++(2M) returns the denoised image: no noise is left.
    x = _x_T()
    out = ops.convert_to_numpy(sample("dpmpp_2m", ideal_denoiser, x, karras_sigmas(40, SIGMA_MIN, SIGMA_MAX)))
    assert np.abs(out - _exact(x)).max() < 0.02 * np.abs(_exact(x)).max()


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_samplers_solve_the_gaussian_ode(name):
    """Analytic oracle: 40 Karras steps land within 8% (first order), 2% (second), 1% (lms).

    (A float64 numpy Euler gives -7.0% and Heun +1.0% at 40 steps here: these
    bounds are the methods' discretization error, not slack.)
    """
    x = _x_T()
    out = ops.convert_to_numpy(sample(name, ideal_denoiser, x, karras_sigmas(40, SIGMA_MIN, SIGMA_MAX)))
    scale = np.abs(_exact(x)).max()
    tolerance = {"ddim": 0.08, "euler": 0.08, "heun": 0.02, "dpmpp_2m": 0.02, "lms": 0.01, "unipc": 0.02, "rk4": 0.01,
                 "ode_rk45": 0.001}[name]
    assert np.abs(out - _exact(x)).max() < tolerance * scale


@pytest.mark.parametrize("name,order", [("euler", 1), ("heun", 2), ("dpmpp_2m", 2), ("unipc", 2)])
def test_error_shrinks_with_the_order_of_the_method(name, order):
    """Doubling the steps divides the error by about 2**order."""
    x = _x_T(8)
    errors = []
    for steps in (20, 40):
        out = ops.convert_to_numpy(sample(name, ideal_denoiser, x, exponential_sigmas(steps, SIGMA_MIN, SIGMA_MAX)))
        errors.append(np.abs(out - _exact(x)).max())
    assert errors[0] / errors[1] > 2**order * 0.7


def _ancestral_std(sigmas):
    """The exact std after ancestral steps on N(0, s_d^2) data (a variance recursion)."""
    var = 1.0 + float(sigmas[0]) ** 2
    for sigma, sigma_next in zip(sigmas[:-1].astype("float64"), sigmas[1:].astype("float64")):
        up2 = sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2
        down = np.sqrt(sigma_next**2 - up2)
        var = var * ((S_D**2 + down * sigma) / (S_D**2 + sigma**2)) ** 2 + up2
    return np.sqrt(var)


@pytest.mark.parametrize("name", STOCHASTIC)
def test_stochastic_samplers_sample_the_data_distribution(name):
    """On the ideal denoiser, 100 steps from N(0, 1 + sigma_max^2) noise.

    Ancestral steps (DDPM, Euler ancestral) are first order: their std is
    0.471, not 0.5, after 100 Karras steps, which the exact variance
    recursion predicts; DPM++(2M) SDE reaches 0.5. Within 2% (8192 samples).
    """
    sigmas = karras_sigmas(100, SIGMA_MIN, SIGMA_MAX)
    x = (np.random.default_rng(1).normal(size=(512, 4, 4, 1)) * np.sqrt(1 + SIGMA_MAX**2)).astype("float32")
    out = ops.convert_to_numpy(sample(name, ideal_denoiser, x, sigmas, seed=0))
    expected = S_D if name == "dpmpp_2m_sde" else _ancestral_std(sigmas)
    assert abs(out.std() - expected) < 0.02 * expected
    assert abs(out.mean()) < 0.02


# The score samplers nest loops (Langevin steps, RK45's adaptive while-loop) that take JAX ~10 s to
# compile per call; tests/test_score.py checks them on the 2-D oracle. "meanflow" (deterministic) needs a
# MeanFlow model's interval denoiser.
@pytest.mark.parametrize("name", sorted(set(SAMPLERS) - {"langevin", "pc", "ode_rk45", "meanflow"}))
def test_the_seed_reaches_every_step_of_stochastic_samplers(name):
    """Regression test: the seed must reach the per-step (SDE) noise.

    k-diffusion's DPM++ SDE samplers drew their Brownian-tree noise without
    the user's seed, so the same seed gave different images
    (huggingface/diffusers#3001, discussion of huggingface/diffusers#2064);
    diffusers' k-diffusion pipeline ignored the generator for
    `sample_dpmpp_2m_sde` (huggingface/diffusers#7421). Here the same seed
    gives the same samples, and another seed other samples (stochastic only).
    """
    x = _x_T(4)
    sigmas = karras_sigmas(6, SIGMA_MIN, SIGMA_MAX)
    options = {"s_churn": 10.0} if name in ("euler", "heun") else {}
    a, b, c = (ops.convert_to_numpy(sample(name, ideal_denoiser, x, sigmas, seed=s, **options)) for s in (1, 1, 2))
    np.testing.assert_array_equal(a, b)
    if name in DETERMINISTIC and not options:
        np.testing.assert_array_equal(a, c)
    else:
        assert not np.allclose(a, c)


def test_sigma_to_t_inverts_the_model_schedule_and_interpolates_in_log_sigma():
    model = _tiny_ddpm()
    timesteps = model.schedule.inference_timesteps(25, "trailing")
    sigmas = model.process.sigmas(25, "trailing")
    np.testing.assert_allclose(ops.convert_to_numpy(model.process.sigma_to_t(sigmas[:-1])), timesteps, atol=2e-3)
    # Halfway in log-sigma between timesteps 10 and 11 is t = 10.5.
    mid = np.sqrt(model.schedule.train_sigmas[10] * model.schedule.train_sigmas[11]).astype("float32")
    np.testing.assert_allclose(ops.convert_to_numpy(model.process.sigma_to_t(np.array([mid]))), [10.5], atol=1e-3)
    assert model.process.sigma_range == (pytest.approx(model.schedule.train_sigmas[0]), pytest.approx(model.schedule.train_sigmas[-1]))


def test_ddim_steps_between_the_listed_timesteps_for_every_spacing():
    """Regression test for off-by-one / wrong previous timesteps.

    diffusers computes the previous timestep as `t - T // num_steps`, which is
    wrong for "linspace" (and was for "trailing" in DDPM):
    huggingface/diffusers#9261, #11347, #12633. Here each step goes from one
    listed timestep's noise level to the next one's, whatever the spacing:
    checked against a plain numpy DDIM over consecutive pairs of
    `inference_timesteps`, in the alphas_cumprod form of Song et al. eq. 12.
    """
    model = _tiny_ddpm()
    abar = model.schedule.alphas_cumprod
    for spacing in ("leading", "trailing", "linspace"):
        timesteps = model.schedule.inference_timesteps(7, spacing)
        sigmas = model.process.sigmas(7, spacing)
        x_t = np.full((1, 4, 4, 1), 0.3, "float64")
        trajectory = [x_t]
        for t, t_prev in zip(timesteps, list(timesteps[1:]) + [None]):
            a_t, a_prev = abar[t], (abar[t_prev] if t_prev is not None else 1.0)
            eps = t / 1000.0
            x0 = (x_t - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t)
            x_t = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev) * eps
            trajectory.append(x_t)
        # Ours, in sigma space; the last noise level is 0, where x = x_t.
        x = trajectory[0] * np.sqrt(1 + sigmas[0].astype("float64") ** 2)
        ours = ops.convert_to_numpy(sample("ddim", model.denoise, x.astype("float32"), sigmas))
        np.testing.assert_allclose(ours, trajectory[-1], rtol=1e-4, atol=1e-5)


def test_bad_schedules_are_clear_errors():
    with pytest.raises(ValueError, match="Unknown sigma_schedule: 'cosine'. Use one of"):
        get_sigmas(_tiny_ddpm().process, 10, "cosine")
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        karras_sigmas(10, 1.0, 0.5)
    with pytest.raises(ValueError, match="num_steps must be a positive integer"):
        exponential_sigmas(0, 0.1, 1.0)
    with pytest.raises(ValueError, match="positive except the last"):
        check_sigmas([1.0, 0.0, 0.0])
