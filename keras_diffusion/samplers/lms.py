"""Linear multistep (Adams-Bashforth) on the probability-flow ODE in sigma."""

import numpy as np
from keras import ops

# Three Gauss-Legendre nodes integrate the (degree <= 3) Lagrange basis exactly.
_NODES, _WEIGHTS = (a.astype("float32") for a in np.polynomial.legendre.leggauss(3))


def _lms_coefficients(sigmas, i, order):
    """`c_j = integral from sigmas[i] to sigmas[i+1] of the Lagrange basis l_j`.

    The basis interpolates at `sigmas[i - j]`, `j < min(i + 1, order)`;
    coefficients of unused history are 0.
    """
    used = ops.minimum(i + 1, order)
    a, b = sigmas[i], sigmas[i + 1]
    taus = 0.5 * (a + b) + 0.5 * (b - a) * ops.convert_to_tensor(_NODES)
    points = [sigmas[ops.maximum(i - k, 0)] for k in range(order)]
    coefficients = []
    for j in range(order):
        basis = ops.ones_like(taus)
        for k in range(order):
            if k != j:
                active = k < used
                denominator = ops.where(active, points[j] - points[k], 1.0)
                basis = basis * ops.where(active, (taus - points[k]) / denominator, 1.0)
        integral = 0.5 * (b - a) * ops.sum(ops.convert_to_tensor(_WEIGHTS) * basis)
        coefficients.append(ops.where(j < used, integral, 0.0))
    return coefficients


def lms_step(denoiser, x, state, i, sigmas, noise, order=4):
    """One LMS step: `x' = x + sum_j c_j * d_{i-j}` over the last `order` derivatives.

    Reference: k-diffusion `sample_lms` (after Karras et al. 2022's ODE);
    diffusers `LMSDiscreteScheduler`. Its state holds the previous
    `order - 1` derivatives `d = (x - D(x, sigma)) / sigma`.

    Args:
        order: 1 to 4; diffusers' default is 4.
    """
    if order not in (1, 2, 3, 4):
        raise ValueError(f"lms order must be 1, 2, 3 or 4. Received: order={order!r}")
    d = (x - denoiser(x, sigmas[i])) / sigmas[i]
    history = (d,) + tuple(state)
    coefficients = _lms_coefficients(sigmas, i, order)
    for c, derivative in zip(coefficients, history):
        x = x + c * derivative
    return x, history[:-1]
