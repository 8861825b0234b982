"""The probability-flow ODE: fixed-step RK4, and adaptive Dormand-Prince RK45 written in `keras.ops`.

In sigma space the probability-flow ODE of every process is
`dx/dsigma = (x - D(x, sigma)) / sigma` (Karras et al. 2022, eq. 3; Euler
and Heun are in `keras_diffusion.samplers.euler`). RK45 integrates it in
`u = log(sigma)`, `dx/du = x - D(x, e^u)`, whose scale does not change with
the noise level (score_sde integrates the VE ODE in `t`, which is
`log(sigma)` up to a constant factor).

`solve_rk45` is a general adaptive solver for `dy/dt = fun(t, y)` on a tuple
of tensors: Dormand & Prince's 5(4) pair with FSAL, scipy's step-size
control (safety 0.9, factors in [0.2, 10]) and error norm (RMS of
`err / (atol + rtol max(|y|, |y_new|))` over all entries). It is one
`ops.while_loop`, so it compiles on every backend, and it counts the
function evaluations (NFE).
"""

from keras import ops

# Dormand & Prince 1980, "A family of embedded Runge-Kutta formulae" (the tableau of scipy's RK45).
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
)
_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)
# Fifth- minus fourth-order weights, over k1..k7 (k7 = fun(t + h, y_new), the next k1).
_E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)


def _combine(y, h, ks, coefficients):
    """`y + h * sum_j c_j k_j` for a tuple of tensors `y` and a list of such tuples `ks`."""
    return tuple(
        part + h * sum(c * k[p] for c, k in zip(coefficients, ks) if c != 0.0) for p, part in enumerate(y)
    )


def _rms(parts):
    total = sum(ops.sum(ops.square(p)) for p in parts)
    count = sum(ops.size(p) for p in parts)
    return ops.sqrt(total / ops.cast(count, "float32"))


def solve_rk45(fun, y, t0, t1, rtol=1e-5, atol=1e-5, max_steps=10000):
    """Integrates `dy/dt = fun(t, y)` from `t0` to `t1` with adaptive Dormand-Prince RK45.

    Args:
        fun: `fun(t, y) -> dy/dt`, `t` a float32 scalar tensor, `y` a tuple of tensors.
        y: the state at `t0`, a tuple of float32 tensors.
        t0: the start time (a float or scalar tensor); `t1 < t0` integrates backwards.
        t1: the end time.
        rtol: relative tolerance.
        atol: absolute tolerance.
        max_steps: the most steps (accepted or rejected) before it stops.

    Returns:
        `(y, nfe)`: the state at `t1` (a tuple) and the number of `fun` calls
        (an int32 tensor).

    Example:
    >>> y, nfe = solve_rk45(lambda t, y: (-y[0],), (ops.ones((1,)),), 0.0, 1.0)
    >>> round(float(y[0][0]), 5), int(nfe) < 100  # exp(-1)
    (0.36788, True)
    """
    y = tuple(ops.cast(part, "float32") for part in y)
    t0 = ops.cast(ops.convert_to_tensor(t0), "float32")
    t1 = ops.cast(ops.convert_to_tensor(t1), "float32")
    direction = ops.where(t1 >= t0, 1.0, -1.0)
    f0 = tuple(fun(t0, y))
    # scipy's first guess of the step (select_initial_step, without its second evaluation).
    d0 = _rms([p / (atol + rtol * ops.abs(p)) for p in y])
    d1 = _rms([f / (atol + rtol * ops.abs(p)) for f, p in zip(f0, y)])
    h = ops.where(ops.logical_or(d0 < 1e-5, d1 < 1e-5), 1e-6, 0.01 * d0 / ops.maximum(d1, 1e-12))
    h = ops.minimum(h, ops.abs(t1 - t0))

    def cond(t, y, f, h, nfe, steps):
        return ops.logical_and(direction * (t1 - t) > 0, steps < max_steps)

    def body(t, y, f, h, nfe, steps):
        remaining = ops.abs(t1 - t)
        h = ops.minimum(h, remaining)
        dt = direction * h
        ks = [f]
        for c, a in zip(_C[1:], _A[1:]):
            ks.append(tuple(fun(t + c * dt, _combine(y, dt, ks, a))))
        y_new = _combine(y, dt, ks, _B)
        ks.append(tuple(fun(t + dt, y_new)))
        error = _combine(tuple(ops.zeros_like(p) for p in y), dt, ks, _E)
        norm = _rms([e / (atol + rtol * ops.maximum(ops.abs(p), ops.abs(q))) for e, p, q in zip(error, y, y_new)])
        accept = norm <= 1.0
        factor = ops.where(norm == 0.0, 10.0, 0.9 * ops.power(ops.maximum(norm, 1e-10), -0.2))
        factor = ops.where(accept, ops.clip(factor, 0.2, 10.0), ops.clip(factor, 0.2, 1.0))
        t_next = ops.where(accept, ops.where(h >= remaining, t1, t + dt), t)
        y = tuple(ops.where(accept, q, p) for p, q in zip(y, y_new))
        f = tuple(ops.where(accept, q, p) for p, q in zip(f, ks[-1]))
        return t_next, y, f, h * factor, nfe + 6, steps + 1

    state = (t0, y, f0, h, ops.convert_to_tensor(1, "int32"), ops.convert_to_tensor(0, "int32"))
    _, y, _, _, nfe, _ = ops.while_loop(cond, body, state)
    return y, nfe


def probability_flow(denoiser):
    """`fun(u, (x,))` for `solve_rk45`: the probability-flow ODE `dx/du = x - D(x, e^u)`, `u = log(sigma)`."""

    def fun(u, y):
        x = y[0]
        return (x - denoiser(x, ops.exp(u)),)

    return fun


def rk4_step(denoiser, x, state, i, sigmas, noise):
    """One classical Runge-Kutta step of `dx/dsigma = (x - D) / sigma` from `sigmas[i]` to `sigmas[i + 1]`.

    Four model evaluations per step; the step to `sigma = 0` is an Euler
    step (it lands on `D(x, sigma)`), as in Heun's method.
    """
    sigma, sigma_next = sigmas[i], sigmas[i + 1]
    h = sigma_next - sigma

    def d(x, s):
        return (x - denoiser(x, s)) / s

    k1 = d(x, sigma)

    def rk4():
        k2 = d(x + 0.5 * h * k1, sigma + 0.5 * h)
        k3 = d(x + 0.5 * h * k2, sigma + 0.5 * h)
        k4 = d(x + h * k3, sigma_next)
        return x + h / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)

    return ops.cond(sigma_next > 0, rk4, lambda: x + h * k1), state


def rk45_step(denoiser, x, state, i, sigmas, noise, rtol=1e-5, atol=1e-5):
    """RK45 on the probability-flow ODE (in `log(sigma)`) from `sigmas[i]` to `sigmas[i + 1]`.

    With score_sde's levels `[sigma_max, sigma_min, 0]` (`num_steps=2`, the
    default of `"ode_rk45"`), one adaptive integration from `sigma_max` to
    `sigma_min`, then the denoised mean `D(x, sigma_min)` (score_sde's
    `denoise=True`). Tolerances default to score_sde's `1e-5`.

    Reference: Song et al. 2021, sec. 4.3 and Appendix D.2; score_sde
    `sampling.py::get_ode_sampler` (scipy's `RK45`).
    """
    sigma, sigma_next = sigmas[i], sigmas[i + 1]

    def integrate():
        y, _ = solve_rk45(probability_flow(denoiser), (x,), ops.log(sigma), ops.log(sigma_next), rtol, atol)
        return y[0]

    return ops.cond(sigma_next > 0, integrate, lambda: denoiser(x, sigma)), state
