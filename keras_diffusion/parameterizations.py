"""Parameterizations: what the network predicts, and how its output becomes `x0_hat`.

A model is a network, a process, a parameterization and a loss weighting.
Each parameterization here answers four questions, for data of any shape
(the per-example `alpha`, `sigma`, `sigma_hat` arrive broadcastable to it):

- `network_input(x_t, alpha, sigma)`: what the network sees (`x_t`, or EDM's `c_in * x`);
- `target(x0, noise, x_t, alpha, sigma)`: what its output is trained towards;
- `x0(output, x, sigma_hat, alpha)`: the clean sample from an output, with
  `x = x_t / alpha` in sampler space;
- `output_scale(alpha, sigma)`: how an error of the output scales into an
  error of `x0_hat` (the min-SNR weights and DDIM's image loss use it).

| name | target | `x0_hat` | processes |
|---|---|---|---|
| `epsilon` | `eps` | `x - sigma_hat * out` | any |
| `sample` | `x0` | `out` | any |
| `v_prediction` | `alpha eps - sigma x0` | `alpha^2 x - alpha sigma_hat out` | VP |
| `velocity` | `eps - x0` | `(x - sigma_hat out) / (1 + sigma_hat)` (= `x_t - t v`) | rectified flow |
| `edm` | `(x0 - c_skip x) / c_out` | `c_skip x + c_out out` | EDM |
| `consistency` | (none: consistency losses) | `c_skip x + c_out out`, from `sigma_min` | EDM |

EDM preconditioning (Karras et al. 2022, Table 1), with `s = sigma_hat` and
`s_d = sigma_data`: `c_skip = s_d^2 / (s^2 + s_d^2)`,
`c_out = s s_d / sqrt(s^2 + s_d^2)`, `c_in = 1 / sqrt(s^2 + s_d^2)`
(and `c_noise = log(s) / 4`, the `EDMProcess`'s network time). Its loss
weight `(s^2 + s_d^2) / (s s_d)^2` on the error of `D` is exactly weight 1
on the error of the network's output against `target`, since
`weight * c_out^2 = 1`; so the loss here is the plain mean squared error.

The consistency models' boundary parameterization (Song et al. 2023, appendix
C) shifts EDM's by `sigma_min`: `c_skip = s_d^2 / ((s - sigma_min)^2 + s_d^2)`,
`c_out = s_d (s - sigma_min) / sqrt(s^2 + s_d^2)`, so `x0_hat = x` exactly at
`s = sigma_min`; `c_in` is EDM's. Away from `sigma_min` it is EDM's, so an
EDM network starts a consistency model (`keras_diffusion.distill`).

Example:
>>> from keras_diffusion.processes import RectifiedFlow
>>> velocity = get_parameterization("velocity", RectifiedFlow())
>>> x_t, t, v = 0.2, 0.5, 0.6                       # x_t = (1 - t) x0 + t eps
>>> x, sigma_hat = x_t / (1 - t), t / (1 - t)      # sampler space
>>> round(float(velocity.x0(v, x, sigma_hat, 1 - t)), 6)  # x_t - t * v
-0.1
"""

from keras import ops


class Parameterization:
    """Base class: one prediction type; see the module docstring.

    Attributes:
        name: the `prediction_type` string.
        kinds: the process kinds it fits (`Process.kind`).
        hint: what to use instead when it does not fit.
    """

    name = None
    kinds = ("vp", "subvp", "flow", "ve")
    hint = ""

    def __init__(self, process):
        if process.kind not in self.kinds:
            raise ValueError(
                f"prediction_type={self.name!r} does not fit {type(process).__name__} (a {process.kind!r} "
                f"process; {self.name!r} needs one of {self.kinds}). {self.hint}"
            )
        self.process = process

    def network_input(self, x_t, alpha, sigma):
        return x_t

    def target(self, x0, noise, x_t, alpha, sigma):
        raise NotImplementedError

    def x0(self, output, x, sigma_hat, alpha):
        raise NotImplementedError

    def output_scale(self, alpha, sigma):
        raise NotImplementedError


class Epsilon(Parameterization):
    name = "epsilon"

    def target(self, x0, noise, x_t, alpha, sigma):
        return noise

    def x0(self, output, x, sigma_hat, alpha):
        return x - sigma_hat * output

    def output_scale(self, alpha, sigma):
        return sigma / alpha


class Sample(Parameterization):
    name = "sample"

    def target(self, x0, noise, x_t, alpha, sigma):
        return x0

    def x0(self, output, x, sigma_hat, alpha):
        return output

    def output_scale(self, alpha, sigma):
        return ops.ones_like(sigma)


class VPrediction(Parameterization):
    """`v = alpha * eps - sigma * x0` (Salimans & Ho 2022); `x0 = alpha x_t - sigma v` needs `alpha^2 + sigma^2 = 1`."""

    name = "v_prediction"
    kinds = ("vp",)
    hint = "Use 'velocity' with RectifiedFlow, 'edm' with EDMProcess, or 'epsilon'/'sample' with any process."

    def target(self, x0, noise, x_t, alpha, sigma):
        return alpha * noise - sigma * x0

    def x0(self, output, x, sigma_hat, alpha):
        return ops.square(alpha) * x - (sigma_hat * alpha) * output

    def output_scale(self, alpha, sigma):
        return sigma


class Velocity(Parameterization):
    """The flow's velocity `dx_t/dt = eps - x0`; `x0 = x_t - t v`."""

    name = "velocity"
    kinds = ("flow",)
    hint = "It is the velocity of RectifiedFlow's path; with a VP schedule use 'v_prediction' or 'epsilon'."

    def target(self, x0, noise, x_t, alpha, sigma):
        return noise - x0

    def x0(self, output, x, sigma_hat, alpha):
        # x_t = (alpha + sigma) x0 + sigma v, divided by alpha.
        return (x - sigma_hat * output) / (1.0 + sigma_hat)

    def output_scale(self, alpha, sigma):
        return sigma / (alpha + sigma)


class EDMPreconditioning(Parameterization):
    """Karras et al. 2022's preconditioning: `D = c_skip x + c_out F(c_in x, c_noise)`."""

    name = "edm"
    kinds = ("ve",)
    hint = "It reads sigma_data from EDMProcess; use keras_diffusion.EDM (or process=EDMProcess())."

    def _coefficients(self, sigma_hat):
        sd2 = self.process.sigma_data**2
        norm = ops.sqrt(ops.square(sigma_hat) + sd2)
        return sd2 / (ops.square(sigma_hat) + sd2), sigma_hat * self.process.sigma_data / norm, 1.0 / norm

    def network_input(self, x_t, alpha, sigma):
        _, _, c_in = self._coefficients(sigma / alpha)
        return c_in * (x_t / alpha)

    def target(self, x0, noise, x_t, alpha, sigma):
        c_skip, c_out, _ = self._coefficients(sigma / alpha)
        return (x0 - c_skip * (x_t / alpha)) / c_out

    def x0(self, output, x, sigma_hat, alpha):
        c_skip, c_out, _ = self._coefficients(sigma_hat)
        return c_skip * x + c_out * output

    def output_scale(self, alpha, sigma):
        return self._coefficients(sigma / alpha)[1]


class ConsistencyBoundary(EDMPreconditioning):
    """Song et al. 2023's `f(x, s) = c_skip x + c_out F`, which is the identity at `s = sigma_min`."""

    name = "consistency"
    hint = "It reads sigma_min and sigma_data from the process; use keras_diffusion.distill.ConsistencyModel."

    def _coefficients(self, sigma_hat):
        sd2 = self.process.sigma_data**2
        shifted = sigma_hat - self.process.sigma_min
        norm = ops.sqrt(ops.square(sigma_hat) + sd2)
        return sd2 / (ops.square(shifted) + sd2), shifted * self.process.sigma_data / norm, 1.0 / norm


PARAMETERIZATIONS = {
    p.name: p for p in (Epsilon, Sample, VPrediction, Velocity, EDMPreconditioning, ConsistencyBoundary)
}


def prediction_types(process):
    """The `prediction_type` names that fit `process` (a `Process`), in registry order.

    Example:
    >>> from keras_diffusion.processes import RectifiedFlow
    >>> prediction_types(RectifiedFlow())
    ('epsilon', 'sample', 'velocity')
    """
    return tuple(name for name, parameterization in PARAMETERIZATIONS.items() if process.kind in parameterization.kinds)


def get_parameterization(name, process):
    """The parameterization `name` for `process`, or an error naming the choices and the fix.

    Example:
    >>> from keras_diffusion.processes import EDMProcess
    >>> get_parameterization("edm", EDMProcess()).name
    'edm'
    """
    if name not in PARAMETERIZATIONS:
        raise ValueError(f"Unknown prediction_type: {name!r}. Use one of {tuple(PARAMETERIZATIONS)}.")
    return PARAMETERIZATIONS[name](process)
