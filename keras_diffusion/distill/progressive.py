"""Progressive distillation (Salimans & Ho 2022): a student takes one DDIM step where its teacher takes two.

Each round halves the number of deterministic DDIM steps. The student starts
as the teacher (its network and weights) on every other level of the
teacher's grid; for `x` at a student level `sigma`, the teacher runs two
DDIM steps, `sigma -> sigma_mid -> sigma_next`, and the student's `x0_hat`
is trained towards the `x0` from which one DDIM step lands on the same point
(paper, Algorithm 2, in sampler space):
`x0_target = (x_next - (sigma_next / sigma) x) / (1 - sigma_next / sigma)`,
with the truncated-SNR weight `max(1 / sigma^2, 1)` on its squared error.
The next round's teacher is this round's student.

The student keeps its teacher's family, process and parameterization
(`DistilledGrid` wraps the process and pins the sampling levels), so it works
for DDPM, EDM, flow and score teachers. The paper uses x- or v-prediction;
an epsilon-prediction teacher's `x0_hat` is poor at the last, noisiest
steps, so prefer EDM or `v_prediction` teachers.
"""

import keras
import numpy as np
from keras import ops

from keras_diffusion.distill.untracked import Untracked
from keras_diffusion.models.base import DiffusionModel
from keras_diffusion.processes import Process
from keras_diffusion.processes import append_dims


@keras.saving.register_keras_serializable(package="keras_diffusion")
class DistilledGrid(Process):
    """A process with a distilled student's fixed sampling levels; everything else is `process`'s.

    `sigmas(n)` is the grid (`n` = its steps), or every k-th level of it for
    `n` dividing its steps; other step counts are an error.

    Args:
        process: the teacher's process.
        sigmas: the student's levels, descending, ending with 0.

    Example:
    >>> from keras_diffusion.processes import EDMProcess
    >>> grid = DistilledGrid(EDMProcess(), [80.0, 2.5, 0.3, 0.02, 0.0])
    >>> grid.sigmas(2).tolist(), grid.default_num_steps("ddim")
    ([80.0, 0.30000001192092896, 0.0], 4)
    """

    def __init__(self, process, sigmas):
        if isinstance(process, dict):
            process = keras.saving.deserialize_keras_object(process)
        sigmas = [float(s) for s in sigmas]
        if len(sigmas) < 2 or sigmas[-1] != 0.0 or any(a <= b for a, b in zip(sigmas, sigmas[1:])):
            raise ValueError(f"sigmas must descend to a final 0 over at least one step. Received: {sigmas}")
        self.process = process
        self.grid = sigmas
        self.kind = process.kind
        self.default_timestep_spacing = None

    def __getattr__(self, name):  # sigma_data, sigma_min, ... of the wrapped process
        if name == "process":
            raise AttributeError(name)
        return getattr(self.process, name)

    @property
    def num_steps(self):
        """The student's number of steps."""
        return len(self.grid) - 1

    def sample_t(self, batch_size, seed):
        return self.process.sample_t(batch_size, seed)

    def alpha_sigma(self, t):
        return self.process.alpha_sigma(t)

    def t_to_sigma(self, t):
        return self.process.t_to_sigma(t)

    def sigma_to_t(self, sigma):
        return self.process.sigma_to_t(sigma)

    def sigma_to_alpha(self, sigma):
        return self.process.sigma_to_alpha(sigma)

    def prior_std(self, sigma):
        return self.process.prior_std(sigma)

    def network_time(self, t):
        return self.process.network_time(t)

    @property
    def sigma_range(self):
        return self.process.sigma_range

    def sigmas(self, num_steps, timestep_spacing=None):
        n = self.num_steps
        if timestep_spacing is not None:
            raise ValueError("A distilled student samples on its own levels; drop timestep_spacing.")
        if num_steps > n or n % num_steps:
            divisors = [k for k in range(1, n + 1) if n % k == 0]
            raise ValueError(
                f"This student was distilled for {n} steps; num_steps={num_steps} is not supported. Use one "
                f"of {divisors} (every k-th of its levels); for more steps, sample its teacher."
            )
        return np.asarray(self.grid[:: n // num_steps], "float32")

    def default_num_steps(self, sampler):
        return self.num_steps

    def get_config(self):
        return {"process": keras.saving.serialize_keras_object(self.process), "sigmas": self.grid}


@keras.saving.register_keras_serializable(package="keras_diffusion")
class ProgressiveDistillation(DiffusionModel):
    """A progressively distilled student: DDIM on `process.grid`, trained by `fit()` against a teacher.

    Build it with `ProgressiveDistillation.from_teacher(teacher, num_steps)`;
    `fit()` on the data, then `generate()` samples with deterministic DDIM
    in the student's number of steps. A trained student is the teacher of
    the next round: `from_teacher(student)` halves its steps again.

    Args:
        network: the student's network (the teacher's, cloned).
        process: a `DistilledGrid` around the teacher's process.
        prediction_type: the teacher's.
        teacher: the teacher (not saved with the student).
        teacher_sigmas: the teacher's levels, twice as many steps as the
            student's, whose every other level is the student's.
        **kwargs: `num_classes`, `label_dropout`, `image_shape`, `seed`.

    Example:
    >>> student = ProgressiveDistillation.from_teacher(edm_model, num_steps=8)  # doctest: +SKIP
    >>> student.fit(images, epochs=5); student.generate(16)  # 4 DDIM steps  # doctest: +SKIP
    """

    default_sampler = "ddim"
    default_clip_sample = False

    def __init__(self, network, process, prediction_type="epsilon", teacher=None, teacher_sigmas=None, **kwargs):
        if not isinstance(process, DistilledGrid):
            raise ValueError(
                f"A progressive student samples on a DistilledGrid; got a {type(process).__name__}. "
                "Use ProgressiveDistillation.from_teacher(teacher, num_steps)."
            )
        super().__init__(network, process, prediction_type=prediction_type, **kwargs)
        self.set_teacher(teacher, teacher_sigmas)

    @property
    def teacher(self):
        """The teacher (untracked: not saved with the student)."""
        return self._teacher_holder.value[0]

    def set_teacher(self, teacher, teacher_sigmas):
        """Sets the teacher and its levels (twice the student's steps; every other one the student's)."""
        if teacher is not None:
            if not isinstance(teacher, DiffusionModel):
                raise ValueError(f"The teacher must be a trained keras_diffusion model; got a {type(teacher).__name__}.")
            teacher_sigmas = np.asarray(teacher_sigmas, "float32")
            if len(teacher_sigmas) != 2 * self.process.num_steps + 1 or not np.allclose(
                teacher_sigmas[::2], self.process.grid, rtol=1e-6
            ):
                raise ValueError(
                    f"The teacher's levels must have {2 * self.process.num_steps} steps, every other one the "
                    "student's. Use ProgressiveDistillation.from_teacher."
                )
            teacher.trainable = False
        self._teacher_holder = Untracked((teacher, teacher_sigmas))

    @classmethod
    def from_teacher(cls, teacher, num_steps=None, seed=None):
        """A student of `teacher` that takes half its DDIM steps.

        Args:
            teacher: a trained model, or a `ProgressiveDistillation` student
                (its own grid is then halved).
            num_steps: the teacher's DDIM steps on its process's levels (even);
                ignored for a distilled teacher, whose grid is fixed.
            seed: the student's training seed.

        Example:
        >>> student = ProgressiveDistillation.from_teacher(edm_model, num_steps=8)  # 4 steps  # doctest: +SKIP
        """
        if isinstance(teacher.process, DistilledGrid):
            base, teacher_sigmas = teacher.process.process, np.asarray(teacher.process.grid, "float32")
        else:
            if num_steps is None:
                raise ValueError("Pass num_steps, the teacher's DDIM steps (even), e.g. 64.")
            base, teacher_sigmas = teacher.process, np.asarray(teacher.process.sigmas(int(num_steps)), "float32")
        steps = len(teacher_sigmas) - 1
        if steps < 2 or steps % 2:
            raise ValueError(
                f"The teacher takes {steps} step(s); progressive distillation halves an even number of steps."
            )
        return cls(
            teacher.copy_network(), DistilledGrid(base, teacher_sigmas[::2]), prediction_type=teacher.prediction_type,
            teacher=teacher, teacher_sigmas=teacher_sigmas, num_classes=teacher.num_classes,
            image_shape=teacher.image_shape, seed=seed,
        )

    def two_step_target(self, x, sigma, sigma_mid, sigma_next, labels=None):
        """The teacher's two DDIM steps from `x` at `sigma`, and the `x0` one student step needs to match.

        Args:
            x: samples in sampler space, `(batch, ...)`.
            sigma, sigma_mid, sigma_next: levels `(batch,)`, descending.
            labels: int labels of a conditional teacher.

        Returns:
            `(x0_target, x_next)`: one DDIM step from `x` on `x0_target` lands on `x_next`.

        Example:
        >>> x0_target, x_next = student.two_step_target(x, s, s_mid, s_next)  # doctest: +SKIP
        """
        ndim = len(x.shape)
        s, s_mid, s_next = (append_dims(v, ndim) for v in (sigma, sigma_mid, sigma_next))
        first = self.teacher.denoise(x, sigma, labels)
        x_mid = first + s_mid * (x - first) / s
        second = self.teacher.denoise(x_mid, sigma_mid, labels)
        x_next = second + s_next * (x_mid - second) / s_mid
        ratio = s_next / s
        return ops.stop_gradient((x_next - ratio * x) / (1.0 - ratio)), ops.stop_gradient(x_next)

    def call(self, inputs, training=False):
        """The student's `x0_hat` at a random level of its grid, and the two-step target."""
        if self.teacher is None:
            raise ValueError(
                "Training a progressive student needs its teacher: ProgressiveDistillation.from_teacher(teacher)."
            )
        images, labels = self._unpack(inputs)
        x0 = ops.cast(images, "float32")
        batch = ops.shape(x0)[0]
        teacher_sigmas = ops.convert_to_tensor(self._teacher_holder.value[1])
        index = keras.random.randint((batch,), 0, self.process.num_steps, seed=self.seed_generator)
        sigma = ops.take(teacher_sigmas, 2 * index)
        sigma_mid = ops.take(teacher_sigmas, 2 * index + 1)
        sigma_next = ops.take(teacher_sigmas, 2 * index + 2)
        noise = keras.random.normal(ops.shape(x0), seed=self.seed_generator)
        ndim = len(x0.shape)
        x = x0 + append_dims(sigma, ndim) * noise
        target, _ = self.two_step_target(x, sigma, sigma_mid, sigma_next, labels)
        alpha = self.process.sigma_to_alpha(sigma)
        a, s = append_dims(alpha, ndim), append_dims(sigma, ndim)
        output = self._predict(
            self.parameterization.network_input(a * x, a, a * s), self.process.sigma_to_t(sigma), labels, training
        )
        prediction = self.parameterization.x0(ops.cast(output, "float32"), x, s, a)
        return {
            "prediction": prediction,
            "target": target,
            "weight": ops.maximum(1.0 / ops.square(sigma), 1.0),  # truncated SNR, max(alpha^2 / sigma^2, 1)
            "alpha": alpha,
            "sigma": sigma,
        }

