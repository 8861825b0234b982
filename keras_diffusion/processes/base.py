"""`Process`: the contract every noise process fulfils (see `keras_diffusion.processes`)."""

import numpy as np
from keras import ops

TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


def append_dims(values, ndim):
    """Reshapes a `(batch,)` tensor to `(batch, 1, ..., 1)` with `ndim` dims, for data of any rank.

    Example:
    >>> tuple(append_dims(ops.ones((3,)), 4).shape)
    (3, 1, 1, 1)
    """
    return ops.reshape(values, (-1,) + (1,) * (ndim - 1))


def check_num_steps(num_steps):
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer. Received: num_steps={num_steps!r}")


class Process:
    """A noise process `x_t = alpha(t) * x0 + sigma(t) * eps`: the base of every process here.

    A subclass implements `sample_t`, `alpha_sigma`, `sigma_to_t`,
    `sigma_to_alpha`, `prior_std`, `sigma_range`, `sigmas` and
    `get_config`, and may override `t_to_sigma`, `network_time` and
    `default_num_steps`.

    Attributes:
        kind: `"vp"` (variance preserving, `alpha**2 + sigma**2 = 1`),
            `"flow"` (`alpha + sigma = 1`, rectified flow), `"subvp"`
            (`sigma = 1 - alpha**2`, the sub-VP SDE) or `"ve"` (variance
            exploding, `alpha = 1`). Parameterizations check it
            (`keras_diffusion.parameterizations`).
        default_timestep_spacing: the spacing `sigmas()` uses by default.
    """

    kind = None
    default_timestep_spacing = None

    def sample_t(self, batch_size, seed):
        """Draws `batch_size` training times with `keras.random` (`seed`: a `SeedGenerator`)."""
        raise NotImplementedError(f"{type(self).__name__} must implement sample_t(batch_size, seed).")

    def alpha_sigma(self, t):
        """Returns `(alpha(t), sigma(t))`, float32 tensors shaped like `t`."""
        raise NotImplementedError(f"{type(self).__name__} must implement alpha_sigma(t).")

    def alpha(self, t):
        """The signal scale `alpha(t)`."""
        return self.alpha_sigma(t)[0]

    def sigma(self, t):
        """The noise scale `sigma(t)`."""
        return self.alpha_sigma(t)[1]

    def add_noise(self, x0, noise, t):
        """Returns `x_t = alpha(t) * x0 + sigma(t) * noise` for times `t` of shape `(batch,)`."""
        alpha, sigma = self.alpha_sigma(t)
        ndim = len(x0.shape)
        return append_dims(alpha, ndim) * x0 + append_dims(sigma, ndim) * noise

    def t_to_sigma(self, t):
        """The noise level `sigma_hat = sigma(t) / alpha(t)` at times `t`."""
        alpha, sigma = self.alpha_sigma(t)
        return sigma / alpha

    def sigma_to_t(self, sigma):
        """The times at noise levels `sigma` (`sigma_hat`): the inverse of `t_to_sigma`."""
        raise NotImplementedError(f"{type(self).__name__} must implement sigma_to_t(sigma).")

    def sigma_to_alpha(self, sigma):
        """`alpha(t)` at the time of noise level `sigma`: the scale from sampler space to `x_t`."""
        raise NotImplementedError(f"{type(self).__name__} must implement sigma_to_alpha(sigma).")

    def prior_std(self, sigma):
        """The prior: samples at noise level `sigma` start as `prior_std(sigma) * N(0, I)`.

        Returns a Python float, for a float `sigma`.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement prior_std(sigma).")

    @property
    def sigma_range(self):
        """`(sigma_min, sigma_max)`: the smallest and largest noise level the process samples at."""
        raise NotImplementedError(f"{type(self).__name__} must implement the sigma_range property.")

    def sigmas(self, num_steps, timestep_spacing=None):
        """The noise levels a sampler visits: float32 numpy `(num_steps + 1,)`, descending, ending with 0."""
        raise NotImplementedError(f"{type(self).__name__} must implement sigmas(num_steps, timestep_spacing).")

    def network_time(self, t):
        """What the network is given as time at times `t`: by default `t` itself, as float32."""
        return ops.cast(t, "float32")

    def default_num_steps(self, sampler):
        """The number of steps `generate(sampler=...)` takes when `num_steps` is None."""
        return 50

    def get_config(self):
        raise NotImplementedError(f"{type(self).__name__} must implement get_config().")

    @classmethod
    def from_config(cls, config):
        return cls(**config)


class VariancePreserving(Process):
    """A process with `alpha**2 + sigma**2 = 1`, so `alpha = 1 / sqrt(1 + sigma_hat**2)`."""

    kind = "vp"

    def sigma_to_alpha(self, sigma):
        return 1.0 / ops.sqrt(1.0 + ops.square(ops.cast(sigma, "float32")))

    def prior_std(self, sigma):
        """`sqrt(1 + sigma**2)`: `x_T ~ N(0, I)` seen in sampler space (`x_T / alpha`)."""
        return float(np.sqrt(1.0 + np.float64(sigma) ** 2))
