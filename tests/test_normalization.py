"""`GroupNorm` computes what `keras.layers.GroupNormalization` computes, faster."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_diffusion.networks.normalization import GroupNorm


def _pair(groups, shape, rng):
    fast, ref = GroupNorm(groups), keras.layers.GroupNormalization(groups)
    fast.build(shape)
    ref.build(shape)
    gamma = rng.normal(size=shape[-1]).astype("float32")
    beta = rng.normal(size=shape[-1]).astype("float32")
    for layer in (fast, ref):
        layer.set_weights([gamma, beta])
    return fast, ref


@pytest.mark.parametrize("groups", [1, 4, 16])
def test_matches_keras_group_normalization(groups, rng):
    # A large mean relative to the spread stresses E[x^2] - E[x]^2, which both use.
    x = (rng.normal(size=(3, 8, 6, 16)) * 2.0 + 1.5).astype("float32")
    fast, ref = _pair(groups, x.shape, rng)
    np.testing.assert_allclose(ops.convert_to_numpy(fast(x)), ops.convert_to_numpy(ref(x)), atol=2e-5)


def test_gradients_match(rng):
    x = rng.normal(size=(2, 4, 4, 8)).astype("float32")
    outputs = []
    for layer in _pair(4, x.shape, rng):
        inputs = keras.Input((4, 4, 8))
        model = keras.Model(inputs, layer(inputs))
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
        model.train_on_batch(x, np.zeros_like(x))
        outputs.append(model.get_weights())
    for fast, ref in zip(*outputs):
        np.testing.assert_allclose(fast, ref, atol=1e-5)


def test_other_ranks_use_the_keras_path_and_config_round_trips(rng):
    x = rng.normal(size=(2, 5, 8)).astype("float32")
    fast, ref = _pair(2, x.shape, rng)
    np.testing.assert_allclose(ops.convert_to_numpy(fast(x)), ops.convert_to_numpy(ref(x)), atol=1e-5)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(fast))
    assert isinstance(clone, GroupNorm) and clone.groups == 2


def test_mixed_precision_output_dtype(rng):
    layer = GroupNorm(2, dtype="mixed_bfloat16")
    out = layer(rng.normal(size=(1, 4, 4, 4)).astype("float32"))
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"


def test_channels_first_matches_channels_last(rng):
    x = (rng.normal(size=(2, 6, 5, 8)) + 0.5).astype("float32")
    last, _ = _pair(4, x.shape, rng)
    first = GroupNorm(4, axis=1)
    first.build((2, 8, 6, 5))
    first.set_weights(last.get_weights())
    out = ops.convert_to_numpy(first(np.transpose(x, (0, 3, 1, 2))))
    np.testing.assert_allclose(np.transpose(out, (0, 2, 3, 1)), ops.convert_to_numpy(last(x)), atol=1e-5)
