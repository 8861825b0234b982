"""DDPM and DDIM steps and trajectories against diffusers, given the same model outputs and noise."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_diffusion.models import DDPM
from keras_diffusion.processes import DiscreteVPSchedule
from keras_diffusion.samplers import ddim_step
from keras_diffusion.samplers import ddpm_step
from keras_diffusion.samplers import get_sampler

diffusers = pytest.importorskip("diffusers", reason="diffusers is the test-only numerical oracle")
torch = pytest.importorskip("torch", reason="diffusers runs on torch")

SHAPE = (2, 4, 4, 1)
DIFFUSERS_NAMES = {"linear": "linear", "cosine": "squaredcos_cap_v2", "sigmoid": "sigmoid"}


class _Function(keras.layers.Layer):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def call(self, x, t):
        return self.fn(x, t)

    def compute_output_shape(self, x_shape, t_shape):
        return x_shape


def _stand_in_network(fn):
    """A functional network whose output is `fn(x, t)`: a known function, no weights."""
    x = keras.Input(SHAPE[1:])
    t = keras.Input(())
    return keras.Model([x, t], _Function(fn)(x, t))


def _keras_fn(x, t):
    t = ops.reshape(t, (-1, 1, 1, 1))
    return 0.5 * x * ops.cos(t / 1000.0) + 0.1 * ops.sin(t / 100.0)


def _torch_fn(x, t):
    t = torch.tensor(float(t))
    return 0.5 * x * torch.cos(t / 1000.0) + 0.1 * torch.sin(t / 100.0)


def _model(schedule, prediction_type, output):
    net = _stand_in_network(lambda x, t: x * 0.0 + ops.convert_to_tensor(output))
    return DDPM(net, schedule, prediction_type=prediction_type)


def _our_step(step_fn, model, x, timesteps, i, clip, noise, eta=0.0):
    schedule = model.schedule
    t = int(timesteps[i])
    a_t = schedule.alphas_cumprod[t]
    a_prev = schedule.alphas_cumprod[timesteps[i + 1]] if i + 1 < len(timesteps) else 1.0
    x0, eps = model.predict_x0_eps(x, ops.full((x.shape[0],), t, "int32"))
    if clip:
        x0 = ops.clip(x0, -1.0, 1.0)
    out = step_fn(x, x0, eps, np.float32(a_t), np.float32(a_prev), noise=noise, eta=eta)
    return ops.convert_to_numpy(out)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("beta_schedule", ["linear", "cosine"])
@pytest.mark.parametrize("i", [0, 25, 49])
def test_ddpm_step_matches_diffusers(prediction_type, clip, beta_schedule, i):
    rng = np.random.default_rng(i)
    x = rng.normal(size=SHAPE).astype("float32")
    output = rng.normal(size=SHAPE).astype("float32")
    theirs = diffusers.DDPMScheduler(
        beta_schedule=DIFFUSERS_NAMES[beta_schedule], prediction_type=prediction_type, clip_sample=clip
    )
    theirs.set_timesteps(50)
    t = int(theirs.timesteps[i])
    expected = theirs.step(
        torch.tensor(output), t, torch.tensor(x), generator=torch.Generator().manual_seed(i)
    ).prev_sample.numpy()
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(i)).numpy()

    model = _model(DiscreteVPSchedule(beta_schedule), prediction_type, output)
    timesteps = model.schedule.inference_timesteps(50)
    got = _our_step(ddpm_step, model, x, timesteps, i, clip, noise)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("i", [0, 10, 19])
def test_ddim_step_matches_diffusers(prediction_type, clip, eta, i):
    rng = np.random.default_rng(100 + i)
    x = rng.normal(size=SHAPE).astype("float32")
    output = rng.normal(size=SHAPE).astype("float32")
    noise = rng.normal(size=SHAPE).astype("float32")
    theirs = diffusers.DDIMScheduler(prediction_type=prediction_type, clip_sample=clip)
    theirs.set_timesteps(20)
    t = int(theirs.timesteps[i])
    expected = theirs.step(
        torch.tensor(output), t, torch.tensor(x), eta=eta, variance_noise=torch.tensor(noise)
    ).prev_sample.numpy()

    model = _model(DiscreteVPSchedule(), prediction_type, output)
    timesteps = model.schedule.inference_timesteps(20)
    got = _our_step(ddim_step, model, x, timesteps, i, clip, noise, eta=eta)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_trajectory_matches_diffusers_loop(spacing, clip, prediction_type):
    noise = np.random.default_rng(7).normal(size=SHAPE).astype("float32")
    theirs = diffusers.DDIMScheduler(
        beta_schedule="squaredcos_cap_v2", timestep_spacing=spacing, clip_sample=clip,
        prediction_type=prediction_type,
    )
    theirs.set_timesteps(25)
    x = torch.tensor(noise)
    for t in theirs.timesteps:
        x = theirs.step(_torch_fn(x, int(t)), t, x).prev_sample
    expected = x.numpy()

    model = DDPM(_stand_in_network(_keras_fn), DiscreteVPSchedule("cosine"), prediction_type=prediction_type)
    got = model.generate(
        SHAPE[0], sampler="ddim", num_steps=25, initial_noise=noise, timestep_spacing=spacing,
        clip_sample=clip, return_float=True, verbose=False,
    )
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_unknown_sampler_is_a_clear_error():
    with pytest.raises(ValueError, match="Unknown sampler: 'plms'. Use one of"):
        get_sampler("plms")
