"""Score SDEs (Song et al. 2021): `VESDE`, `VPSDE` and `subVPSDE`, with score_sde's definitions and defaults.

Each is a forward SDE `dx = f(x, t) dt + g(t) dw` on continuous time
`t in [eps, 1]` (`eps = 1e-5`), whose marginal is
`x_t = mean_coeff(t) x0 + std(t) eps`, and a `Process` (so every model and
sampler here runs on it): `alpha = mean_coeff`, `sigma = std`, and the
sampler-space noise level `sigma_hat = std / mean_coeff`.

| SDE | drift `f` | diffusion `g` | `alpha(t)` | `std(t)` |
|---|---|---|---|---|
| VE | 0 | `sigma(t) sqrt(2 log(smax / smin))` | 1 | `smin (smax / smin)^t` |
| VP | `-beta(t) x / 2` | `sqrt(beta(t))` | `exp(m(t))` | `sqrt(1 - exp(2 m(t)))` |
| sub-VP | `-beta(t) x / 2` | `sqrt(beta(t) (1 - exp(4 m(t))))` | `exp(m(t))` | `1 - exp(2 m(t))` |

with `beta(t) = beta_min + t (beta_max - beta_min)` and
`m(t) = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2`. The priors are
`N(0, sigma_max^2 I)` (VE) and `N(0, I)` (VP, sub-VP).

Reference: Song, Sohl-Dickstein, Kingma, Kumar, Ermon & Poole 2021,
"Score-Based Generative Modeling through Stochastic Differential Equations";
github.com/yang-song/score_sde, `sde_lib.py`.
"""

import math

import keras
import numpy as np
from keras import ops

from keras_diffusion.processes.base import Process
from keras_diffusion.processes.base import append_dims
from keras_diffusion.processes.base import check_num_steps

SDE_EPS = 1e-5


class ScoreSDE(Process):
    """Base of the score SDEs: continuous `t` drawn uniformly from `[eps, 1]`, score_sde's samplers' times.

    A subclass implements `drift`, `diffusion`, `marginal_prob`, `prior_std`, `discretize`,
    `sigma_to_t`, `sigma_to_alpha` and `get_config`.

    Args:
        num_scales: `N`, the number of discrete levels of `discretize` (score_sde's `N`).
        eps: the smallest time (training and sampling start there).
    """

    default_timestep_spacing = "linspace"

    def __init__(self, num_scales=1000, eps=SDE_EPS):
        check_num_steps(num_scales)
        if not 0.0 < eps < 1.0:
            raise ValueError(f"eps must be in (0, 1); score_sde uses 1e-5. Received: eps={eps}")
        self.num_scales = int(num_scales)
        self.eps = float(eps)

    def sample_t(self, batch_size, seed):
        """Times uniform in `[eps, 1]` (score_sde's `losses.py`)."""
        return keras.random.uniform((batch_size,), minval=self.eps, maxval=1.0, seed=seed)

    def alpha_sigma(self, t):
        mean, std = self.marginal_prob(None, t)
        return mean, std

    def prior_logp(self, z):
        """`log N(z; 0, prior_std^2 I)` per example, in `x_t` space."""
        std = self.prior_std_xt
        dim = math.prod(z.shape[1:])
        sq = ops.sum(ops.reshape(ops.square(z), (ops.shape(z)[0], -1)), axis=1)
        return -0.5 * dim * math.log(2 * math.pi * std**2) - sq / (2 * std**2)

    def prior_sampling(self, shape, seed=None):
        """Draws `x_T ~ N(0, prior_std^2 I)` in `x_t` space."""
        return self.prior_std_xt * keras.random.normal(shape, seed=seed)

    @property
    def sigma_range(self):
        """The noise levels `sigma_hat` at `t = eps` and `t = 1`."""
        low, high = ops.convert_to_numpy(self.t_to_sigma(ops.convert_to_tensor([self.eps, 1.0])))
        return float(low), float(high)

    def sigmas(self, num_steps, timestep_spacing=None):
        """`sigma_hat` at score_sde's sampling times `linspace(1, eps, num_steps)`, then 0."""
        check_num_steps(num_steps)
        if (timestep_spacing or "linspace") != "linspace":
            raise ValueError(
                f"{type(self).__name__} samples at times linspace(1, eps, N) ('linspace'); received "
                f"timestep_spacing={timestep_spacing!r}. Drop it, or use sigma_schedule='karras'|'exponential'."
            )
        times = np.linspace(1.0, self.eps, num_steps) if num_steps > 1 else np.ones(1)
        sigmas = ops.convert_to_numpy(self.t_to_sigma(ops.convert_to_tensor(times, "float32")))
        return np.append(sigmas, 0.0).astype("float32")

    def default_num_steps(self, sampler):
        """score_sde's `N = 1000` for predictor-corrector, 10 levels for annealed Langevin, 2 for `"ode_rk45"`
        (one adaptive solve from `sigma_max` to `sigma_min`, then the denoised mean); 50 otherwise."""
        return {"pc": 1000, "langevin": 10, "ode_rk45": 2}.get(sampler, 50)

    def sde(self, x, t):
        """`(drift f(x, t), diffusion g(t))`, as score_sde's `SDE.sde`."""
        return self.drift(x, t), self.diffusion(t)

    def _check_t(self, t):
        return ops.cast(ops.convert_to_tensor(t), "float32")


class _BetaSDE(ScoreSDE):
    """VP and sub-VP: linear `beta(t)`, mean coefficient `exp(m(t))`."""

    def __init__(self, beta_min=0.1, beta_max=20.0, num_scales=1000, eps=SDE_EPS):
        super().__init__(num_scales, eps)
        if not 0.0 < beta_min < beta_max:
            raise ValueError(
                f"Need 0 < beta_min < beta_max (score_sde: 0.1 and 20). Received: beta_min={beta_min}, "
                f"beta_max={beta_max}"
            )
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)

    prior_std_xt = 1.0

    def beta(self, t):
        return self.beta_min + self._check_t(t) * (self.beta_max - self.beta_min)

    def log_mean_coeff(self, t):
        t = self._check_t(t)
        return -0.25 * ops.square(t) * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def _t_of_log_mean_coeff(self, m):
        """The inverse of `m(t)`: the root of `(bmax - bmin) t^2 / 4 + bmin t / 2 + m = 0`."""
        span = self.beta_max - self.beta_min
        # (-bmin + sqrt(bmin^2 - 4 span m)) / span, written without cancellation at small t.
        return -4.0 * m / (self.beta_min + ops.sqrt(self.beta_min**2 - 4.0 * span * m))

    def drift(self, x, t):
        """`-beta(t) x / 2`."""
        return -0.5 * append_dims(self.beta(t), len(x.shape)) * x

    def network_time(self, t):
        """`999 t`: the labels score_sde's DDPM-style networks are conditioned on for VP SDEs."""
        return 999.0 * self._check_t(t)

    def prior_std(self, sigma):
        """`1 / alpha`: `x_T ~ N(0, I)` seen in sampler space (`x_T / alpha`)."""
        alpha = ops.convert_to_numpy(self.sigma_to_alpha(ops.convert_to_tensor(float(sigma))))
        return float(1.0 / alpha)

    def get_config(self):
        return {"beta_min": self.beta_min, "beta_max": self.beta_max, "num_scales": self.num_scales,
                "eps": self.eps}


@keras.saving.register_keras_serializable(package="keras_diffusion")
class VPSDE(_BetaSDE):
    """The variance-preserving SDE: the continuous limit of DDPM.

    `dx = -beta(t) x / 2 dt + sqrt(beta(t)) dw`; `alpha^2 + std^2 = 1`, so
    `sigma_hat = sqrt(exp(-2 m(t)) - 1)`.

    Args:
        beta_min: `beta(0)` (score_sde: 0.1).
        beta_max: `beta(1)` (score_sde: 20).
        num_scales: `N` of `discretize` (DDPM's 1000 steps).
        eps: the smallest time.

    Example:
    >>> sde = VPSDE()
    >>> mean, std = sde.marginal_prob(None, ops.convert_to_tensor([1.0]))
    >>> round(float(std[0]), 4)
    1.0
    """

    kind = "vp"

    def diffusion(self, t):
        """`sqrt(beta(t))`."""
        return ops.sqrt(self.beta(t))

    def marginal_prob(self, x, t):
        """`(mean, std)` of `x_t | x0 = x`: `exp(m(t)) x` and `sqrt(1 - exp(2 m(t)))` (`x=None`: the coefficient)."""
        m = self.log_mean_coeff(t)
        std = ops.sqrt(-ops.expm1(2.0 * m))
        coeff = ops.exp(m)
        return (coeff if x is None else append_dims(coeff, len(x.shape)) * x), std

    def t_to_sigma(self, t):
        return ops.sqrt(ops.expm1(-2.0 * self.log_mean_coeff(t)))

    def sigma_to_t(self, sigma):
        sigma = ops.cast(sigma, "float32")
        return self._t_of_log_mean_coeff(-0.5 * ops.log1p(ops.square(sigma)))

    def sigma_to_alpha(self, sigma):
        return 1.0 / ops.sqrt(1.0 + ops.square(ops.cast(sigma, "float32")))

    def discretize(self, x, t):
        """DDPM's step at `i = t (N - 1)`: `f = sqrt(1 - beta_i) x - x`, `G = sqrt(beta_i)` (score_sde)."""
        n = self.num_scales
        i = ops.cast(self._check_t(t) * (n - 1), "int32")
        discrete = np.linspace(self.beta_min / n, self.beta_max / n, n).astype("float32")
        beta = ops.take(ops.convert_to_tensor(discrete), i)
        f = append_dims(ops.sqrt(1.0 - beta), len(x.shape)) * x - x
        return f, ops.sqrt(beta)


@keras.saving.register_keras_serializable(package="keras_diffusion")
class subVPSDE(_BetaSDE):
    """The sub-VP SDE: VP's drift with a smaller diffusion, whose std stays below VP's.

    `dx = -beta(t) x / 2 dt + sqrt(beta(t) (1 - exp(-2 bmin t - (bmax - bmin) t^2))) dw`;
    `std = 1 - exp(2 m(t))` (not its square root), so `alpha^2 + std^2 != 1`
    and `sigma_hat = (1 - alpha^2) / alpha`, `alpha = (sqrt(sigma_hat^2 + 4) - sigma_hat) / 2`.

    Args:
        beta_min: `beta(0)` (score_sde: 0.1).
        beta_max: `beta(1)` (score_sde: 20).
        num_scales: `N` of `discretize`.
        eps: the smallest time.

    Example:
    >>> sde = subVPSDE()
    >>> _, std = sde.marginal_prob(None, ops.convert_to_tensor([0.5]))
    >>> round(float(std[0]), 4)  # 1 - exp(-(0.25 * 19.9 / 2 + 0.05))
    0.9227
    """

    kind = "subvp"

    def diffusion(self, t):
        """`sqrt(beta(t) (1 - exp(-2 bmin t - (bmax - bmin) t^2)))`."""
        t = self._check_t(t)
        discount = -ops.expm1(-2.0 * self.beta_min * t - (self.beta_max - self.beta_min) * ops.square(t))
        return ops.sqrt(self.beta(t) * discount)

    def marginal_prob(self, x, t):
        """`(mean, std)`: `exp(m(t)) x` and `1 - exp(2 m(t))`."""
        m = self.log_mean_coeff(t)
        coeff = ops.exp(m)
        return (coeff if x is None else append_dims(coeff, len(x.shape)) * x), -ops.expm1(2.0 * m)

    def t_to_sigma(self, t):
        m = self.log_mean_coeff(t)
        return -ops.expm1(2.0 * m) / ops.exp(m)

    def sigma_to_alpha(self, sigma):
        sigma = ops.cast(sigma, "float32")
        # The positive root of alpha^2 + sigma alpha - 1 = 0, written without cancellation.
        return 2.0 / (ops.sqrt(ops.square(sigma) + 4.0) + sigma)

    def sigma_to_t(self, sigma):
        # log(alpha) = -asinh(sigma / 2), exact where alpha rounds to 1 in float32.
        return self._t_of_log_mean_coeff(-ops.arcsinh(0.5 * ops.cast(sigma, "float32")))

    def discretize(self, x, t):
        """Euler-Maruyama's `f dt`, `g sqrt(dt)` with `dt = 1 / N` (score_sde's generic `SDE.discretize`)."""
        dt = 1.0 / self.num_scales
        drift, diffusion = self.sde(x, t)
        return drift * dt, diffusion * math.sqrt(dt)


@keras.saving.register_keras_serializable(package="keras_diffusion")
class VESDE(ScoreSDE):
    """The variance-exploding SDE: the continuous limit of NCSN's geometric noise levels.

    `dx = sigma(t) sqrt(2 log(sigma_max / sigma_min)) dw` with
    `sigma(t) = sigma_min (sigma_max / sigma_min)^t`; `alpha = 1`, so
    `sigma_hat = sigma(t)`. The network is given `log(sigma)`, as score_sde's
    NCSN++ (Fourier features of the log noise level).

    Args:
        sigma_min: `sigma(0)` (score_sde: 0.01).
        sigma_max: `sigma(1)` (score_sde: 50 on CIFAR-10, 348 on larger images).
        num_scales: `N` of `discretize` (NCSN's levels).
        eps: the smallest time.

    Example:
    >>> sde = VESDE()
    >>> [round(s, 2) for s in sde.sigmas(3).tolist()]
    [50.0, 0.71, 0.01, 0.0]
    """

    kind = "ve"
    prior_std_xt = None  # set from sigma_max

    def __init__(self, sigma_min=0.01, sigma_max=50.0, num_scales=1000, eps=SDE_EPS):
        super().__init__(num_scales, eps)
        if not 0.0 < sigma_min < sigma_max:
            raise ValueError(
                f"Need 0 < sigma_min < sigma_max (score_sde: 0.01 and 50). Received: sigma_min={sigma_min}, "
                f"sigma_max={sigma_max}"
            )
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.prior_std_xt = self.sigma_max
        self.log_ratio = math.log(self.sigma_max / self.sigma_min)

    def drift(self, x, t):
        """0."""
        return ops.zeros_like(x)

    def diffusion(self, t):
        """`sigma(t) sqrt(2 log(sigma_max / sigma_min))`."""
        return self.t_to_sigma(t) * math.sqrt(2.0 * self.log_ratio)

    def marginal_prob(self, x, t):
        """`(x, sigma(t))`: the mean is `x` itself (`x=None`: the coefficient 1)."""
        std = self.t_to_sigma(t)
        return (ops.ones_like(std) if x is None else x), std

    def t_to_sigma(self, t):
        return self.sigma_min * ops.exp(self._check_t(t) * self.log_ratio)

    def sigma_to_t(self, sigma):
        return ops.log(ops.cast(sigma, "float32") / self.sigma_min) / self.log_ratio

    def sigma_to_alpha(self, sigma):
        return ops.ones_like(ops.cast(sigma, "float32"))

    def prior_std(self, sigma):
        """`sigma`: the prior `N(0, sigma_max^2 I)` (score_sde's `prior_sampling`)."""
        return float(sigma)

    def network_time(self, t):
        """`log(sigma(t))`, what score_sde's NCSN++ embeds."""
        return ops.log(self.t_to_sigma(t))

    def discretize(self, x, t):
        """NCSN's step at `i = t (N - 1)`: `f = 0`, `G = sqrt(sigma_i^2 - sigma_{i-1}^2)` (score_sde)."""
        n = self.num_scales
        i = ops.cast(self._check_t(t) * (n - 1), "int32")
        levels = np.exp(np.linspace(np.log(self.sigma_min), np.log(self.sigma_max), n)).astype("float32")
        levels = ops.convert_to_tensor(levels)
        sigma = ops.take(levels, i)
        previous = ops.where(i == 0, 0.0, ops.take(levels, ops.maximum(i - 1, 0)))
        return ops.zeros_like(x), ops.sqrt(ops.square(sigma) - ops.square(previous))

    def get_config(self):
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "num_scales": self.num_scales,
                "eps": self.eps}


SDES = {"ve": VESDE, "vp": VPSDE, "subvp": subVPSDE}


def get_sde(name, **kwargs):
    """The SDE named `"ve"`, `"vp"` or `"subvp"`, built with `kwargs`; a clear error for any other name.

    Example:
    >>> type(get_sde("vp")).__name__
    'VPSDE'
    """
    if isinstance(name, ScoreSDE):
        return name
    if name not in SDES:
        raise ValueError(f"Unknown SDE: {name!r}. Use one of {tuple(SDES)} (or pass a VESDE/VPSDE/subVPSDE).")
    return SDES[name](**kwargs)
