"""The one driver every sampler runs through.

A sampler is a step function
`step(denoiser, x, state, i, sigmas, noise, **options) -> (x, state)` that
moves `x` from noise level `sigmas[i]` to `sigmas[i + 1]`. `state` is a tuple
of tensors shaped like `x` that multistep samplers carry between steps
(previous denoised images or derivatives); `noise()` draws this step's
standard normal noise, and `noise(k)` (`k` an int or int tensor) an
independent draw of stream `k`, for samplers that need several per step. `run_steps` runs such a function over steps
`[start, stop)` with `ops.fori_loop`, so a whole loop (or a chunk of it, to
drive a progress bar) compiles to one program on every backend.
"""

import keras
from keras import ops


class _TensorSeed(keras.random.SeedGenerator):
    """A `SeedGenerator` view of a seed tensor, usable inside compiled loops.

    `keras.random` draws from integer seeds or `SeedGenerator`s. A generator's
    state cannot advance inside a traced JAX loop, so each step derives its own
    seed tensor from the loop index and hands it over through this view.
    """

    def __init__(self, seed):  # noqa: D107 -- no state to create; see class docstring.
        self._seed = seed

    def next(self, ordered=True):
        return self._seed


def step_noise(shape, seed, step, stream=0):
    """Standard normal noise for loop step `step`, derived from a `(2,)` seed tensor.

    `seed` is a seed tensor as `keras.random.SeedGenerator(n).next()` returns
    it. The same `(seed, step, stream)` gives the same noise on the same
    backend; stream 0 is the one `noise()` draws.

    Example:
    >>> seed = keras.random.SeedGenerator(0).next()
    >>> a = step_noise((2, 3), seed, ops.convert_to_tensor(4))
    >>> b = step_noise((2, 3), seed, ops.convert_to_tensor(4))
    >>> bool(ops.all(a == b))
    True
    """
    # Streams shift the step counter by a prime above any step count: torch's backend seeds its
    # generator with the sum of the two seed entries, so a stream in the other entry would collide.
    step = ops.cast(step, "int32") + ops.cast(stream, "int32") * 1000003
    offset = ops.cast(ops.stack([ops.zeros_like(step), step]), seed.dtype)
    return keras.random.normal(shape, seed=_TensorSeed(seed + offset))


def run_steps(step, denoiser, x, state, sigmas, seed, start, stop, **options):
    """Runs `step` for steps `[start, stop)` of `sigmas` with `ops.fori_loop`.

    Args:
        step: a step function (see the module docstring).
        denoiser: `denoiser(x, sigma) -> x0_hat` with `sigma` of shape
            `(batch,)`. Steps call it with a scalar noise level; it is
            broadcast to the batch here. `mean_flow_step` calls
            `denoiser(x, sigma, sigma_next)` (a `MeanFlow` model's).
        x: the samples at noise level `sigmas[start]`, `(batch, ...)`.
        state: the step function's carried tensors (a tuple, maybe empty).
        sigmas: float32 tensor of noise levels, `(num_steps + 1,)`.
        seed: a `(2,)` seed tensor for `step_noise`.
        start: first step (int or int tensor).
        stop: one past the last step.
        **options: the step function's keyword options.

    Returns:
        `(x, state)` after step `stop - 1`.
    """

    def batched(x, sigma, *sigma_next):
        # A step that passes the next level too (`mean_flow_step`) asks for the interval's `x0_hat`.
        return denoiser(x, *(ops.broadcast_to(s, ops.shape(x)[:1]) for s in (sigma, *sigma_next)))

    def body(i, carry):
        x, state = carry

        def noise(stream=0):
            return step_noise(ops.shape(x), seed, i, stream)

        x, state = step(batched, x, state, i, sigmas, noise, **options)
        return x, tuple(state)

    return ops.fori_loop(start, stop, body, (x, tuple(state)))
