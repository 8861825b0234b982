"""The warmed-up EMA of `keras_diffusion.optimizers.AdamW`, against its recursion in numpy."""

import keras
import numpy as np
import pytest

from keras_diffusion.optimizers import AdamW
from keras_diffusion.optimizers import ema_warmup_momentum


def _run(optimizer, steps=12):
    """Applies fixed gradients for `steps` steps; returns the weights after each and the final average."""
    variable = keras.Variable(np.zeros(3, "float32"))
    optimizer.build([variable])
    rng = np.random.default_rng(0)
    weights = []
    for _ in range(steps):
        optimizer.apply([keras.ops.convert_to_tensor(rng.normal(size=3).astype("float32"))], [variable])
        weights.append(keras.ops.convert_to_numpy(variable.value))
    return weights, keras.ops.convert_to_numpy(optimizer._model_variables_moving_average[0].value)


def _expected(weights, momentum_of_step):
    average = None
    for step, weight in enumerate(weights):
        m = momentum_of_step(step)
        average = weight if average is None else m * average + (1 - m) * weight
    return average


def test_warmup_momentum_follows_diffusers_rule():
    steps = np.array([0, 1, 10, 1000, 10**7])
    got = keras.ops.convert_to_numpy(ema_warmup_momentum(keras.ops.convert_to_tensor(steps), 0.999))
    want = np.minimum(0.999, 1 - (1.0 + steps) ** (-2 / 3))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got[0] == 0.0 and got[-1] == pytest.approx(0.999)


def test_average_is_the_warmed_up_recursion():
    weights, average = _run(AdamW(0.1, use_ema=True, ema_momentum=0.95))
    expected = _expected(weights, lambda t: min(0.95, 1 - (1.0 + t) ** (-2 / 3)))
    np.testing.assert_allclose(average, expected, rtol=1e-5, atol=1e-6)
    # Keras' fixed momentum gives another average: the warm-up is what changed it.
    fixed = _expected(weights, lambda t: 0.95)
    assert np.abs(average - fixed).max() > 1e-2


def test_none_keeps_keras_fixed_momentum():
    weights, average = _run(AdamW(0.1, use_ema=True, ema_momentum=0.95, ema_warmup_power=None))
    np.testing.assert_allclose(average, _expected(weights, lambda t: 0.95), rtol=1e-5, atol=1e-6)


def test_config_round_trip_and_bad_power():
    optimizer = AdamW(1e-3, use_ema=True, ema_warmup_power=0.75)
    clone = AdamW.from_config(optimizer.get_config())
    assert clone.ema_warmup_power == 0.75 and clone.use_ema
    with pytest.raises(ValueError, match="ema_warmup_power"):
        AdamW(1e-3, ema_warmup_power=0)


def test_a_saved_model_with_it_loads_after_importing_the_package(tmp_path):
    """`keras.saving.load_model` finds the class once `keras_diffusion` is imported, in a fresh process too."""
    import subprocess
    import sys

    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    model.compile(AdamW(1e-3, use_ema=True, ema_warmup_power=0.75), loss="mse")
    model.fit(np.ones((4, 3), "float32"), np.ones((4, 2), "float32"), epochs=1, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    code = ("import keras, keras_diffusion; m = keras.saving.load_model(%r); "
            "print(type(m.optimizer).__name__, m.optimizer.ema_warmup_power)" % path)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-2:] == ["AdamW", "0.75"]
