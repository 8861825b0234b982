"""Classifier-free guidance: it lives in `DiffusionModel.denoise`, so every sampler has it."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_diffusion.models import DDPM
from keras_diffusion.models import ScoreModel
from keras_diffusion.processes import DiscreteVPSchedule
from keras_diffusion.processes import VESDE
from keras_diffusion.samplers import SAMPLERS
from keras_diffusion.samplers import karras_sigmas
from keras_diffusion.samplers import sample
from oracles import exact_denoiser
from oracles import exact_flow_map
from oracles import langevin_moments

SHAPE = (4, 4, 1)
NUM_CLASSES = 3


def _conditional_fn(inputs):
    x, t, labels = inputs
    t = ops.reshape(t, (-1, 1, 1, 1))
    shift = ops.reshape(ops.cast(labels, "float32") + 1.0, (-1, 1, 1, 1)) / (NUM_CLASSES + 1)
    return 0.5 * x * ops.cos(t / 1000.0) + 0.3 * shift * ops.sin(t / 300.0 + 1.0)


def _model(prediction_type="epsilon"):
    """A class-conditional DDPM with a stand-in network: a known function of (x, t, label)."""
    x = keras.Input(SHAPE)
    t = keras.Input(())
    labels = keras.Input((), dtype="int32")
    network = keras.Model([x, t, labels], keras.layers.Lambda(_conditional_fn)([x, t, labels]))
    return DDPM(network, DiscreteVPSchedule("linear"), prediction_type=prediction_type, num_classes=NUM_CLASSES)


def _x(sigma_max):
    return (np.random.default_rng(0).normal(size=(3,) + SHAPE) * np.sqrt(1 + sigma_max**2)).astype("float32")


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_guided_denoiser_is_the_cfg_combination(prediction_type):
    """`D_w = D_uncond + w * (D_cond - D_uncond)`: x0 is affine in the network output."""
    model = _model(prediction_type)
    labels = ops.convert_to_tensor([0, 1, 2], "int32")
    null = ops.full((3,), NUM_CLASSES, "int32")
    x, sigma = _x(5.0), np.full((3,), 5.0, "float32")
    conditional = ops.convert_to_numpy(model.denoise(x, sigma, labels))
    unconditional = ops.convert_to_numpy(model.denoise(x, sigma, null))
    guided = ops.convert_to_numpy(model.denoise(x, sigma, labels, guidance_scale=4.0))
    np.testing.assert_allclose(guided, unconditional + 4.0 * (conditional - unconditional), rtol=1e-4, atol=1e-4)
    assert not np.allclose(guided, conditional, atol=1e-3)


# The score samplers nest loops (Langevin steps, RK45's adaptive while-loop) that take JAX seconds to
# compile per call; test_guided_score_samplers_sample_the_guided_gaussian checks them through generate().
# "meanflow" needs a MeanFlow model's interval denoiser.
@pytest.mark.parametrize("name", sorted(set(SAMPLERS) - {"langevin", "pc", "ode_rk45", "meanflow"}))
def test_guidance_scale_one_is_the_conditional_model_for_every_sampler(name):
    model = _model()
    labels = ops.convert_to_tensor([0, 1, 2], "int32")
    sigmas = karras_sigmas(5, *model.process.sigma_range)
    x = _x(float(sigmas[0]))

    def conditional(x, sigma):
        return model.denoise(x, sigma, labels)

    def guided(x, sigma):
        return model.denoise(x, sigma, labels, guidance_scale=1.0)

    expected = ops.convert_to_numpy(sample(name, conditional, x, sigmas, seed=0))
    np.testing.assert_allclose(ops.convert_to_numpy(sample(name, guided, x, sigmas, seed=0)), expected,
                               rtol=1e-5, atol=1e-5)


def test_generate_guides_a_multistep_sampler():
    """Through `generate`'s compiled loop: scale 1 equals no guidance, scale 3 does not."""
    model = _model()
    kwargs = dict(sampler="dpmpp_2m", num_steps=5, sigma_schedule="karras", seed=0, verbose=False,
                  return_float=True, labels=[0, 1, 2])
    plain = model.generate(3, **kwargs)
    np.testing.assert_allclose(model.generate(3, guidance_scale=1.0, **kwargs), plain, rtol=1e-5, atol=1e-5)
    assert not np.allclose(model.generate(3, guidance_scale=3.0, **kwargs), plain, atol=1e-3)


def test_guidance_without_labels_or_on_an_unconditional_model_is_a_clear_error():
    with pytest.raises(ValueError, match="guidance_scale needs labels"):
        _model().generate(2, sampler="euler", num_steps=3, guidance_scale=2.0, verbose=False)
    x = keras.Input(SHAPE)
    t = keras.Input(())
    unconditional = DDPM(keras.Model([x, t], keras.layers.Lambda(lambda a: a[0] * 0.5)([x, t])))
    with pytest.raises(ValueError, match="This model is unconditional"):
        unconditional.generate(2, sampler="heun", num_steps=3, guidance_scale=2.0, verbose=False)
    with pytest.raises(ValueError, match="This model is unconditional"):
        unconditional.invert(np.zeros((2,) + SHAPE, "float32"), labels=[0, 1])


class _ExactConditionalEpsilon(keras.layers.Layer):
    """`[x_t, log(sigma), label] -> eps` of the exact denoiser of `N(CLASS_MEANS[label], S^2)` data (VE SDE)."""

    def call(self, inputs):
        x, log_sigma, labels = inputs
        sigma = ops.reshape(ops.exp(log_sigma), (-1, 1))
        mu = ops.reshape(ops.take(ops.convert_to_tensor(CLASS_MEANS), labels), (-1, 1))
        return (x - exact_denoiser(x, sigma, mu=mu)) / sigma


# Class 0, class 1, and the null label's (unconditional) mean.
CLASS_MEANS = np.array([-0.5, 0.5, 0.1], "float32")


# Guidance mixes two exact Gaussian denoisers with the same variance: D_u + w (D_c - D_u) is the exact denoiser
# of N(mu_u + w (mu_c - mu_u), S^2), so each score sampler must sample (or, as an ODE, map to) that Gaussian.
@pytest.mark.parametrize("name", ["pc", "langevin", "rk4", "ode_rk45"])
def test_guided_score_samplers_sample_the_guided_gaussian(name):
    x, t, labels = keras.Input((2,)), keras.Input(()), keras.Input((), dtype="int32")
    network = keras.Model([x, t, labels], _ExactConditionalEpsilon()([x, t, labels]))
    model = ScoreModel(network, sde=VESDE(sigma_max=20.0), num_classes=2)
    labels = np.arange(1024) % 2
    noise = np.random.default_rng(0).normal(size=(1024, 2)).astype("float32")
    steps = {"pc": 20, "langevin": 10, "rk4": 20, "ode_rk45": 2}[name]
    got = model.generate(1024, sampler=name, num_steps=steps, labels=labels, guidance_scale=3.0,
                         initial_noise=noise, seed=0, return_float=True, verbose=False)
    guided = CLASS_MEANS[2] + 3.0 * (CLASS_MEANS[:2] - CLASS_MEANS[2])  # -1.7 and 1.7
    if name in ("rk4", "ode_rk45"):
        exact = exact_flow_map(noise * 20.0, 20.0, mu=guided[labels, None])
        np.testing.assert_allclose(got, exact, atol=2e-3 if name == "ode_rk45" else 0.02)
        return
    for k in (0, 1):
        samples = got[labels == k]
        if name == "langevin":
            expected, _ = langevin_moments(model.process.sigmas(steps), 20.0, mu=guided[k])
        else:  # PC moves the mean to mu_w up to a factor S^2 / (S^2 + sigma_max^2)
            expected = guided[k]
        assert abs(samples.mean() - expected) < 4 * samples.std() / np.sqrt(samples.size), (k, samples.mean(), expected)
