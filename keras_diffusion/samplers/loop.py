"""The denoising loop shared by every discrete-time sampler.

`make_sampling_loop` returns a function of tensors only, so that
`keras_diffusion.compile.CompiledLoop` can compile it once per shapes.
The loop runs steps `[start, stop)` of a schedule; calling it in chunks
lets `generate` show a progress bar without a per-step `predict()`.
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


def step_noise(shape, seed, step):
    """Standard normal noise for loop step `step`, derived from a `(2,)` seed tensor.

    `seed` is a seed tensor as `keras.random.SeedGenerator(n).next()` returns
    it. The same `(seed, step)` gives the same noise on the same backend.
    """
    offset = ops.cast(ops.stack([ops.zeros_like(step), step]), seed.dtype)
    return keras.random.normal(shape, seed=_TensorSeed(seed + offset))


def make_sampling_loop(predict, step_fn, clip_sample=False, stochastic=True):
    """Builds `loop(x, timesteps, alphas, alphas_prev, eta, seed, start, stop, *cond)`.

    Args:
        predict: `predict(x, t, *cond) -> (x0_hat, eps_hat)`, with `t` an int
            tensor of shape `(batch,)`.
        step_fn: a step function from `keras_diffusion.samplers`.
        clip_sample: clip `x0_hat` to [-1, 1] before each step.
        stochastic: draw fresh noise each step (DDPM, or DDIM with eta > 0).

    Returns:
        A function of tensors that returns `x` after steps `[start, stop)`.
    """

    def loop(x, timesteps, alphas, alphas_prev, eta, seed, start, stop, *cond):
        batch = ops.shape(x)[0]

        def body(i, x):
            t = ops.broadcast_to(ops.take(timesteps, i), (batch,))
            x0, eps = predict(x, t, *cond)
            if clip_sample:
                x0 = ops.clip(x0, -1.0, 1.0)
            noise = step_noise(ops.shape(x), seed, i) if stochastic else None
            return step_fn(x, x0, eps, ops.take(alphas, i), ops.take(alphas_prev, i), noise=noise, eta=eta)

        return ops.fori_loop(start, stop, body, x)

    return loop
