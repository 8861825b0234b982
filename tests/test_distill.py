"""Consistency models and MeanFlow: exact oracles on Gaussian data, then small trainings and errors."""

import os

import keras
import numpy as np
import pytest
from keras import ops

import keras_diffusion as kd
from keras_diffusion.distill import ConsistencyModel
from keras_diffusion.distill import ConsistencyProcess
from keras_diffusion.distill import DistilledGrid
from keras_diffusion.distill import MeanFlow
from keras_diffusion.distill import ProgressiveDistillation
from keras_diffusion.networks import build_unet
from tests.oracles import MU
from tests.oracles import S
from tests.oracles import ExactConsistencyOutput
from tests.oracles import ExactEDMOutput
from tests.oracles import ExactMeanVelocity
from tests.oracles import exact_consistency
from tests.oracles import exact_denoiser
from tests.oracles import exact_mean_velocity
from tests.oracles import exact_velocity
from tests.oracles import mlp
from tests.oracles import stand_in
from tests.oracles import stand_in_interval

SIGMA_MIN = 0.002


def exact_consistency_model(**kwargs):
    return ConsistencyModel(stand_in(ExactConsistencyOutput(SIGMA_MIN)), total_steps=100, **kwargs)


def exact_mean_flow():
    return MeanFlow(stand_in_interval(ExactMeanVelocity()), seed=0)


# ------------------------------------------------------------------ consistency: exact oracles
def test_exact_consistency_function_is_identity_at_the_boundary_and_constant_along_the_ode(rng):
    model = exact_consistency_model()
    x = rng.normal(size=(8, 2)).astype("float32")
    np.testing.assert_allclose(ops.convert_to_numpy(model.denoise(x, SIGMA_MIN)), x, atol=1e-6)
    # Points of one exact PF-ODE trajectory at three noise levels map to one start.
    x0 = rng.normal(MU, S, size=(8, 2))
    ends = []
    for sigma in (0.5, 3.0, 40.0):
        on_path = MU + np.sqrt(S**2 + sigma**2) / np.sqrt(S**2 + SIGMA_MIN**2) * (x0 - MU)
        ends.append(ops.convert_to_numpy(model.denoise(on_path.astype("float32"), sigma)))
    np.testing.assert_allclose(ends[0], ends[1], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ends[0], ends[2], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ends[0], x0, rtol=1e-4, atol=1e-4)


def test_one_consistency_step_from_noise_is_the_exact_consistency_function(rng):
    model = exact_consistency_model()
    noise = rng.normal(size=(16, 2)).astype("float32")
    out = model.generate(16, initial_noise=noise, seed=0, verbose=False, return_float=True)  # 1 step by default
    np.testing.assert_allclose(out, exact_consistency(80.0 * noise, 80.0, SIGMA_MIN), rtol=1e-4, atol=1e-5)


def test_multistep_consistency_sampling_keeps_the_data_distribution():
    model = exact_consistency_model()
    for steps in (2, 4):
        out = model.generate(4000, num_steps=steps, seed=1, verbose=False, return_float=True)
        assert abs(out.mean() - MU) < 0.03 and abs(out.std() - S) < 0.03, (steps, out.mean(), out.std())


def test_consistency_sampling_levels():
    assert ConsistencyProcess().sigmas(1).tolist() == [80.0, 0.0]
    levels = ConsistencyProcess().sigmas(4)
    assert len(levels) == 5 and levels[0] == 80.0 and levels[-1] == 0.0 and levels[-2] > SIGMA_MIN
    assert np.all(np.diff(levels) < 0)


def test_distillation_target_of_an_exact_teacher_matches_an_exact_student():
    """CD's target f(Heun step of the teacher) equals the prediction when both are exact (up to Heun's error)."""
    teacher = kd.EDM(stand_in(ExactEDMOutput()))
    student = ExactConsistencyOutput(SIGMA_MIN)
    data = np.random.default_rng(1).normal(MU, S, (512, 2)).astype("float32")
    gaps = []
    for levels in (18, 72):  # Heun's local error falls as the cube of the level spacing
        exact = ConsistencyModel(stand_in(student), method="cd", teacher=teacher, distillation_levels=levels, seed=0)
        out = exact(ops.convert_to_tensor(data), training=False)
        gaps.append(np.abs(ops.convert_to_numpy(out["prediction"]) - ops.convert_to_numpy(out["target"])).max())
    assert gaps[0] < 4e-2 and gaps[1] < 2e-3, gaps
    # A wrong student is far from its target: the check can fail.
    wrong = ConsistencyModel(stand_in(ExactConsistencyOutput(0.3)), method="cd", teacher=teacher, seed=0)
    out = wrong(ops.convert_to_tensor(data), training=False)
    gap = np.abs(ops.convert_to_numpy(out["prediction"]) - ops.convert_to_numpy(out["target"]))
    assert gap.max() > 5e-2


def test_consistency_tuning_starts_as_denoising_training():
    """ECT's stage 0 clips r to sigma_min, where the consistency target is the noisy-by-sigma_min data."""
    model = ConsistencyModel(stand_in(ExactConsistencyOutput(SIGMA_MIN)), method="ect", total_steps=80, seed=0)
    data = np.random.default_rng(2).normal(MU, S, (256, 2)).astype("float32")
    out = model(ops.convert_to_tensor(data), training=False)
    target = ops.convert_to_numpy(out["target"])
    assert np.abs(target - data).max() < 0.05


def test_training_levels_double_and_pairs_are_adjacent():
    model = ConsistencyModel(mlp(), total_steps=800, seed=0)
    levels = [float(ops.convert_to_numpy(model._levels(ops.convert_to_tensor(float(k))))) for k in (0, 99, 100, 799)]
    assert levels == [11.0, 11.0, 21.0, 1281.0]
    sigma = ops.convert_to_tensor(np.array([0.002, 0.1, 1.0, 79.9, 200.0], "float32"))
    upper, lower = (ops.convert_to_numpy(v) for v in model._adjacent_levels(sigma, 11.0))
    grid = kd.samplers.karras_sigmas(11, SIGMA_MIN, 80.0)[:-1]
    for u, low in zip(upper, lower):
        i = int(np.argmin(np.abs(grid - u)))
        assert np.isclose(grid[i], u, rtol=1e-4) and np.isclose(grid[i + 1], low, rtol=1e-4)


# ------------------------------------------------------------------ MeanFlow: exact oracles
def test_exact_mean_velocity_satisfies_the_mean_flow_identity_through_jvp(rng):
    model = exact_mean_flow()
    z = rng.normal(size=(32, 2)).astype("float32")
    t = rng.uniform(0.2, 0.95, 32).astype("float32")
    r = np.where(np.arange(32) % 4 == 0, t, t * rng.uniform(0.0, 0.9, 32)).astype("float32")
    v = exact_velocity(z, t[:, None]).astype("float32")  # the marginal velocity at z
    u, target = model.mean_flow_target(*(ops.convert_to_tensor(a) for a in (z, t, r, v)))
    np.testing.assert_allclose(ops.convert_to_numpy(u), exact_mean_velocity(z, r[:, None], t[:, None]), atol=1e-4)
    np.testing.assert_allclose(ops.convert_to_numpy(target), ops.convert_to_numpy(u), atol=2e-3)
    # With the wrong velocity the target moves off u: the identity check can fail.
    _, off = model.mean_flow_target(*(ops.convert_to_tensor(a) for a in (z, t, r, v + 0.5)))
    assert np.abs(ops.convert_to_numpy(off) - ops.convert_to_numpy(u)).max() > 0.05


@pytest.mark.parametrize("steps", [1, 2])
def test_mean_flow_steps_land_on_the_exact_flow_map(rng, steps):
    model = exact_mean_flow()
    noise = rng.normal(size=(16, 2)).astype("float32")
    out = model.generate(16, num_steps=steps, initial_noise=noise, seed=0, verbose=False, return_float=True)
    t_max = model.process.t_max
    s_t = np.sqrt((1 - t_max) ** 2 * S**2 + t_max**2)
    expected = MU + S / s_t * (noise - (1 - t_max) * MU)
    np.testing.assert_allclose(out, expected, rtol=1e-3, atol=1e-3)


def test_mean_flow_with_r_equal_t_is_the_flow_velocity(rng):
    model = exact_mean_flow()
    x = rng.normal(size=(8, 2)).astype("float32")
    x0 = ops.convert_to_numpy(model.denoise(x, 1.0))  # t = 0.5
    z = 0.5 * x
    np.testing.assert_allclose(x0, z - 0.5 * exact_velocity(z, 0.5), atol=1e-5)
    assert np.allclose(exact_denoiser(x, 1.0), x0, atol=1e-5)  # the flow's x0_hat is the ideal denoiser


# ------------------------------------------------------------------ progressive distillation
def test_progressive_target_taken_by_one_ddim_step_lands_on_the_teachers_two_steps(rng):
    teacher = kd.EDM(stand_in(ExactEDMOutput()))
    student = ProgressiveDistillation.from_teacher(teacher, num_steps=8)
    assert student.process.num_steps == 4
    x = rng.normal(0, 3.0, (16, 2)).astype("float32")
    levels = teacher.process.sigmas(8)
    for i in range(4):
        sigma, mid, nxt = (np.full(16, levels[2 * i + k], "float32") for k in range(3))
        target, x_next = (ops.convert_to_numpy(v) for v in student.two_step_target(
            ops.convert_to_tensor(x), *(ops.convert_to_tensor(v) for v in (sigma, mid, nxt))))
        # One DDIM step of the student on the target...
        one_step = target + nxt[:, None] * (x - target) / sigma[:, None]
        np.testing.assert_allclose(one_step, x_next, rtol=1e-4, atol=1e-4)
        # ...is the teacher's two DDIM steps, computed here from the exact denoiser.
        d1 = exact_denoiser(x, sigma[:, None])
        x_mid = d1 + mid[:, None] * (x - d1) / sigma[:, None]
        d2 = exact_denoiser(x_mid, mid[:, None])
        np.testing.assert_allclose(x_next, d2 + nxt[:, None] * (x_mid - d2) / mid[:, None], rtol=1e-4, atol=1e-4)


def test_progressive_rounds_halve_the_grid_and_refuse_more_steps(rng, tmp_path):
    teacher = kd.EDM(mlp(), seed=0)
    student = ProgressiveDistillation.from_teacher(teacher, num_steps=8, seed=0)
    student.compile()
    student.fit(rng.normal(MU, S, (16, 2)).astype("float32"), epochs=1, batch_size=8, verbose=0)
    second = ProgressiveDistillation.from_teacher(student, seed=0)
    assert second.process.grid == student.process.grid[::2] and second.process.num_steps == 2
    path = str(tmp_path / "pd.keras")
    second.save(path)
    loaded = kd.load_model(path)
    assert isinstance(loaded.process, DistilledGrid) and loaded.teacher is None
    noise = rng.normal(size=(2, 2)).astype("float32")
    np.testing.assert_allclose(  # its 2 DDIM steps by default, on the saved grid
        loaded.generate(2, initial_noise=noise, seed=0, verbose=False, return_float=True),
        second.generate(2, num_steps=2, initial_noise=noise, seed=0, verbose=False, return_float=True), atol=1e-5,
    )
    with pytest.raises(ValueError, match="distilled for 2 steps"):
        loaded.generate(2, num_steps=4, verbose=False)
    with pytest.raises(ValueError, match="needs its teacher"):
        loaded(np.zeros((2, 2), "float32"))
    with pytest.raises(ValueError, match="even number"):
        ProgressiveDistillation.from_teacher(teacher, num_steps=3)


# ------------------------------------------------------------------ losses, saving, starting from teachers
def test_pseudo_huber_loss_matches_its_formula(rng):
    model = kd.EDM(mlp(), loss_type="pseudo_huber")
    pred, target = rng.normal(size=(4, 2)).astype("float32"), rng.normal(size=(4, 2)).astype("float32")
    weight = np.array([1.0, 2.0, 0.5, 1.0], "float32")
    loss = model.compute_loss(y_pred={"prediction": pred, "target": target, "weight": weight})
    c = 0.00054 * np.sqrt(2)
    expected = np.mean(weight * (np.sqrt(((pred - target) ** 2).sum(1) + c**2) - c))
    np.testing.assert_allclose(float(ops.convert_to_numpy(loss)), expected, rtol=1e-5)


def test_mean_flow_adaptive_loss_matches_its_formula(rng):
    model = exact_mean_flow()
    pred, target = rng.normal(size=(4, 2)).astype("float32"), rng.normal(size=(4, 2)).astype("float32")
    loss = model.compute_loss(y_pred={"prediction": pred, "target": target})
    mse = ((pred - target) ** 2).mean(1)
    np.testing.assert_allclose(float(ops.convert_to_numpy(loss)), np.mean(mse / (mse + 1e-3)), rtol=1e-5)


def test_students_save_load_and_resume_their_schedule(tmp_path):
    data = np.random.default_rng(0).normal(MU, S, (64, 2)).astype("float32")
    model = ConsistencyModel(mlp(), total_steps=40, seed=0)
    model.compile()
    model.fit(data, epochs=2, batch_size=16, verbose=0)
    path = str(tmp_path / "cm.keras")
    model.save(path)
    loaded = kd.load_model(path)
    assert isinstance(loaded, ConsistencyModel) and float(ops.convert_to_numpy(loaded.training_step)) == 8.0
    noise = np.random.default_rng(1).normal(size=(4, 2)).astype("float32")
    np.testing.assert_allclose(
        loaded.generate(4, initial_noise=noise, seed=0, verbose=False, return_float=True),
        model.generate(4, initial_noise=noise, seed=0, verbose=False, return_float=True), atol=1e-5,
    )
    meanflow = MeanFlow(_interval_mlp(), seed=0)
    meanflow.compile()
    meanflow.fit(data, epochs=1, batch_size=16, verbose=0)
    meanflow.save(str(tmp_path / "mf.keras"))
    again = kd.load_model(str(tmp_path / "mf.keras"))
    assert isinstance(again, MeanFlow) and again.interval_fraction == 0.25


def _randomize(network, rng):
    """Random weights everywhere, the zero-initialized head's too, so that outputs depend on them."""
    network.set_weights([rng.normal(0, 0.2, w.shape).astype("float32") for w in network.get_weights()])


def _interval_mlp(width=32):
    x, t, h = keras.Input((2,), name="x"), keras.Input((), name="t"), keras.Input((), name="h")
    feats = keras.layers.Concatenate()([x, keras.layers.Reshape((1,))(t), keras.layers.Reshape((1,))(h)])
    hidden = feats
    for _ in range(3):
        hidden = keras.layers.Dense(width, activation="silu")(hidden)
    return keras.Model([x, t, h], keras.layers.Dense(2)(hidden))


def test_consistency_tuning_starts_from_the_edm_teacher(rng):
    net = mlp()
    _randomize(net, rng)
    teacher = kd.EDM(net, seed=0)
    student = ConsistencyModel.from_teacher(teacher, "ect", total_steps=10)
    x = rng.normal(size=(64, 2)).astype("float32")
    for sigma in (5.0, 20.0):  # away from sigma_min the two parameterizations agree
        np.testing.assert_allclose(
            ops.convert_to_numpy(student.denoise(x, sigma)), ops.convert_to_numpy(teacher.denoise(x, sigma)),
            rtol=2e-3, atol=2e-3,
        )
    assert student.teacher is None and student.process.sigma_max == teacher.process.sigma_max


def test_mean_flow_from_a_flow_model_starts_as_its_velocity(rng):
    net = build_unet((8, 8, 1), widths=(8, 16), num_res_blocks=1, attention_resolutions=(8,), norm_groups=4)
    _randomize(net, rng)
    flow = kd.FlowMatching(net, seed=0)
    meanflow = MeanFlow.from_flow(flow, seed=0)
    x = rng.normal(size=(4, 8, 8, 1)).astype("float32")
    np.testing.assert_allclose(
        ops.convert_to_numpy(meanflow.denoise(x, 1.0)), ops.convert_to_numpy(flow.denoise(x, 1.0)), atol=1e-4
    )
    assert meanflow.network.count_params() > flow.network.count_params()


# ------------------------------------------------------------------ errors
def test_clear_errors():
    with pytest.raises(ValueError, match="interval t - r"):
        MeanFlow(mlp())
    with pytest.raises(ValueError, match="total_steps"):
        ConsistencyModel(mlp())
    with pytest.raises(ValueError, match="Unknown method"):
        ConsistencyModel(mlp(), method="gan", total_steps=5)
    with pytest.raises(ValueError, match="trained keras_diffusion model"):
        ConsistencyModel(mlp(), method="cd", teacher=keras.Sequential())
    with pytest.raises(ValueError, match="needs the teacher"):
        ConsistencyModel(mlp(), method="cd")(np.zeros((2, 2), "float32"))
    flow = kd.FlowMatching(mlp())
    with pytest.raises(ValueError, match="starts from an EDM"):
        ConsistencyModel.from_teacher(flow, "ect", total_steps=5)
    with pytest.raises(ValueError, match="'meanflow' sampler needs"):
        flow.generate(2, sampler="meanflow", verbose=False)
    with pytest.raises(ValueError, match="flow-matching model"):
        MeanFlow.from_flow(kd.EDM(mlp()))


def test_mean_flow_names_the_backends_with_jvp(monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "numpy")
    with pytest.raises(ValueError, match="'numpy' backend does not have"):
        MeanFlow(stand_in_interval(ExactMeanVelocity()))


# ------------------------------------------------------------------ learning a 2-D mixture (slow)
def _mixture(n=4096):
    rng = np.random.default_rng(0)
    centers = rng.choice(np.array([[-0.5, -0.5], [0.5, 0.5]]), n)
    return (centers + rng.normal(0, 0.15, (n, 2))).astype("float32")


def _check_mixture_samples(out, data):
    assert np.abs(out.mean(0)).max() < 0.1
    assert np.abs(out.std(0) - data.std(0)).max() < 0.1
    # Both components, and few samples between them.
    assert 0.35 < np.mean(out[:, 0] > 0) < 0.65
    assert np.mean(np.abs(out[:, 0]) < 0.15) < 0.2


def _fit(model, data, epochs=60, lr=2e-3):
    model.compile(optimizer=kd.optimizers.AdamW(lr, use_ema=True, ema_momentum=0.99))
    model.fit(data, epochs=epochs, batch_size=128, verbose=0)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ct", "meanflow"])
def test_small_models_learn_a_two_component_mixture(method):
    data = _mixture()
    if method == "meanflow":
        model = MeanFlow(_interval_mlp(128), seed=0)
    else:
        model = ConsistencyModel(mlp(width=128), total_steps=60 * 32, seed=0)
    _fit(model, data)
    _check_mixture_samples(model.generate(4000, num_steps=2, seed=1, verbose=False, return_float=True), data)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ect", "cd", "progressive"])
def test_students_of_a_small_teacher_learn_a_two_component_mixture(method):
    data = _mixture()
    teacher = _fit(kd.EDM(mlp(width=128), seed=0), data)
    if method == "progressive":
        # A round of progressive distillation reproduces the teacher's DDIM in half its steps: 8 -> 4.
        student = _fit(ProgressiveDistillation.from_teacher(teacher, num_steps=8, seed=0), data, epochs=30, lr=5e-4)
        out = student.generate(4000, seed=1, verbose=False, return_float=True)
        reference = teacher.generate(4000, sampler="ddim", num_steps=8, seed=1, verbose=False, return_float=True)
        assert np.abs(out.mean(0) - reference.mean(0)).max() < 0.03
        assert np.abs(out.std(0) - reference.std(0)).max() < 0.03
        return
    student = ConsistencyModel.from_teacher(teacher, method, total_steps=30 * 32, seed=0)
    _fit(student, data, epochs=30, lr=5e-4)
    _check_mixture_samples(student.generate(4000, num_steps=2, seed=1, verbose=False, return_float=True), data)
