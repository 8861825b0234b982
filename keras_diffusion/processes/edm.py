"""`EDMProcess`: the variance-exploding process of Karras et al. 2022, with its training and sampling noise levels."""

import keras
from keras import ops

from keras_diffusion.processes.base import Process
from keras_diffusion.samplers.sigmas import karras_sigmas


@keras.saving.register_keras_serializable(package="keras_diffusion")
class EDMProcess(Process):
    """EDM: `x_t = x0 + sigma * eps`, where the time is the noise level itself (`t = sigma`).

    Training draws `log(sigma) ~ N(p_mean, p_std**2)`; sampling visits
    Karras' rho=7 levels from `sigma_max` to `sigma_min`, then 0, and starts
    from `sigma_max * N(0, I)`. The network is given `c_noise = log(sigma) / 4`.
    `sigma_data` is the data's standard deviation, which the `"edm"`
    preconditioning reads (`keras_diffusion.parameterizations`).

    Args:
        sigma_min: the smallest nonzero sampling noise level.
        sigma_max: the largest noise level (where sampling starts).
        sigma_data: the standard deviation of the data.
        p_mean: mean of `log(sigma)` in training.
        p_std: standard deviation of `log(sigma)` in training.
        rho: the curvature of the sampling levels.

    Reference: Karras, Aittala, Aila & Laine 2022, "Elucidating the Design
    Space of Diffusion-Based Generative Models", Table 1 and eq. 5.

    Example:
    >>> [round(float(s), 3) for s in EDMProcess().sigmas(3)]
    [80.0, 2.515, 0.002, 0.0]
    """

    kind = "ve"

    def __init__(self, sigma_min=0.002, sigma_max=80.0, sigma_data=0.5, p_mean=-1.2, p_std=1.2, rho=7.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(
                f"EDMProcess needs 0 < sigma_min < sigma_max. Received: sigma_min={sigma_min}, "
                f"sigma_max={sigma_max}. The paper's values are sigma_min=0.002, sigma_max=80."
            )
        for name, value in (("sigma_data", sigma_data), ("p_std", p_std), ("rho", rho)):
            if not value > 0:
                raise ValueError(f"{name} must be positive. Received: {name}={value}")
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.sigma_data = float(sigma_data)
        self.p_mean = float(p_mean)
        self.p_std = float(p_std)
        self.rho = float(rho)

    def sample_t(self, batch_size, seed):
        """Lognormal noise levels: `exp(p_mean + p_std * n)`."""
        return ops.exp(keras.random.normal((batch_size,), self.p_mean, self.p_std, seed=seed))

    def alpha_sigma(self, t):
        t = ops.cast(t, "float32")
        return ops.ones_like(t), t

    def t_to_sigma(self, t):
        return ops.cast(t, "float32")

    def sigma_to_t(self, sigma):
        return ops.cast(sigma, "float32")

    def sigma_to_alpha(self, sigma):
        return ops.ones_like(ops.cast(sigma, "float32"))

    def prior_std(self, sigma):
        """`sigma`: the prior `N(0, sigma_max**2 I)` of Karras et al. (Algorithm 1)."""
        return float(sigma)

    def network_time(self, t):
        """`c_noise = log(sigma) / 4` (Karras et al., Table 1)."""
        return ops.log(ops.cast(t, "float32")) / 4.0

    @property
    def sigma_range(self):
        return self.sigma_min, self.sigma_max

    def sigmas(self, num_steps, timestep_spacing=None):
        """Karras et al.'s levels (eq. 5, `rho`), then 0: float32 numpy `(num_steps + 1,)`."""
        if timestep_spacing is not None:
            raise ValueError(
                f"EDMProcess spaces its noise levels with Karras' rho={self.rho}; timestep_spacing="
                f"{timestep_spacing!r} does not apply. Drop it, or use sigma_schedule='exponential'."
            )
        return karras_sigmas(num_steps, self.sigma_min, self.sigma_max, self.rho)

    def default_num_steps(self, sampler):
        """18 for Heun (35 model evaluations, the paper's CIFAR-10 setting); 35 for single-evaluation samplers."""
        return 18 if sampler == "heun" else 35

    def get_config(self):
        return {
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
            "sigma_data": self.sigma_data,
            "p_mean": self.p_mean,
            "p_std": self.p_std,
            "rho": self.rho,
        }
