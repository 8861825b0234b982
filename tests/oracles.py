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


def exact_consistency(x, sigma, sigma_min, mu=MU, s=S):
    """The consistency function with boundary `sigma_min`: the PF-ODE from `sigma` to `sigma_min`."""
    return mu + np.sqrt(s**2 + sigma_min**2) / np.sqrt(s**2 + sigma**2) * (x - mu)


def exact_mean_velocity(z, r, t, mu=MU, s=S):
    """`u(z, r, t) = (z_t - z_r) / (t - r)` along the exact flow; `v(z, t)` where `r = t`."""
    m_t, m_r = (1.0 - t) * mu, (1.0 - r) * mu
    s_t = np.sqrt((1.0 - t) ** 2 * s**2 + t**2)
    s_r = np.sqrt((1.0 - r) ** 2 * s**2 + r**2)
    z_r = m_r + s_r / s_t * (z - m_t)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(t > r, (z - z_r) / np.where(t > r, t - r, 1.0), exact_velocity(z, t, mu, s))


class ExactConsistencyOutput(keras.layers.Layer):
    """`[c_in x, c_noise] -> F` such that `c_skip x + c_out F` (the consistency boundary
    parameterization, sigma_data = 0.5) is the exact consistency function."""

    def __init__(self, sigma_min, **kwargs):
        super().__init__(**kwargs)
        self.sigma_min = sigma_min

    def call(self, inputs, sigma_data=0.5):
        scaled, c_noise = inputs
        sigma = ops.reshape(ops.exp(4.0 * c_noise), (-1,) + (1,) * (len(scaled.shape) - 1))
        norm = ops.sqrt(sigma**2 + sigma_data**2)
        x = scaled * norm
        shifted = sigma - self.sigma_min
        c_skip, c_out = sigma_data**2 / (shifted**2 + sigma_data**2), shifted * sigma_data / norm
        f = MU + np.sqrt(S**2 + self.sigma_min**2) / ops.sqrt(S**2 + sigma**2) * (x - MU)
        safe = ops.where(c_out > 1e-6, c_out, 1.0)
        return ops.where(c_out > 1e-6, (f - c_skip * x) / safe, 0.0)


class ExactMeanVelocity(keras.layers.Layer):
    """`[z_t, t, t - r] -> u(z_t, r, t)`, the exact average velocity (time_scale 1), in `keras.ops`."""

    def call(self, inputs):
        z, t, h = inputs
        t = ops.reshape(t, (-1,) + (1,) * (len(z.shape) - 1))
        r = t - ops.reshape(h, (-1,) + (1,) * (len(z.shape) - 1))
        m_t, m_r = (1.0 - t) * MU, (1.0 - r) * MU
        s_t = ops.sqrt((1.0 - t) ** 2 * S**2 + t**2)
        s_r = ops.sqrt((1.0 - r) ** 2 * S**2 + r**2)
        interval = (z - m_r - s_r / s_t * (z - m_t)) / ops.where(t > r, t - r, 1.0)
        return ops.where(t > r, interval, exact_velocity(z, t))


def stand_in(layer, shape=(2,)):
    x, t = keras.Input(shape), keras.Input(())
    return keras.Model([x, t], layer([x, t]))


def stand_in_interval(layer, shape=(2,)):
    """A network `[x, t, h]` around `layer`, with the inputs named as MeanFlow wants them."""
    x, t, h = keras.Input(shape, name="x"), keras.Input((), name="t"), keras.Input((), name="h")
    return keras.Model([x, t, h], layer([x, t, h]))


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


def langevin_moments(sigmas, start_std, n_steps_each=100, alpha=None, mu=MU, s=S):
    """The exact mean and std of annealed Langevin (`samplers.langevin_step`) on N(mu, s^2) data.

    With the exact denoiser each step `x + a/2 score + sqrt(a) z` is linear in `x`, so from
    `N(0, start_std^2)` the mean and variance follow `m <- m + a/2 (mu - m) / V`,
    `v <- (1 - a / (2V))^2 v + a` with `V = s^2 + sigma^2`; the last level ends with the denoised mean.
    `alpha(sigma)` is the step at level `sigma` (default: the sampler's `0.2 sigma^2`).
    """
    levels = np.asarray(sigmas, np.float64)[:-1]
    mean, var = 0.0, float(start_std) ** 2
    for sigma in levels:
        a, big_v = (0.2 * sigma**2 if alpha is None else alpha(sigma)), s**2 + sigma**2
        for _ in range(n_steps_each):
            mean, var = mean + a / 2 * (mu - mean) / big_v, (1 - a / (2 * big_v)) ** 2 * var + a
    shrink = s**2 / (s**2 + levels[-1] ** 2)
    return mu + shrink * (mean - mu), shrink * np.sqrt(var)
