"""Every sampler against diffusers, given the same network outputs and noise.

The network is a stand-in: a known function of `(x, t)` with no weights, so
the only differences left are the samplers' arithmetic. Our samplers run on
`DDPM.denoise` in sigma space; diffusers' Euler-family schedulers work in
sigma space too (their `scale_model_input` divides by `sqrt(1 + sigma**2)`),
while its DDPM, DDIM and DPM-Solver work on `x_t = x / sqrt(1 + sigma**2)`.
Per-step noise is ours (`step_noise`), handed to diffusers by replacing its
`randn_tensor`.
"""

import keras
import numpy as np
import pytest
from keras import ops

from keras_diffusion.compile import CompiledLoop
from keras_diffusion.models import DDPM
from keras_diffusion.processes import DiscreteVPSchedule
from keras_diffusion.samplers import SAMPLERS
from keras_diffusion.samplers import get_sampler
from keras_diffusion.samplers import karras_sigmas
from keras_diffusion.samplers import num_model_evaluations
from keras_diffusion.samplers import run_steps
from keras_diffusion.samplers import sample
from keras_diffusion.samplers import step_noise

diffusers = pytest.importorskip("diffusers", reason="diffusers is the test-only numerical oracle")
torch = pytest.importorskip("torch", reason="diffusers runs on torch")

SHAPE = (2, 4, 4, 1)
SEED = 5


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


def _model(beta_schedule="linear", prediction_type="epsilon"):
    return DDPM(_stand_in_network(_keras_fn), DiscreteVPSchedule(beta_schedule), prediction_type=prediction_type)


def _our_noises(num):
    """The per-step noise our samplers draw with `seed=SEED`, as numpy."""
    seed = keras.random.SeedGenerator(SEED).next()
    return [ops.convert_to_numpy(step_noise(SHAPE, seed, ops.convert_to_tensor(i, "int32"))) for i in range(num)]


@pytest.fixture
def feed_our_noise(monkeypatch):
    """Makes diffusers' schedulers draw our per-step noise, in order."""

    def install(module_name, num):
        queue = [torch.tensor(n) for n in _our_noises(num)]
        module = getattr(diffusers.schedulers, module_name)
        monkeypatch.setattr(module, "randn_tensor", lambda *args, **kwargs: queue.pop(0))
        return queue

    return install


def _run_diffusers(scheduler, x, num_steps):
    scheduler.set_timesteps(num_steps)
    x = torch.tensor(x)
    for t in scheduler.timesteps:
        x = scheduler.step(_torch_fn(scheduler.scale_model_input(x, t), t), t, x).prev_sample
    return x.numpy()


def _start(sigma_max):
    """Initial noise at `sigma_max`, in sigma space, and the same as `x_t`."""
    noise = np.random.default_rng(7).normal(size=SHAPE).astype("float32")
    return noise * np.float32(np.sqrt(1.0 + float(sigma_max) ** 2)), noise


# name, diffusers class, its options, whether diffusers works on x_t (VP) or sigma space.
DIFFUSERS = {
    "euler": ("EulerDiscreteScheduler", {}, False),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}, False),
    "heun": ("HeunDiscreteScheduler", {}, False),
    "lms": ("LMSDiscreteScheduler", {}, False),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}, True),
    "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, True),
    "unipc": ("UniPCMultistepScheduler", {}, True),
}
MODULES = {
    "EulerAncestralDiscreteScheduler": "scheduling_euler_ancestral_discrete",
    "DPMSolverMultistepScheduler": "scheduling_dpmsolver_multistep",
    "DDPMScheduler": "scheduling_ddpm",
}


# diffusers' EulerAncestralDiscreteScheduler has no `use_karras_sigmas` option.
CASES = [(name, karras) for name in sorted(DIFFUSERS) for karras in (False, True)]
CASES.remove(("euler_ancestral", True))


@pytest.mark.parametrize("name,karras", CASES)
def test_trajectory_matches_diffusers(name, karras, feed_our_noise):
    """Whole sampling runs, 10 steps, with and without `use_karras_sigmas`.

    Without Karras sigmas both use "trailing" spacing (diffusers' DPM-Solver
    and UniPC space "leading" and "linspace" over `num_steps + 1` points,
    unlike its other schedulers). With them both span the full training range
    (diffusers' "linspace"). Tolerance 1e-4 relative: float32 arithmetic.
    DPM-Solver and UniPC with Karras sigmas round the network's timestep to an
    integer (ours passes the fractional one), so they agree to 2e-3 instead.
    """
    num_steps = 10
    class_name, options, vp_space = DIFFUSERS[name]
    spacing = "linspace" if karras else "trailing"
    if karras:
        options = {**options, "use_karras_sigmas": True}
    theirs = getattr(diffusers, class_name)(
        beta_start=1e-4, beta_end=0.02, beta_schedule="linear", timestep_spacing=spacing, **options
    )
    model = _model()
    sigmas = karras_sigmas(num_steps, *model.process.sigma_range) if karras else model.process.sigmas(num_steps, spacing)
    x, noise = _start(sigmas[0])
    if class_name in MODULES:
        feed_our_noise(MODULES[class_name], num_steps)
    expected = _run_diffusers(theirs, noise if vp_space else x, num_steps)
    # Heun's list repeats each inner sigma (two model evaluations there). diffusers
    # accumulates alphas_cumprod in float32 (we use float64): 1e-4 apart at the ends.
    np.testing.assert_allclose(sigmas, torch.unique_consecutive(theirs.sigmas).numpy(), rtol=2e-4)
    # diffusers' loop evaluates the model once per entry of `timesteps`.
    assert len(theirs.timesteps) == num_model_evaluations(name, num_steps)
    got = ops.convert_to_numpy(sample(name, model.denoise, x, sigmas, seed=SEED))
    tolerance = 2e-3 if (karras and vp_space) else 1e-4
    np.testing.assert_allclose(got, expected, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("prediction_type,clip", [("epsilon", True), ("sample", False), ("v_prediction", True)])
def test_ddpm_trajectory_matches_diffusers(prediction_type, clip, feed_our_noise):
    """DDPM is the ancestral step with eta=1 on a denoiser that clips (diffusers' DDPMScheduler)."""
    num_steps = 20
    theirs = diffusers.DDPMScheduler(prediction_type=prediction_type, clip_sample=clip)
    model = _model(prediction_type=prediction_type)
    sigmas = model.process.sigmas(num_steps)
    x, noise = _start(sigmas[0])
    feed_our_noise("scheduling_ddpm", num_steps)
    expected = _run_diffusers(theirs, noise, num_steps)

    def denoiser(x, sigma):
        return model.denoise(x, sigma, clip_x0=clip)

    got = ops.convert_to_numpy(sample("ddpm", denoiser, x, sigmas, seed=SEED))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_ddpm_on_consecutive_timesteps_is_ho_et_al_algorithm_2(feed_our_noise):
    """With every training timestep visited (T = 50 here) DDPM is Ho et al.'s Algorithm 2.

    Our DDPM is the DDIM step with eta = 1 in sigma space; diffusers' DDPMScheduler
    uses the paper's posterior mean and `beta_tilde` variance.
    """
    theirs = diffusers.DDPMScheduler(num_train_timesteps=50, beta_start=1e-3, beta_end=0.2, clip_sample=False)
    model = DDPM(_stand_in_network(_keras_fn), DiscreteVPSchedule("linear", 50, 1e-3, 0.2))
    sigmas = model.process.sigmas(50)
    x, noise = _start(sigmas[0])
    feed_our_noise("scheduling_ddpm", 50)
    expected = _run_diffusers(theirs, noise, 50)
    got = ops.convert_to_numpy(sample("ddpm", model.denoise, x, sigmas, seed=SEED))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "prediction_type,clip,eta",
    [("epsilon", False, 0.0), ("v_prediction", True, 0.0), ("epsilon", True, 1.0), ("v_prediction", False, 1.0)],
)
def test_ddim_trajectory_matches_diffusers(prediction_type, clip, eta):
    """DDIM with `eta`, diffusers' clipping rule (clip x0, keep the model's eps), given our noise."""
    num_steps = 20
    theirs = diffusers.DDIMScheduler(prediction_type=prediction_type, clip_sample=clip)
    theirs.set_timesteps(num_steps)
    model = _model(prediction_type=prediction_type)
    sigmas = model.process.sigmas(num_steps)
    x, noise = _start(sigmas[0])
    x_t = torch.tensor(noise)
    for t, step_noise_ in zip(theirs.timesteps, _our_noises(num_steps)):
        x_t = theirs.step(_torch_fn(x_t, t), t, x_t, eta=eta, variance_noise=torch.tensor(step_noise_)).prev_sample
    got = sample("ddim", model.denoise, x, sigmas, seed=SEED, eta=eta, clip_denoised=clip)
    np.testing.assert_allclose(ops.convert_to_numpy(got), x_t.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_generate_ddim_matches_diffusers_loop(spacing, clip, prediction_type):
    """`generate` end to end (initial-noise scaling, compiled loop) against diffusers' DDIM."""
    noise = np.random.default_rng(7).normal(size=SHAPE).astype("float32")
    theirs = diffusers.DDIMScheduler(
        beta_schedule="squaredcos_cap_v2", timestep_spacing=spacing, clip_sample=clip,
        prediction_type=prediction_type,
    )
    expected = _run_diffusers(theirs, noise, 25)
    model = _model("cosine", prediction_type)
    got = model.generate(
        SHAPE[0], sampler="ddim", num_steps=25, initial_noise=noise, timestep_spacing=spacing,
        clip_sample=clip, return_float=True, verbose=False,
    )
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


# The score samplers nest loops (Langevin steps, RK45's adaptive while-loop) that take JAX ~10 s to
# compile per call; tests/test_score.py checks them on the 2-D oracle. "meanflow" runs on MeanFlow
# models only (tests/test_distill.py).
@pytest.mark.parametrize("name", sorted(set(SAMPLERS) - {"langevin", "pc", "ode_rk45", "meanflow"}))
def test_generate_runs_each_sampler_like_one_uninterrupted_loop(name):
    """`generate`'s chunked loop (state and noise carried across chunks) equals one whole loop.

    Both run compiled the same way (`model.jit_compile`): TensorFlow's
    stateless random ops draw other numbers under XLA than without it.
    """
    model = _model()
    got = model.generate(SHAPE[0], sampler=name, num_steps=6, sigma_schedule="karras", seed=3,
                         verbose=False, return_float=True, clip_sample=False)
    sampler = get_sampler(name)
    options = sampler.resolve({"clip_denoised": False} if name == "ddim" else {})
    sigmas = karras_sigmas(6, *model.process.sigma_range)
    x = keras.random.normal(SHAPE, seed=keras.random.SeedGenerator(3)) * float(np.sqrt(1 + sigmas[0] ** 2.0))
    seed = keras.random.SeedGenerator((3 * 7919 + 104729) % (2**31 - 1)).next()  # generate's step-noise stream

    def whole_loop(x, seed):
        state = sampler.initial_state(x, options)
        return run_steps(sampler.step, model.denoise, x, state, ops.convert_to_tensor(sigmas), seed, 0, 6, **options)[0]

    expected = ops.convert_to_numpy(CompiledLoop(whole_loop, model, jit_compile=model.jit_compile)(x, seed))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["euler", "dpmpp_2m", "lms", "unipc"])
def test_model_evaluations_are_counted_right(name):
    """Multistep samplers reuse past evaluations: one evaluation per step.

    Heun's `2N - 1` is checked against diffusers' schedule above: a compiled
    `ops.cond` traces both of its branches, so counting Python calls would
    not count evaluations there. The other samplers share these step bodies'
    one-call structure (ancestral_step, euler_step).
    """
    calls = []

    def denoiser(x, sigma):
        calls.append(1)
        return x * 0.5

    # One step at a time (a callback), so every evaluation runs eagerly and is counted once.
    sample(name, denoiser, np.ones(SHAPE, "float32"), karras_sigmas(5, 0.1, 10.0), seed=0, callback=lambda d: None)
    assert len(calls) == num_model_evaluations(name, 5)


def test_unknown_sampler_and_option_are_clear_errors():
    with pytest.raises(ValueError, match="Unknown sampler: 'plms'. Use one of"):
        get_sampler("plms")
    with pytest.raises(ValueError, match=r"Sampler 'heun' has no option\(s\) \['eta'\]"):
        sample("heun", lambda x, s: x, np.ones(SHAPE, "float32"), [1.0, 0.0], eta=1.0)
    with pytest.raises(ValueError, match="lms order must be 1, 2, 3 or 4"):
        sample("lms", lambda x, s: x, np.ones(SHAPE, "float32"), [1.0, 0.0], order=5)
    model = _model()
    with pytest.raises(ValueError, match="Sampler 'dpmpp_2m' takes no eta"):
        model.generate(2, sampler="dpmpp_2m", num_steps=3, eta=0.5, verbose=False)
    with pytest.raises(ValueError, match="Unknown sigma_schedule: 'cosine'"):
        model.generate(2, sampler="euler", num_steps=3, sigma_schedule="cosine", verbose=False)
