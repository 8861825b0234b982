"""FlowMatching: analytic oracles, every sampler, training, guidance, saving, errors; on the current backend."""

import keras
import numpy as np
import pytest

from keras_diffusion import DDPM
from keras_diffusion import FlowMatching
from keras_diffusion.models.flow import flow_paths
from keras_diffusion.models.flow import straightness
from keras_diffusion.processes import DiscreteVPSchedule
from keras_diffusion.processes import RectifiedFlow
from keras_diffusion.samplers import SAMPLERS
from oracles import MU
from oracles import S
from oracles import ExactVelocity
from oracles import exact_denoiser
from oracles import exact_flow_map
from oracles import langevin_moments
from oracles import exact_velocity
from oracles import mlp
from oracles import stand_in

DETERMINISTIC = ("ddim", "euler", "heun", "dpmpp_2m", "lms", "unipc", "rk4", "ode_rk45")


def exact_model(shift=1.0):
    return FlowMatching(stand_in(ExactVelocity()), RectifiedFlow(shift=shift), seed=0)


def test_denoise_is_the_exact_posterior_mean_in_sigma_space():
    model = exact_model()
    x = np.random.default_rng(0).normal(size=(5, 2)).astype("float32") * 3
    for sigma in (0.05, 1.0, 30.0):
        got = keras.ops.convert_to_numpy(model.denoise(x, sigma))
        np.testing.assert_allclose(got, exact_denoiser(x, sigma), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_euler_on_the_flow_ode_lands_on_the_exact_flow_map(shift):
    model = exact_model(shift)
    noise = np.random.default_rng(1).normal(size=(64, 2)).astype("float32")
    times = model.process.shift_time(np.linspace(model.process.t_max, 0.0, 51))
    # Euler in sampler space is exactly Euler on dz/dt = v(z, t), started from z = eps at t_max.
    z = noise.astype("float64")
    for t, t_next in zip(times[:-1], times[1:]):
        z = z + (t_next - t) * exact_velocity(z, t)
    got = model.generate(64, num_steps=50, initial_noise=noise, verbose=False, return_float=True)
    np.testing.assert_allclose(got, z, atol=2e-4)
    # And it converges to the exact flow map, mu + s / S_t (z_t - m_t), at first order.
    t_max = times[0]
    exact = MU + S / np.sqrt((1 - t_max) ** 2 * S**2 + t_max**2) * (noise - (1 - t_max) * MU)
    errors = [
        np.abs(model.generate(64, num_steps=n, initial_noise=noise, verbose=False, return_float=True) - exact).max()
        for n in (100, 200)
    ]
    assert errors[1] < 0.6 * errors[0] and errors[1] < (0.015 if shift == 1.0 else 0.03)


def test_the_velocity_oracle_is_the_derivative_of_the_flow_map():
    z0, t, dt = np.linspace(-2, 2, 5), 0.4, 1e-4
    def flow(t):
        return (1 - t) * MU + np.sqrt((1 - t) ** 2 * S**2 + t**2) / S * (z0 - MU)
    np.testing.assert_allclose((flow(t + dt) - flow(t - dt)) / (2 * dt), exact_velocity(flow(t), t), atol=1e-6)


# The few-step models' samplers (consistency, meanflow) run on their own models: tests/test_distill.py.
@pytest.mark.parametrize("sampler", sorted(set(SAMPLERS) - {"consistency", "meanflow"}))
def test_every_sampler_works_on_a_flow(sampler):
    model = exact_model()
    n = 512 if sampler in DETERMINISTIC else 2048 if sampler == "langevin" else 4096
    noise = np.random.default_rng(2).normal(size=(n, 2)).astype("float32")
    num_steps = 10 if sampler == "langevin" else 200  # NCSN's 10 levels of 100 Langevin steps
    kwargs = dict(sampler=sampler, num_steps=num_steps, initial_noise=noise, verbose=False, return_float=True, seed=0)
    got = model.generate(n, **kwargs)
    sigmas = model.process.sigmas(num_steps)
    if sampler in DETERMINISTIC:  # first-order samplers (ddim, euler) are within 0.02 at 200 steps
        exact = exact_flow_map(noise * model.process.prior_std(sigmas[0]), sigmas[0])
        np.testing.assert_allclose(got, exact, atol=0.02 if sampler in ("ddim", "euler") else 0.005)
    elif sampler == "langevin":  # its step size is stable on the flow's levels (sigma_max = 9999)
        mean, std = langevin_moments(sigmas, model.process.prior_std(sigmas[0]))
        # Within 4 standard errors of 4,096 values (Langevin's 1,000 evaluations make n = 2048 the budget).
        assert abs(got.mean() - mean) < 4 * std / 64 and abs(got.std() / std - 1) < 4 / 90, (got.mean(), got.std(), std)
    else:  # stochastic: the samples' distribution is the data's
        assert abs(got.mean() - MU) < 0.03
        assert abs(got.std() - S) < 0.03


def test_samples_match_the_data_mean_and_std():
    got = exact_model().generate(4096, num_steps=100, seed=3, verbose=False, return_float=True)
    assert abs(got.mean() - MU) < 0.03 and abs(got.std() - S) < 0.03


def _data(n=256, seed=0):
    return np.random.default_rng(seed).normal(MU, S, (n, 2)).astype("float32")


@pytest.mark.parametrize("time_sampling", ["logit_normal", "uniform", "mode"])
def test_fit_trains_with_every_time_sampling(time_sampling):
    model = FlowMatching(mlp(), time_sampling=time_sampling, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = model.fit(_data(), epochs=3, batch_size=64, verbose=0)
    losses = history.history["loss"]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    assert model.time_sampling == time_sampling


def test_sequences_train_and_sample():
    model = FlowMatching(mlp(shape=(4, 3)), seed=0)
    model.compile()
    model.fit(np.random.default_rng(0).normal(size=(32, 4, 3)).astype("float32"), epochs=1, batch_size=16, verbose=0)
    assert model.generate(2, num_steps=3, seed=0, verbose=False, return_float=True).shape == (2, 4, 3)


def test_class_conditioning_and_guidance():
    model = FlowMatching(mlp(num_classes=2), num_classes=2, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    labels = np.arange(256) % 2
    data = _data() + 2.0 * labels[:, None].astype("float32")
    model.fit({"images": data, "labels": labels}, epochs=10, batch_size=64, verbose=0)
    noise = np.random.default_rng(0).normal(size=(256, 2)).astype("float32")
    kwargs = dict(num_steps=10, initial_noise=noise, verbose=False, return_float=True)
    zeros, ones = (model.generate(256, labels=np.full(256, k), guidance_scale=2.0, **kwargs) for k in (0, 1))
    assert ones.mean() - zeros.mean() > 1.0  # the classes are 2 apart
    plain = model.generate(256, labels=np.full(256, 1), **kwargs)
    np.testing.assert_allclose(model.generate(256, labels=np.full(256, 1), guidance_scale=1.0, **kwargs), plain,
                               atol=1e-5)


def test_keras_file_round_trip(tmp_path):
    model = FlowMatching(mlp(), RectifiedFlow(shift=2.0, time_sampling="mode"), seed=0)
    model.compile()
    model.fit(_data(32), epochs=1, batch_size=16, verbose=0)
    path = str(tmp_path / "flow.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, FlowMatching) and loaded.process.get_config() == model.process.get_config()
    kwargs = dict(num_steps=5, seed=1, verbose=False, return_float=True)
    np.testing.assert_allclose(loaded.generate(3, **kwargs), model.generate(3, **kwargs), atol=1e-6)


def test_defaults_come_from_the_model():
    model = exact_model()
    assert model.default_sampler == "euler" and model.prediction_type == "velocity"
    # Not clipped to [-1, 1]: data far outside it come back intact.
    far = FlowMatching(stand_in(_ShiftedVelocity()), seed=0)
    assert far.generate(64, num_steps=20, seed=0, verbose=False, return_float=True).mean() > 2.5


class _ShiftedVelocity(ExactVelocity):
    """The exact velocity for N(MU + 3, S^2) data."""

    def call(self, inputs):
        z, t = inputs
        t = keras.ops.reshape(t, (-1, 1))
        return exact_velocity(z, t, mu=MU + 3.0)


def test_clear_errors():
    with pytest.raises(ValueError, match="Unknown time_sampling: 'beta'"):
        FlowMatching(mlp(), time_sampling="beta")
    with pytest.raises(ValueError, match="Unknown time_sampling"):
        RectifiedFlow(time_sampling="lognormal")
    with pytest.raises(ValueError, match="shift must be positive.*shift=0"):
        RectifiedFlow(shift=0)
    with pytest.raises(ValueError, match="shift must be positive"):
        RectifiedFlow(shift=-1.0)
    with pytest.raises(ValueError, match="Pass it once"):
        FlowMatching(mlp(), RectifiedFlow(time_sampling="uniform"), time_sampling="mode")
    with pytest.raises(ValueError, match="'v_prediction' does not fit RectifiedFlow.*'velocity'"):
        FlowMatching(mlp(), prediction_type="v_prediction")
    with pytest.raises(ValueError, match="'velocity' does not fit DiscreteVPSchedule"):
        FlowMatching(mlp(), DiscreteVPSchedule())
    with pytest.raises(ValueError, match="'linspace'"):
        exact_model().generate(2, timestep_spacing="leading", verbose=False)


def test_paired_noise_replaces_the_fresh_draw():
    model = FlowMatching(mlp(), seed=0)
    x, noise = _data(8), np.random.default_rng(5).normal(size=(8, 2)).astype("float32")
    out = model({"images": x, "noise": noise}, training=True)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out["target"]), noise - x, rtol=1e-6)
    model.compile()
    with pytest.raises(ValueError, match="paired 'noise' must have the images' shape \\(8, 2\\)"):
        model.fit({"images": x, "noise": noise[:4]}, epochs=1, verbose=0)


class _ConstantVelocity(keras.layers.Layer):
    def call(self, inputs):
        z, _ = inputs
        return keras.ops.zeros_like(z) + keras.ops.convert_to_tensor([0.7, -1.3])


def test_straight_paths_have_straightness_zero():
    model = FlowMatching(stand_in(_ConstantVelocity()), RectifiedFlow(shift=3.0), seed=0)
    noise = np.random.default_rng(0).normal(size=(16, 2)).astype("float32")
    assert straightness(model, noise, num_steps=7) < 1e-6  # float32 rounding of |v|^2 = 2.2
    times, z = flow_paths(model, noise, num_steps=7)
    assert z.shape == (8, 16, 2) and times[0] == pytest.approx(model.process.shift_time(model.process.t_max), 1e-6) and times[-1] == 0
    # Float32 sampler space holds x = z / (1 - t), about 3e4 * z at t_max: 1e-3 is its rounding.
    np.testing.assert_allclose(z[-1], noise - times[0] * np.array([0.7, -1.3]), atol=1e-3)


def _exact_straightness(noise, t_max, mu=MU, s=S):
    """Liu et al.'s S of the exact Gaussian flow from `noise` at t_max to 0, in closed form.

    The path is z_t = m_t + S_t u, so dz/dt - D = (S_t' - (S_T - s) / T) u with the mean-part constant;
    and with a = 1 + s^2, b = s^2: S_t'^2 = a - s^2 / S_t^2, whose integral is an arctan.
    """
    T = t_max
    S_T = np.sqrt((1 - T) ** 2 * s**2 + T**2)
    u = (noise - (1 - T) * mu) / S_T
    a, b = 1 + s**2, s**2
    energy = a * T - s * (np.arctan((a * T - b) / s) + np.arctan(b / s))
    return np.mean(np.sum(u**2, axis=1)) * (energy / T - ((S_T - s) / T) ** 2)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_straightness_of_the_exact_gaussian_flow(shift):
    model = exact_model(shift)
    noise = np.random.default_rng(3).normal(size=(256, 2)).astype("float32")
    expected = _exact_straightness(noise.astype("float64"), model.process.t_max)
    # At t_max -> 1 this is E|eps|^2 s (2 - pi / 2): 0.43 for s = 0.5 in 2-D, straight only as s -> 0.
    np.testing.assert_allclose(expected, np.mean(np.sum(noise**2, 1)) * S * (2 - np.pi / 2), rtol=1e-3)
    np.testing.assert_allclose(straightness(model, noise, num_steps=400), expected, rtol=0.02)


def test_reflow_pairs_are_the_ode_solutions_of_their_noise():
    model = exact_model()
    noise = np.random.default_rng(4).normal(size=(10, 2)).astype("float32")
    pairs = model.reflow_pairs(10, num_steps=50, noise=noise, batch_size=4, verbose=False)
    assert sorted(pairs) == ["images", "noise"]
    np.testing.assert_array_equal(pairs["noise"], noise)
    # Batched and padded, they are generate()'s own solves, which approach the exact flow map.
    solved = model.generate(10, sampler="heun", num_steps=50, initial_noise=noise, verbose=False, return_float=True)
    np.testing.assert_allclose(pairs["images"], solved, atol=1e-5)
    sigma_max = model.process.sigmas(50)[0]
    exact = exact_flow_map(noise * model.process.prior_std(sigma_max), sigma_max)
    np.testing.assert_allclose(pairs["images"], exact, atol=0.02)
    # Seeded: the same seed draws the same noise.
    first, again = (model.reflow_pairs(6, num_steps=4, seed=7, verbose=False) for _ in range(2))
    np.testing.assert_array_equal(first["noise"], again["noise"])
    np.testing.assert_array_equal(first["images"], again["images"])


def test_reflow_pairs_of_a_conditional_model_carry_their_labels():
    model = FlowMatching(mlp(num_classes=3), num_classes=3, seed=0)
    pairs = model.reflow_pairs(12, num_steps=3, sampler="euler", batch_size=8, seed=1, verbose=False)
    assert pairs["images"].shape == pairs["noise"].shape == (12, 2)
    assert pairs["labels"].dtype == np.int32 and set(pairs["labels"]) <= {0, 1, 2}
    given = np.arange(12) % 3
    pairs = model.reflow_pairs(12, num_steps=3, sampler="euler", labels=given, guidance_scale=2.0,
                               noise=pairs["noise"], verbose=False)
    np.testing.assert_array_equal(pairs["labels"], given)
    guided = model.generate(12, num_steps=3, labels=given, guidance_scale=2.0, initial_noise=pairs["noise"],
                            verbose=False, return_float=True)
    np.testing.assert_allclose(pairs["images"], guided, atol=1e-5)
    model.compile()
    model.fit(pairs, epochs=1, batch_size=4, verbose=0)


def test_reflow_and_straightness_errors():
    with pytest.raises(ValueError, match="deterministic ODE solve; sampler='ddpm'"):
        exact_model().reflow_pairs(4, sampler="ddpm")
    with pytest.raises(ValueError, match="initial_noise must have shape"):
        exact_model().reflow_pairs(4, noise=np.zeros((3, 2), "float32"))
    with pytest.raises(ValueError, match="process is DiscreteVPSchedule. Pass a FlowMatching"):
        straightness(DDPM(mlp(), DiscreteVPSchedule()), np.zeros((2, 2), "float32"))
    with pytest.raises(ValueError, match="class-conditional: pass labels"):
        straightness(FlowMatching(mlp(num_classes=2), num_classes=2), np.zeros((2, 2), "float32"))


def test_reflow_straightens_the_flow():
    # The exact flow of Gaussian data couples noise and samples linearly, so the
    # 2-rectified flow of its pairs is straight (S = 0); a small MLP gets most of the way.
    first = exact_model()
    pairs = first.reflow_pairs(2048, num_steps=20, batch_size=1024, seed=0, verbose=False)
    second = FlowMatching(mlp(), time_sampling="uniform", seed=0)
    second.compile(optimizer=keras.optimizers.Adam(1e-2))
    second.fit(pairs, epochs=6, batch_size=128, verbose=0)
    noise = np.random.default_rng(6).normal(size=(256, 2)).astype("float32")
    before, after = straightness(first, noise, num_steps=20), straightness(second, noise, num_steps=20)
    assert before > 0.35 and after < 0.25 * before, (before, after)


@pytest.mark.slow  # about a minute of training on 2 CPU cores
def test_flow_matching_learns_a_gaussian_mixture():
    rng = np.random.default_rng(0)
    centers = np.array([[-1.0, -1.0], [1.0, 1.0]], "float32")
    data = (centers[rng.integers(0, 2, 4096)] + 0.1 * rng.normal(size=(4096, 2))).astype("float32")
    model = FlowMatching(mlp(width=128), seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.fit(data, epochs=30, batch_size=256, verbose=0)
    samples = model.generate(2000, num_steps=50, seed=0, verbose=False, return_float=True)
    right = samples[:, 0] > 0
    assert abs(right.mean() - 0.5) < 0.05
    for mask, center in ((right, centers[1]), (~right, centers[0])):
        np.testing.assert_allclose(samples[mask].mean(0), center, atol=0.05)
        cov = np.cov(samples[mask].T)
        np.testing.assert_allclose(np.diag(cov), 0.01, rtol=0.6)
        assert abs(cov[0, 1]) < 0.01
