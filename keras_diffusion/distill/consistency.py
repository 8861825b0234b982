"""Consistency models: training from scratch (iCT), distillation from a teacher (CD) and tuning (ECT).

A consistency model `f(x, sigma)` maps any point of a probability-flow ODE
trajectory to the trajectory's start, so one evaluation at `sigma_max`
samples (Song, Dhariwal, Chen & Sutskever 2023). It lives in EDM's sigma
space (`x = x0 + sigma * eps`) with the boundary parameterization
`f = c_skip(sigma) x + c_out(sigma) F(c_in x, log(sigma) / 4)`, the identity
at `sigma_min` (`keras_diffusion.parameterizations`, `"consistency"`).

Training compares `f` at two noise levels of one trajectory, `sigma > r`:
the prediction `f(x0 + sigma z, sigma)` is pulled towards the
stop-gradient target `f(x_r, r)`, with the weight `1 / (sigma - r)`:

- `"ct"`, consistency training (improved CT, Song & Dhariwal 2023): `x_r =
  x0 + r z` with the same noise, adjacent levels of a Karras grid whose size
  doubles from 10 to 1280 over training, drawn with the discretized
  lognormal (`p_mean=-1.1`, `p_std=2.0`), pseudo-Huber loss and no EMA
  target network.
- `"cd"`, consistency distillation (Song et al. 2023): `x_r` is one Heun step
  of the teacher's probability-flow ODE from `sigma` to `r`, on an 18-level
  Karras grid (the paper's CIFAR-10 setting).
- `"ect"`, easy consistency tuning (Geng et al. 2024): starts from a trained
  EDM network and pulls `r` towards `sigma` in stages:
  `r = sigma (1 - n(sigma) / 2**stage)`, `n(sigma) = 1 + 8 sigmoid(-sigma)`;
  at stage 0 `r` is clipped to `sigma_min`, where the target is the data:
  plain denoising, which is what the EDM network was trained for.

Sampling (`"consistency"` sampler) evaluates `f` at `sigma_max`, and for more
steps re-noises to lower levels and evaluates again (Algorithm 1).
"""

import math

import keras
import numpy as np
from keras import ops

from keras_diffusion.distill.untracked import Untracked
from keras_diffusion.models.base import DiffusionModel
from keras_diffusion.processes import EDMProcess
from keras_diffusion.processes import append_dims
from keras_diffusion.samplers.sigmas import karras_sigmas

METHODS = ("ct", "cd", "ect")


@keras.saving.register_keras_serializable(package="keras_diffusion")
class ConsistencyProcess(EDMProcess):
    """EDM's sigma space with improved CT's training levels and consistency sampling's levels.

    Training draws `log(sigma) ~ N(p_mean, p_std**2)` (iCT: -1.1 and 2.0).
    `sigmas(n)` are the `n` levels a consistency model is evaluated at: the
    first `n` of `n + 1` Karras levels from `sigma_max` to `sigma_min`, then
    0 (one step: `[sigma_max, 0]`).

    Example:
    >>> [round(float(s), 3) for s in ConsistencyProcess().sigmas(2)]
    [80.0, 2.515, 0.0]
    """

    def __init__(self, sigma_min=0.002, sigma_max=80.0, sigma_data=0.5, p_mean=-1.1, p_std=2.0, rho=7.0):
        super().__init__(sigma_min, sigma_max, sigma_data, p_mean, p_std, rho)

    def sigmas(self, num_steps, timestep_spacing=None):
        levels = super().sigmas(num_steps + 1, timestep_spacing)
        return np.append(levels[:num_steps], 0.0).astype("float32")

    def default_num_steps(self, sampler):
        return 1


@keras.saving.register_keras_serializable(package="keras_diffusion")
class ConsistencyModel(DiffusionModel):
    """A consistency model, trained by `fit()` with consistency training, distillation or tuning.

    Args:
        network: a Keras model mapping `[c_in * x, log(sigma) / 4]` (plus
            `labels`) to `F`, shaped like `x` (any EDM network).
        process: a `ConsistencyProcess` (the default) or any `EDMProcess`.
        method: `"ct"`, `"cd"` (needs `teacher`) or `"ect"`; see the module
            docstring.
        teacher: for `"cd"`, a trained `DiffusionModel` of any family, whose
            `denoise` drives the ODE step. It is not saved with the student.
        total_steps: the optimizer steps the training will take; `"ct"`
            doubles its number of levels in 8 equal stages over them, and
            `"ect"` halves `sigma - r` in 8 equal stages.
        initial_levels: `"ct"`'s first number of levels (iCT: 10).
        final_levels: `"ct"`'s largest number of levels (iCT: 1280).
        distillation_levels: `"cd"`'s fixed number of levels (18).
        loss_type: `"pseudo_huber"` (default, iCT's `c = 0.00054 sqrt(d)`) or `"mse"`.
        **kwargs: `num_classes`, `label_dropout`, `image_shape`, `seed`: see
            `DiffusionModel`.

    Example:
    >>> import numpy as np
    >>> x = keras.Input((2,)); t = keras.Input(())
    >>> h = keras.layers.Dense(32, activation="silu")(
    ...     keras.layers.Concatenate()([x, keras.layers.Reshape((1,))(t)]))
    >>> model = ConsistencyModel(keras.Model([x, t], keras.layers.Dense(2)(h)), total_steps=8, seed=0)
    >>> model.compile()
    >>> data = np.random.default_rng(0).normal(0, 0.5, (64, 2)).astype("float32")
    >>> _ = model.fit(data, epochs=2, batch_size=16, verbose=0)
    >>> model.generate(4, num_steps=2, seed=0, verbose=0, return_float=True).shape
    (4, 2)
    """

    default_sampler = "consistency"
    default_clip_sample = False

    def __init__(self, network, process=None, method="ct", teacher=None, total_steps=None, initial_levels=10,
                 final_levels=1280, distillation_levels=18, loss_type="pseudo_huber",
                 prediction_type="consistency", **kwargs):
        process = process if process is not None else ConsistencyProcess()
        if not isinstance(process, EDMProcess):
            raise ValueError(
                f"A consistency model lives in EDM's sigma space; got a {type(process).__name__}. "
                "Use ConsistencyProcess() (or an EDMProcess)."
            )
        super().__init__(network, process, prediction_type=prediction_type, loss_type=loss_type, **kwargs)
        if method not in METHODS:
            raise ValueError(f"Unknown method: {method!r}. Use one of {METHODS}.")
        if method in ("ct", "ect") and (total_steps is None or int(total_steps) < 1):
            raise ValueError(
                f"method={method!r} schedules its levels over the run: pass total_steps=, the number "
                "of optimizer steps fit() will take (epochs * batches per epoch)."
            )
        if not 1 < initial_levels <= final_levels:
            raise ValueError(
                f"Need 1 < initial_levels <= final_levels. Received: {initial_levels}, {final_levels}."
            )
        if int(distillation_levels) < 2:
            raise ValueError(f"distillation_levels must be at least 2. Received: {distillation_levels}")
        self.method = method
        self.total_steps = None if total_steps is None else int(total_steps)
        self.initial_levels = int(initial_levels)
        self.final_levels = int(final_levels)
        self.distillation_levels = int(distillation_levels)
        self.set_teacher(teacher)
        # Counts training batches, so a resumed run continues the level schedule where it stopped.
        self.training_step = self.add_weight(
            shape=(), initializer="zeros", dtype="float32", trainable=False, name="training_step"
        )

    @property
    def teacher(self):
        """The teacher of `"cd"`, set by `set_teacher` (untracked: not saved with the student)."""
        return self._teacher_holder.value

    def set_teacher(self, teacher):
        """Sets the teacher of `"cd"` (a trained `DiffusionModel` of the student's sample shape).

        Example:
        >>> student.set_teacher(keras_diffusion.load_model("edm.keras"))  # doctest: +SKIP
        """
        if teacher is not None and not isinstance(teacher, DiffusionModel):
            raise ValueError(
                f"The teacher must be a trained keras_diffusion model (DDPM, EDM, FlowMatching, ...); "
                f"got a {type(teacher).__name__}."
            )
        if teacher is not None and tuple(teacher.image_shape) != tuple(self.image_shape):
            raise ValueError(
                f"The teacher makes samples of shape {teacher.image_shape}, the student {self.image_shape}. "
                "Build the student's network for the teacher's image shape."
            )
        if teacher is not None:
            teacher.trainable = False
        # A plain Python object hides the teacher from Keras' (and torch's) module tracking.
        self._teacher_holder = Untracked(teacher)

    @classmethod
    def from_teacher(cls, teacher, method="ect", **kwargs):
        """A student for `teacher`: its network (and, for an EDM teacher, its weights) and noise range.

        An EDM teacher's network starts the student (ECT's starting point;
        its preconditioning equals the consistency one away from
        `sigma_min`). Another family's network architecture is copied with
        fresh weights, since its network input differs.

        Args:
            teacher: a trained `DiffusionModel`.
            method: `"ect"` (needs an EDM teacher) or `"cd"`.
            **kwargs: further `ConsistencyModel` arguments (`total_steps`, `seed`, ...).

        Example:
        >>> student = ConsistencyModel.from_teacher(edm_model, "ect", total_steps=2000)  # doctest: +SKIP
        """
        is_edm = type(teacher.parameterization).__name__ == "EDMPreconditioning"
        if method == "ect" and not is_edm:
            raise ValueError(
                f"Consistency tuning starts from an EDM model's network; the teacher is a "
                f"{type(teacher).__name__} with prediction_type={teacher.prediction_type!r}. "
                "Train one with `python -m keras_diffusion train edm`, or distill with method='cd'."
            )
        if method not in ("ect", "cd"):
            raise ValueError(f"from_teacher trains with 'ect' or 'cd'; received method={method!r}.")
        network = teacher.copy_network(with_weights=is_edm)
        process = teacher.process
        if is_edm:
            sigma_min, sigma_max = process.sigma_range
            sigma_data = process.sigma_data
        else:  # the teacher's range in sigma space, with EDM's sigma_data
            sigma_min, sigma_max = (float(s) for s in process.sigma_range)
            sigma_data = 0.5
        student_process = ConsistencyProcess(sigma_min=sigma_min, sigma_max=sigma_max, sigma_data=sigma_data)
        return cls(
            network, student_process, method=method, teacher=teacher if method == "cd" else None,
            num_classes=teacher.num_classes, image_shape=teacher.image_shape, **kwargs,
        )

    # ---------------------------------------------------------------- training
    def _consistency(self, x, sigma, labels, training):
        """`f(x, sigma)` with the network in training mode or not; `sigma` is `(batch,)`."""
        s = append_dims(sigma, len(x.shape))
        one = ops.ones_like(s)
        out = self._predict(self.parameterization.network_input(x, one, s), sigma, labels, training)
        return self.parameterization.x0(ops.cast(out, "float32"), x, s, one)

    def _levels(self, step):
        """The number of Karras levels at training step `step` (improved CT's doubling schedule)."""
        if self.method == "cd":
            return ops.convert_to_tensor(float(self.distillation_levels))
        doublings = math.log2(self.final_levels / self.initial_levels)
        stage_steps = max(1.0, math.floor(self.total_steps / (math.floor(doublings) + 1)))
        levels = self.initial_levels * ops.power(2.0, ops.floor(step / stage_steps))
        return ops.minimum(levels, float(self.final_levels)) + 1.0

    def _adjacent_levels(self, sigma, num_levels):
        """The two Karras levels (of `num_levels`) around each `sigma`: `(upper, lower)`.

        A lognormal `sigma` falls between levels `i` and `i + 1` with exactly
        the probability that improved CT's discretized lognormal gives pair
        `i`, so this draws pairs from it.
        """
        rho = self.process.rho
        sigma_min, sigma_max = self.process.sigma_range
        inv_max, inv_min = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
        sigma = ops.clip(sigma, sigma_min, sigma_max)
        position = (num_levels - 1.0) * (inv_max - ops.power(sigma, 1.0 / rho)) / (inv_max - inv_min)
        index = ops.clip(ops.floor(position), 0.0, num_levels - 2.0)

        def level(i):
            return ops.power(inv_max + i / (num_levels - 1.0) * (inv_min - inv_max), rho)

        return level(index), level(index + 1.0)

    def _tuning_levels(self, sigma, step):
        """ECT's `(sigma, r)`: `r = sigma (1 - n(sigma) / 2**stage)`, at least `sigma_min`."""
        sigma_min, sigma_max = self.process.sigma_range
        sigma = ops.clip(sigma, sigma_min * 1.01, sigma_max)
        stage = ops.floor(step / max(1.0, math.floor(self.total_steps / 8)))
        shrink = (1.0 + 8.0 * ops.sigmoid(-sigma)) / ops.power(2.0, stage)
        return sigma, ops.maximum(sigma * (1.0 - shrink), sigma_min)

    def _teacher_step(self, x, sigma, r, labels):
        """One Heun step of the teacher's probability-flow ODE from `sigma` to `r` (Karras et al. Alg. 1)."""
        s, rr = append_dims(sigma, len(x.shape)), append_dims(r, len(x.shape))
        d = (x - self.teacher.denoise(x, sigma, labels)) / s
        x_euler = x + (rr - s) * d
        d_next = (x_euler - self.teacher.denoise(x_euler, r, labels)) / rr
        return ops.stop_gradient(x + (rr - s) * 0.5 * (d + d_next))

    def call(self, inputs, training=False):
        """The consistency loss's prediction `f(x_sigma, sigma)` and stop-gradient target `f(x_r, r)`."""
        if self.method == "cd" and self.teacher is None:
            raise ValueError(
                "method='cd' needs the teacher: ConsistencyModel.from_teacher(teacher, 'cd'), or "
                "model.set_teacher(teacher) after loading."
            )
        images, labels = self._unpack(inputs)
        x0 = ops.cast(images, "float32")
        batch = ops.shape(x0)[0]
        step = ops.convert_to_tensor(self.training_step)
        if training:
            self.training_step.assign(self.training_step + 1.0)
        if labels is not None and training and self.label_dropout > 0:
            drop = keras.random.uniform((batch,), seed=self.seed_generator) < self.label_dropout
            labels = self._drop_condition(labels, drop)
        drawn = self.process.sample_t(batch, self.seed_generator)
        if self.method == "ect":
            sigma, r = self._tuning_levels(drawn, step)
        else:
            sigma, r = self._adjacent_levels(drawn, self._levels(step))
        noise = keras.random.normal(ops.shape(x0), seed=self.seed_generator)
        ndim = len(x0.shape)
        x_sigma = x0 + append_dims(sigma, ndim) * noise
        if self.method == "cd":
            x_r = self._teacher_step(x_sigma, sigma, r, labels)
        else:
            x_r = x0 + append_dims(r, ndim) * noise
        prediction = self._consistency(x_sigma, sigma, labels, training)
        target = ops.stop_gradient(self._consistency(x_r, r, labels, training))
        return {
            "prediction": prediction,
            "target": target,
            "weight": 1.0 / (sigma - r),
            "alpha": ops.ones_like(sigma),
            "sigma": sigma,
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "method": self.method,
                "total_steps": self.total_steps,
                "initial_levels": self.initial_levels,
                "final_levels": self.final_levels,
                "distillation_levels": self.distillation_levels,
            }
        )
        return config

