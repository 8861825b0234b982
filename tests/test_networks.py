"""Tests for keras_diffusion.networks: embeddings, attention and the U-Net."""

import math

import keras
import numpy as np
import pytest

from keras_diffusion.networks import (
    UNET_PRESETS,
    SinusoidalEmbedding,
    SpatialSelfAttention,
    build_unet,
    unet_from_preset,
)
from keras_diffusion.networks.attention import explicit_attention

TINY = dict(
    image_shape=(16, 16, 1),
    widths=(8, 16),
    num_res_blocks=1,
    attention_resolutions=(8,),
    norm_groups=4,
)


def _inputs(batch=2, num_classes=None, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, 16, 16, 1)).astype("float32")
    t = rng.uniform(0, 999, size=(batch,)).astype("float32")
    if num_classes is None:
        return [x, t]
    # The last label is the null label used for classifier-free guidance.
    labels = np.array([0, num_classes], dtype="int32")[:batch]
    return [x, t, labels]


def _randomize_head(model):
    """The head conv is zero-initialised; give it weights so outputs vary."""
    layer = model.get_layer("out_conv")
    rng = np.random.default_rng(1)
    layer.set_weights(
        [rng.normal(0, 0.1, w.shape).astype("float32") for w in layer.get_weights()]
    )


def test_unconditional_unet_shape_and_dtype():
    model = build_unet(**TINY)
    assert [i.name for i in model.inputs] == ["x", "t"]
    out = keras.ops.convert_to_numpy(model(_inputs()))
    assert out.shape == (2, 16, 16, 1)
    assert out.dtype == np.float32
    # Zero-initialised head: an untrained network predicts exactly zero.
    np.testing.assert_array_equal(out, 0.0)


def test_conditional_unet_shape_and_label_effect():
    model = build_unet(**TINY, num_classes=3)
    assert [i.name for i in model.inputs] == ["x", "t", "labels"]
    _randomize_head(model)
    x, t, labels = _inputs(num_classes=3)
    out = keras.ops.convert_to_numpy(model([x, t, labels]))
    assert out.shape == (2, 16, 16, 1)
    assert out.dtype == np.float32
    other = keras.ops.convert_to_numpy(model([x, t, labels[::-1].copy()]))
    assert not np.allclose(out, other)


def test_sinusoidal_embedding_matches_numpy():
    dim, max_period = 16, 10000.0
    t = np.array([0.0, 1.0, 17.5, 999.0], dtype="float32")
    out = keras.ops.convert_to_numpy(SinusoidalEmbedding(dim, max_period)(t))
    half = dim // 2
    freqs = np.exp(-math.log(max_period) * np.arange(half) / half)
    args = t[:, None].astype("float64") * freqs[None, :]
    expected = np.concatenate([np.sin(args), np.cos(args)], axis=-1)
    assert out.shape == (4, dim)
    np.testing.assert_allclose(out, expected, atol=2e-4)


def test_sinusoidal_embedding_config_round_trip():
    layer = SinusoidalEmbedding(32, max_period=100.0)
    clone = SinusoidalEmbedding.from_config(layer.get_config())
    assert (clone.dim, clone.max_period) == (32, 100.0)


@pytest.mark.parametrize("dim", [0, 7, 8.0])
def test_sinusoidal_embedding_rejects_bad_dim(dim):
    with pytest.raises(ValueError, match="`dim` must be a positive even integer"):
        SinusoidalEmbedding(dim)


def test_attention_shape_and_dependence_on_input():
    layer = SpatialSelfAttention(groups=4, num_heads=2)
    x = keras.random.normal((2, 4, 4, 8), seed=0)
    out = keras.ops.convert_to_numpy(layer(x))
    assert out.shape == (2, 4, 4, 8)
    assert layer.compute_output_shape((2, 4, 4, 8)) == (2, 4, 4, 8)
    # The attention branch must contribute, not just the residual.
    assert not np.allclose(out, keras.ops.convert_to_numpy(x))
    x2 = keras.ops.convert_to_numpy(x).copy()
    x2[:, 0, 0, :] += 1.0
    out2 = keras.ops.convert_to_numpy(layer(x2))
    # Attention is global: a change at one pixel moves the others too.
    assert not np.allclose(out[:, 1:, 1:], out2[:, 1:, 1:])


def test_explicit_attention_equals_the_fused_kernel_and_has_a_jvp():
    """`explicit_attention()` (what likelihoods use: torch's fused CPU kernel has no forward-mode AD)."""
    layer = SpatialSelfAttention(groups=4, num_heads=2)
    x = keras.random.normal((2, 4, 4, 8), seed=0)
    tangent = keras.random.normal((2, 4, 4, 8), seed=1)
    fused = keras.ops.convert_to_numpy(layer(x))
    with explicit_attention():
        np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), fused, atol=1e-5)
        _, jvp = keras.ops.jvp(layer, (x,), (tangent,))
    step = 1e-2  # central differences along the tangent
    difference = (layer(x + step * tangent) - layer(x - step * tangent)) / (2 * step)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(jvp), keras.ops.convert_to_numpy(difference),
                               rtol=2e-3, atol=2e-3)


def test_attention_rejects_heads_not_dividing_channels():
    with pytest.raises(ValueError, match="not divisible by `num_heads`=3"):
        SpatialSelfAttention(groups=4, num_heads=3)(keras.ops.zeros((1, 4, 4, 8)))


def test_mnist_small_preset_param_count():
    model = unet_from_preset("mnist_small")
    assert 1_000_000 <= model.count_params() <= 2_000_000
    assert model.output.shape == (None, 32, 32, 1)


def test_ddpm_keras_io_preset_config():
    # Building the 63.2M-parameter network takes seconds; check the config.
    assert UNET_PRESETS["ddpm_keras_io"] == {
        "image_shape": (64, 64, 3),
        "widths": (64, 128, 256, 512),
        "num_res_blocks": 2,
        "attention_resolutions": (16, 8),
        "norm_groups": 8,
    }


def test_preset_overrides_and_unknown_name():
    model = unet_from_preset("mnist_small", num_classes=10, name="digits")
    assert model.name == "digits"
    assert [i.name for i in model.inputs] == ["x", "t", "labels"]
    with pytest.raises(ValueError, match="Known presets: .*mnist_small"):
        unet_from_preset("nope")


def test_keras_save_load_round_trip(tmp_path):
    model = build_unet(**TINY, num_classes=3)
    _randomize_head(model)
    inputs = _inputs(num_classes=3)
    expected = keras.ops.convert_to_numpy(model(inputs))
    path = tmp_path / "unet.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(restored(inputs)), expected
    )


def test_channels_first_layout_computes_the_same_function(tmp_path):
    # Inputs and outputs stay channels-last; only the inner layout changes,
    # so weights move between the two layouts unchanged.
    last = build_unet(**TINY, num_classes=3)
    first = build_unet(**TINY, num_classes=3, data_format="channels_first")
    _randomize_head(last)
    first.set_weights(last.get_weights())
    inputs = _inputs(num_classes=3)
    expected = last.predict_on_batch(inputs)

    def predict(model):
        # TensorFlow's CPU kernels are NHWC-only: its channels-first convolutions
        # need XLA, which Keras' "auto" leaves off on a CPU-only machine.
        if keras.backend.backend() == "tensorflow":
            model.compile(jit_compile=True)
        return model.predict_on_batch(inputs)

    np.testing.assert_allclose(predict(first), expected, atol=1e-5)
    path = tmp_path / "channels_first.keras"
    first.save(path)
    restored = keras.saving.load_model(path)
    assert restored.get_layer("stem").data_format == "channels_first"
    np.testing.assert_allclose(predict(restored), expected, atol=1e-5)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(data_format="NCHW"), r"`data_format` must be 'channels_last', 'channels_first' or None"),
        (dict(image_shape=(18, 18, 1), widths=(8, 16, 16)), r"divisible by 2\*\*"),
        (dict(widths=(8, 10)), r"multiple of `norm_groups`=4"),
        (dict(widths=()), r"`widths` must list at least one"),
        (dict(dropout=-0.1), r"`dropout` must be in \[0, 1\), got -0.1"),
        (dict(attention_resolutions=(4,)), r"valid resolutions .* \[16, 8\]"),
        (dict(num_res_blocks=0), r"`num_res_blocks` must be a positive"),
        (dict(num_classes=0), r"`num_classes` must be None or a positive"),
        (dict(time_embedding_dim=0), r"`time_embedding_dim` must be None or a"),
        (dict(norm_groups=0), r"`norm_groups` must be a positive integer, got 0"),
        (dict(image_shape=(16, 16)), r"`image_shape` must be \(height, width"),
    ],
)
def test_build_unet_rejects_bad_arguments(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_unet(**{**TINY, **overrides})
