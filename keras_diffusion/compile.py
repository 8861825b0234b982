"""The one backend-aware place: compiling a whole sampling loop per backend.

Sampling code is written once with `keras.ops`; `compile_loop` turns it
into one compiled program per input signature:

- JAX: `jax.jit` over a stateless function; the owner's variables are
  passed in as arguments through a `keras.StatelessScope`, so weights
  changed by training are always the ones used (KerasHub's
  `TextToImage.make_generate_function` does the same). Non-trainable
  variables that the function assigns, such as a `SeedGenerator`'s state,
  are written back after each call, as TensorFlow and torch do, so a
  second call draws fresh noise.
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

# The Keras backends this package runs on (the CLI's `--backend` choices).
BACKENDS = ("jax", "tensorflow", "torch")


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

        # Which non-trainable variables `fn` assigns (SeedGenerator states,
        # say) is found while tracing; only those are returned and written
        # back, so frozen weights are not copied on every call.
        assigned = []

        def stateless(trainable, non_trainable, *args):
            owned = self._owner.non_trainable_variables
            mapping = list(zip(self._owner.trainable_variables, trainable))
            mapping += list(zip(owned, non_trainable))
            with keras.StatelessScope(state_mapping=mapping) as scope:
                initial = dict(scope.state_mapping)
                outputs = self._traced(*args)
            updates = {}
            for index, variable in enumerate(owned):
                current = scope.state_mapping[id(variable)]
                if current is not initial[id(variable)]:
                    updates[index] = current
            assigned[:] = sorted(updates)
            return outputs, [updates[index] for index in assigned]

        jitted = jax.jit(stateless)

        def run(*args):
            trainable = [v.value for v in self._owner.trainable_variables]
            non_trainable = [v.value for v in self._owner.non_trainable_variables]
            outputs, updates = jitted(trainable, non_trainable, *args)
            owned = self._owner.non_trainable_variables
            for index, value in zip(assigned, updates):
                owned[index].assign(value)
            return outputs

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
