"""The one backend-aware place: compiling a whole sampling loop per backend.

Sampling code is written once with `keras.ops`; `compile_loop` turns it
into one compiled program per input signature:

- JAX: `jax.jit` over a stateless function; the model's variables are
  passed in as arguments through a `keras.StatelessScope`, so weights
  changed by training are always the ones used (KerasHub's
  `TextToImage.make_generate_function` does the same).
- TensorFlow: `tf.function`, with XLA unless `jit_compile=False`.
  Diffusion models pass their `jit_compile`, which Keras resolves from
  "auto" to no XLA on a CPU-only machine: TensorFlow's graph runs oneDNN
  kernels there, faster than XLA:CPU on convolutions
  (benchmarks/README.md).
- PyTorch: eager execution under `torch.no_grad()`; no graph to build.

Each compiled function counts how often its Python body was traced, so
tests can check that a second call with the same shapes does not
recompile.
"""

import keras


class CompiledLoop:
    """A function of tensors, compiled once per input shapes for this backend.

    Args:
        fn: a function of tensors written with `keras.ops`.
        variables_owner: the `keras.Layer`/`keras.Model` whose variables
            `fn` reads.
        jit_compile: on TensorFlow, whether to compile with XLA (default
            True). Diffusion models pass their own `model.jit_compile`.
            Ignored on other backends.

    Attributes:
        trace_count: how many times `fn`'s Python body was traced into a
            graph (JAX, TensorFlow). On torch `fn` runs eagerly and this
            stays 0: there is nothing to compile.

    Example:
    >>> layer = keras.layers.Dense(2)
    >>> layer.build((None, 3))
    >>> run = CompiledLoop(lambda x: layer(x), layer)
    >>> tuple(run(keras.ops.ones((4, 3))).shape)
    (4, 2)
    """

    def __init__(self, fn, variables_owner, jit_compile=True):
        self.backend = keras.backend.backend()
        self.jit_compile = bool(jit_compile)
        self.trace_count = 0
        self._owner = variables_owner
        self._fn = fn
        self._compiled = getattr(self, f"_build_{self.backend}")()

    def _traced(self, *args):
        self.trace_count += 1
        return self._fn(*args)

    def _build_jax(self):
        import jax

        def stateless(trainable, non_trainable, *args):
            mapping = list(zip(self._owner.trainable_variables, trainable))
            mapping += list(zip(self._owner.non_trainable_variables, non_trainable))
            with keras.StatelessScope(state_mapping=mapping):
                return self._traced(*args)

        jitted = jax.jit(stateless)

        def run(*args):
            trainable = [v.value for v in self._owner.trainable_variables]
            non_trainable = [v.value for v in self._owner.non_trainable_variables]
            return jitted(trainable, non_trainable, *args)

        return run

    def _build_tensorflow(self):
        import tensorflow as tf

        return tf.function(self._traced, jit_compile=self.jit_compile)

    def _build_torch(self):
        import torch

        def run(*args):
            with torch.no_grad():
                return self._fn(*args)

        return run

    def __call__(self, *args):
        return self._compiled(*args)
