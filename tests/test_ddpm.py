"""DDPM: training through fit(), generation, saving, and its errors, on the current backend."""

import json
import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest

from keras_diffusion.datasets import load_mnist
from keras_diffusion.models import DDPM
from keras_diffusion.networks import build_unet
from keras_diffusion.networks import unet_from_preset
from keras_diffusion.processes import DiscreteVPSchedule

BACKEND = keras.backend.backend()
SHAPE = (8, 8, 1)


def conv_network(num_classes=None):
    """A small conditional conv net: it compiles in seconds, which keeps these tests fast."""
    x = keras.Input(SHAPE, name="x")
    t = keras.Input((), name="t")
    inputs = [x, t]
    emb = keras.layers.Dense(16, activation="swish")(keras.layers.Reshape((1,))(t) / 1000.0)
    if num_classes is not None:
        labels = keras.Input((), dtype="int32", name="labels")
        inputs.append(labels)
        emb = emb + keras.layers.Flatten()(keras.layers.Embedding(num_classes + 1, 16)(labels))
    h = keras.layers.Conv2D(16, 3, padding="same", activation="swish")(x)
    h = h + keras.layers.Reshape((1, 1, 16))(emb)
    h = keras.layers.Conv2D(16, 3, padding="same", activation="swish")(h)
    return keras.Model(inputs, keras.layers.Conv2D(1, 3, padding="same")(h))


def tiny_unet():
    """A tiny UNet with random (not zero) weights, so its output depends on every layer."""
    net = build_unet(SHAPE, widths=(8, 16), num_res_blocks=1, attention_resolutions=(4,), norm_groups=4)
    rng = np.random.default_rng(0)
    for v in net.weights:
        v.assign(rng.normal(scale=0.1, size=v.shape).astype("float32"))
    return net


def tiny_model(network=None, **kwargs):
    network = network or conv_network(kwargs.get("num_classes"))
    model = DDPM(network, DiscreteVPSchedule("cosine"), seed=0, **kwargs)
    model.compile()
    return model


def random_images(n=16, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n,) + SHAPE).astype("float32")


class _Batches(keras.utils.PyDataset):
    def __init__(self, images, batch_size):
        super().__init__()
        self.images, self.batch_size = images, batch_size

    def __len__(self):
        return len(self.images) // self.batch_size

    def __getitem__(self, i):
        return self.images[i * self.batch_size:(i + 1) * self.batch_size]


def test_fit_accepts_numpy_pydataset_and_tf_data():
    import tensorflow as tf

    images = random_images()
    model = tiny_model()
    for data in (images, _Batches(images, 8), tf.data.Dataset.from_tensor_slices(images).batch(8)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            history = model.fit(data, epochs=1, batch_size=8 if data is images else None, verbose=0)
        assert np.isfinite(history.history["loss"][0])
        assert not [w for w in caught if "shuffle" in str(w.message)]  # no "shuffle=True ... ignored"


def test_backup_and_restore_resumes_a_ddpm(tmp_path):
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"), delete_checkpoint=False)
    model = tiny_model()
    model.fit(random_images(), epochs=2, batch_size=8, verbose=0, callbacks=[backup])
    resumed = tiny_model()
    history = resumed.fit(random_images(), epochs=3, batch_size=8, verbose=0, callbacks=[backup])
    assert len(history.history["loss"]) == 1  # epochs 1-2 came from the backup
    assert int(resumed.optimizer.iterations.numpy()) == 6


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("loss_type,min_snr_gamma", [("mse", None), ("mae", 5.0)])
def test_every_prediction_and_loss_type_trains(prediction_type, loss_type, min_snr_gamma):
    model = tiny_model(prediction_type=prediction_type, loss_type=loss_type, min_snr_gamma=min_snr_gamma)
    history = model.fit(random_images(), epochs=2, batch_size=8, verbose=0)
    assert all(np.isfinite(history.history["loss"]))


def test_min_snr_weights_follow_the_formula():
    alpha = np.array([0.99, 0.7, 0.1], "float32")
    sigma = np.sqrt(1 - alpha**2)
    snr = alpha**2 / sigma**2
    expected = {
        "epsilon": np.minimum(snr, 5) / snr,
        "sample": np.minimum(snr, 5),
        "v_prediction": np.minimum(snr, 5) / (snr + 1),
    }
    for prediction_type, weights in expected.items():
        model = DDPM(conv_network(), prediction_type=prediction_type, min_snr_gamma=5.0)
        got = keras.ops.convert_to_numpy(model._loss_weight(alpha, sigma))
        np.testing.assert_allclose(got, weights, rtol=1e-5)


@pytest.mark.slow  # trains the real U-Net on MNIST (40-50 s a backend); the suite is at its time budget
def test_loss_falls_on_mnist_with_the_small_network():
    images, _ = load_mnist(image_size=32, num_images=1024, seed=0)
    model = DDPM(unet_from_preset("mnist_small"), DiscreteVPSchedule("cosine"), seed=0)
    model.compile(keras.optimizers.AdamW(2e-3, use_ema=True))
    history = model.fit(images, epochs=1, batch_size=8, verbose=0, callbacks=[_RecordBatchLoss()])
    losses = history.model._batch_losses
    first, last = np.mean(losses[:20]), np.mean(losses[-20:])
    assert last < 0.5 * first, (first, last)


class _RecordBatchLoss(keras.callbacks.Callback):
    """Keeps each step's own loss (fit's logs hold a running mean)."""

    def on_train_begin(self, logs=None):
        self.model._batch_losses = []
        self._previous_total = 0.0

    def on_train_batch_end(self, batch, logs=None):
        total = logs["loss"] * (batch + 1)
        self.model._batch_losses.append(total - self._previous_total)
        self._previous_total = total


def test_generate_is_seeded_and_honours_initial_noise():
    model = tiny_model()
    model.fit(random_images(), epochs=1, batch_size=8, verbose=0)
    a = model.generate(4, sampler="ddpm", num_steps=20, seed=1, verbose=False)
    b = model.generate(4, sampler="ddpm", num_steps=20, seed=1, verbose=False)
    c = model.generate(4, sampler="ddpm", num_steps=20, seed=2, verbose=False)
    assert a.dtype == np.uint8 and a.shape == (4,) + SHAPE
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)

    noise = np.random.default_rng(3).normal(size=(4,) + SHAPE).astype("float32")
    d = model.generate(4, sampler="ddim", num_steps=10, seed=1, initial_noise=noise, verbose=False, return_float=True)
    e = model.generate(4, sampler="ddim", num_steps=10, seed=9, initial_noise=noise, verbose=False, return_float=True)
    f = model.generate(4, sampler="ddim", num_steps=10, seed=1, verbose=False, return_float=True)
    np.testing.assert_array_equal(d, e)  # deterministic DDIM: only the initial noise matters
    assert not np.allclose(d, f)


def test_a_second_generate_call_does_not_recompile():
    model = tiny_model()
    for _ in range(2):
        model.generate(2, sampler="ddim", num_steps=30, seed=0, verbose=True)
    (loop,) = model._sampling_loops.values()
    if BACKEND == "torch":
        # torch runs the loop eagerly under no_grad: nothing is traced.
        assert loop.trace_count == 0
    else:
        # 30 steps run in chunks for the progress bar, all through one trace.
        assert loop.trace_count == 1


def test_generate_uses_the_ema_weights_and_restores_the_raw_ones():
    model = tiny_model()
    model.fit(random_images(), epochs=1, batch_size=8, verbose=0)
    averages = model.optimizer._model_variables_moving_average
    # fit() ends by writing the EMA into the model (Keras' finalize_variable_values).
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model.trainable_variables[0]), keras.ops.convert_to_numpy(averages[0])
    )
    raw = [v.numpy() * 0 + 0.01 for v in model.trainable_variables]
    for v, value in zip(model.trainable_variables, raw):
        v.assign(value)  # as mid-training: raw weights differ from the average
    with_ema = model.generate(2, sampler="ddim", num_steps=5, seed=0, verbose=False, return_float=True)
    without = model.generate(2, sampler="ddim", num_steps=5, seed=0, verbose=False, return_float=True, use_ema=False)
    assert not np.allclose(with_ema, without)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.trainable_variables[0]), raw[0])


def test_class_conditional_training_and_guidance():
    model = tiny_model(num_classes=3)
    labels = np.arange(16) % 3
    model.fit({"images": random_images(), "labels": labels}, epochs=1, batch_size=8, verbose=0)
    noise = np.random.default_rng(0).normal(size=(3,) + SHAPE).astype("float32")
    kwargs = dict(sampler="ddim", num_steps=5, initial_noise=noise, verbose=False, return_float=True)
    plain = model.generate(3, labels=[0, 1, 2], **kwargs)
    scale_one = model.generate(3, labels=[0, 1, 2], guidance_scale=1.0, **kwargs)
    scale_three = model.generate(3, labels=[0, 1, 2], guidance_scale=3.0, **kwargs)
    np.testing.assert_allclose(scale_one, plain, atol=1e-5)
    assert not np.allclose(scale_three, plain, atol=1e-3)


def test_keras_file_round_trip(tmp_path):
    model = tiny_model(prediction_type="v_prediction")
    model.fit(random_images(), epochs=1, batch_size=8, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, DDPM)
    assert loaded.prediction_type == "v_prediction" and loaded.schedule.beta_schedule == "cosine"
    # The optimizer comes back with its EMA state, so training can go on.
    assert loaded.optimizer.use_ema and loaded.optimizer.iterations.numpy() == model.optimizer.iterations.numpy()
    for a, b in zip(loaded.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    kwargs = dict(sampler="ddpm", num_steps=10, seed=4, verbose=False, return_float=True)
    np.testing.assert_allclose(loaded.generate(3, **kwargs), model.generate(3, **kwargs), atol=1e-6)


_SAVE_SCRIPT = """
import json, sys, numpy as np, keras
from keras_diffusion.models import DDPM
from keras_diffusion.networks import build_unet
from keras_diffusion.processes import DiscreteVPSchedule
net = build_unet((8, 8, 1), widths=(8, 16), num_res_blocks=1, attention_resolutions=(4,), norm_groups=4)
rng = np.random.default_rng(0)
for v in net.weights:
    v.assign(rng.normal(scale=0.1, size=v.shape).astype("float32"))
model = DDPM(net, DiscreteVPSchedule("cosine"), seed=0)
model.compile()
model.save(sys.argv[1])
noise = np.random.default_rng(1).normal(size=(4, 8, 8, 1)).astype("float32")
out = model.generate(4, sampler="ddim", num_steps=10, initial_noise=noise, clip_sample=False, verbose=False,
                     return_float=True)
np.save(sys.argv[2], out)
"""


def test_a_model_saved_under_another_backend_loads_and_generates_the_same(tmp_path):
    other = {"jax": "torch", "tensorflow": "jax", "torch": "tensorflow"}[BACKEND]
    path, expected_path = str(tmp_path / "m.keras"), str(tmp_path / "out.npy")
    env = dict(os.environ, KERAS_BACKEND=other)
    subprocess.run([sys.executable, "-c", _SAVE_SCRIPT, path, expected_path], env=env, check=True,
                   capture_output=True)
    model = keras.saving.load_model(path)
    noise = np.random.default_rng(1).normal(size=(4,) + SHAPE).astype("float32")
    # No clipping: with random weights, x0 estimates sit far outside [-1, 1],
    # and clipping turns float32 round-off at the boundary into large jumps.
    got = model.generate(4, sampler="ddim", num_steps=10, initial_noise=noise, clip_sample=False, verbose=False,
                         return_float=True)
    # Stated tolerance: float32 kernels differ across backends by ~1e-6 per op.
    np.testing.assert_allclose(got, np.load(expected_path), atol=1e-4)


@pytest.mark.parametrize(
    "images,message",
    [
        (np.zeros((0,) + SHAPE, "float32"), "empty"),
        (np.zeros((4, 8, 8), "float32"), "rank|4"),
        (np.zeros((4, 16, 16, 1), "float32"), "shape"),
        (np.zeros((4,) + SHAPE, "uint8"), "to_model_range"),
        (np.full((4,) + SHAPE, np.nan, "float32"), "NaN|non-finite"),
    ],
)
def test_bad_training_data_gets_a_clear_error(images, message):
    with pytest.raises(ValueError, match=message):
        tiny_model().fit(images, epochs=1, verbose=0)


def test_bad_shapes_from_a_pydataset_get_a_clear_error():
    data = _Batches(np.zeros((8, 16, 16, 1), "float32"), 4)
    with pytest.raises(ValueError, match=r"Expected images of shape \(batch, 8, 8, 1\)"):
        tiny_model().fit(data, epochs=1, verbose=0)


def test_bad_generate_arguments_get_clear_errors():
    model = tiny_model()
    with pytest.raises(ValueError, match="Unknown sampler: 'plms'"):
        model.generate(2, sampler="plms")
    with pytest.raises(ValueError, match="num_steps=2000 is larger than the 1000 timesteps"):
        model.generate(2, sampler="ddim", num_steps=2000)
    with pytest.raises(ValueError, match="unconditional"):
        model.generate(2, labels=[0, 1])
    with pytest.raises(ValueError, match="initial_noise must have shape"):
        model.generate(2, initial_noise=np.zeros((3,) + SHAPE))
    with pytest.raises(ValueError, match="num_images must be a positive integer"):
        model.generate(0)
    with pytest.raises(ValueError, match="Unknown prediction_type: 'noise'"):
        DDPM(conv_network(), prediction_type="noise")
    with pytest.raises(ValueError, match="compute their own loss"):
        model.compile(loss="mse")
    conditional = tiny_model(num_classes=3)
    with pytest.raises(ValueError, match="guidance_scale needs labels"):
        conditional.generate(2, guidance_scale=2.0)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        conditional.generate(2, labels=[0, 5])


def test_the_readme_low_level_heun_recipe_equals_generate():
    """README's recipe (prior_std, clip_x0=True) gives what generate(sampler="heun", "karras") gives."""
    import functools

    from keras_diffusion import samplers

    model = tiny_model(tiny_unet())
    noise = np.random.default_rng(4).normal(size=(3,) + SHAPE).astype("float32")
    sigmas = samplers.karras_sigmas(6, *model.process.sigma_range)
    x = noise * model.process.prior_std(sigmas[0])
    recipe = samplers.sample_heun(functools.partial(model.denoise, clip_x0=True), x, sigmas)
    generated = model.generate(
        3, sampler="heun", num_steps=6, sigma_schedule="karras", initial_noise=noise,
        verbose=False, return_float=True,
    )
    np.testing.assert_allclose(keras.ops.convert_to_numpy(recipe), generated, atol=2e-5)
    unclipped = samplers.sample_heun(model.denoise, x, sigmas)
    assert not np.allclose(keras.ops.convert_to_numpy(unclipped), generated, atol=1e-3)
