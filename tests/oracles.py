"""Analytic oracles for data `x0 ~ N(mu, s^2)` per dimension, and stand-in networks that compute them.

In sampler space (`x = x0 + sigma * eps`) the ideal denoiser is
`D = mu + s^2 / (s^2 + sigma^2) (x - mu)` and the probability-flow ODE maps `x`
at `sigma` to `mu + s / sqrt(s^2 + sigma^2) (x - mu)` at 0. On the rectified
flow (`z_t = (1 - t) x0 + t eps`), with `m_t = (1 - t) mu` and
`S_t^2 = (1 - t)^2 s^2 + t^2`, the exact velocity is
`v = -mu + (t - (1 - t) s^2) / S_t^2 (z - m_t)` (`../shared/NOTES.md`).
"""

import keras
import numpy as np
from keras import ops

MU, S = 0.3, 0.5


def exact_denoiser(x, sigma, mu=MU, s=S):
    return mu + s**2 / (s**2 + sigma**2) * (x - mu)


def exact_flow_map(x, sigma, mu=MU, s=S):
    """Where the PF-ODE takes `x` at noise level `sigma` (sampler space) at `sigma = 0`."""
    return mu + s / np.sqrt(s**2 + sigma**2) * (x - mu)


def exact_velocity(z, t, mu=MU, s=S):
    m = (1.0 - t) * mu
    var = (1.0 - t) ** 2 * s**2 + t**2
    return -mu + (t - (1.0 - t) * s**2) / var * (z - m)


class ExactVelocity(keras.layers.Layer):
    """`[z_t, t] -> v(z_t, t)`: the exact rectified-flow velocity for N(mu, s^2) data."""

    def call(self, inputs):
        z, t = inputs
        t = ops.reshape(t, (-1,) + (1,) * (len(z.shape) - 1))
        return exact_velocity(z, t)


class ExactEDMOutput(keras.layers.Layer):
    """`[c_in x, c_noise] -> F` such that `c_skip x + c_out F` is the exact denoiser (sigma_data = 0.5)."""

    def call(self, inputs, sigma_data=0.5):
        scaled, c_noise = inputs
        sigma = ops.reshape(ops.exp(4.0 * c_noise), (-1,) + (1,) * (len(scaled.shape) - 1))
        norm = ops.sqrt(sigma**2 + sigma_data**2)
        x = scaled * norm
        c_skip, c_out = sigma_data**2 / norm**2, sigma * sigma_data / norm
        return (exact_denoiser(x, sigma) - c_skip * x) / c_out


def stand_in(layer, shape=(2,)):
    x, t = keras.Input(shape), keras.Input(())
    return keras.Model([x, t], layer([x, t]))


def mlp(shape=(2,), num_classes=None, width=32):
    """A small trainable network `[x, t] (+ labels) -> shaped like x`, for training tests."""
    x, t = keras.Input(shape), keras.Input(())
    inputs = [x, t]
    h = keras.layers.Concatenate()([keras.layers.Flatten()(x), keras.layers.Reshape((1,))(t)])
    if num_classes is not None:
        labels = keras.Input((), dtype="int32")
        inputs.append(labels)
        h = keras.layers.Concatenate()([h, keras.layers.Flatten()(keras.layers.Embedding(num_classes + 1, 4)(labels))])
    h = keras.layers.Dense(width, activation="silu")(h)
    h = keras.layers.Dense(width, activation="silu")(h)
    out = keras.layers.Dense(int(np.prod(shape)))(h)
    return keras.Model(inputs, keras.layers.Reshape(shape)(out))
