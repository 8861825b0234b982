"""`FlowMatching`: rectified flow / flow matching (Liu et al. 2022; Lipman et al. 2023), as SD3 trains.

Also reflow (`FlowMatching.reflow_pairs`) and the `straightness` of a flow's
paths (Liu, Gong & Liu 2022, sec. 2.2 and Definition 2.1 / eq. 6).
"""

import keras
import numpy as np
from keras import ops

from keras_diffusion.models.base import DiffusionModel
from keras_diffusion.processes import RectifiedFlow
from keras_diffusion.samplers import get_sampler

# Reflow needs a deterministic coupling: the ODE samplers, without churn.
REFLOW_SAMPLERS = ("euler", "heun", "dpmpp_2m", "lms", "unipc", "ddim")


@keras.saving.register_keras_serializable(package="keras_diffusion")
class FlowMatching(DiffusionModel):
    """Flow matching: a network learns the velocity `eps - x0` of `x_t = (1 - t) x0 + t eps`.

    The network maps `[x_t, t]` (plus `labels`) to the velocity, with `t` a
    float in [0, 1] and the noise at `t = 1` (SD3's convention); a network
    with a DDPM-style timestep embedding, such as
    `keras_diffusion.networks.build_unet`, wants `RectifiedFlow(time_scale=1000.0)`,
    which hands it `1000 * t`. Training
    draws `t` by the process's `time_sampling` (logit-normal by default) and
    minimizes the mean squared error of the velocity; `generate()` integrates
    the flow ODE from noise with Euler steps uniform in `t` by default
    (`RectifiedFlow.sigmas`). Every sampler of `keras_diffusion.samplers`
    works, through `denoise` (`x0_hat = x_t - t * v`).

    Args:
        network: a Keras model mapping `[x_t, t]` (plus `labels`) to a
            velocity shaped like `x_t`.
        process: a `RectifiedFlow` (default `RectifiedFlow()`; SD3 uses
            `RectifiedFlow(shift=3.0)`).
        time_sampling: `"logit_normal"`, `"uniform"` or `"mode"`: a short
            way to say `process=RectifiedFlow(time_sampling=...)`.
        prediction_type: `"velocity"` (default), or `"epsilon"`/`"sample"`.
        **kwargs: `loss_type`, `min_snr_gamma`, `num_classes`,
            `label_dropout`, `image_shape`, `seed`: see `DiffusionModel`.

    Example:
    >>> import numpy as np
    >>> x = keras.Input((2,)); t = keras.Input(())
    >>> h = keras.layers.Dense(32, activation="silu")(
    ...     keras.layers.Concatenate()([x, keras.layers.Reshape((1,))(t)]))
    >>> model = FlowMatching(keras.Model([x, t], keras.layers.Dense(2)(h)), seed=0)
    >>> model.compile()
    >>> data = np.random.default_rng(0).normal(size=(64, 2)).astype("float32")
    >>> _ = model.fit(data, epochs=1, batch_size=16, verbose=0)
    >>> model.generate(4, num_steps=10, seed=0, verbose=0, return_float=True).shape
    (4, 2)

    Reflow (Liu et al. 2022): a second model trains on the first one's
    (noise, sample) pairs, and its paths are straighter:
    >>> pairs = model.reflow_pairs(64, num_steps=10, verbose=False)
    >>> second = FlowMatching(keras.models.clone_model(model.network), seed=1)
    >>> second.compile()
    >>> _ = second.fit(pairs, epochs=1, batch_size=16, verbose=0)
    >>> noise = np.random.default_rng(1).normal(size=(32, 2)).astype("float32")
    >>> straightness(second, noise, num_steps=10) >= 0.0
    True
    """

    default_sampler = "euler"
    default_clip_sample = False

    def __init__(self, network, process=None, time_sampling=None, prediction_type="velocity", **kwargs):
        if process is None:
            process = RectifiedFlow(time_sampling=time_sampling or "logit_normal")
        elif time_sampling is not None and time_sampling != getattr(process, "time_sampling", None):
            raise ValueError(
                f"time_sampling={time_sampling!r} differs from the process's "
                f"({getattr(process, 'time_sampling', None)!r}). Pass it once: "
                f"FlowMatching(network, process=RectifiedFlow(..., time_sampling={time_sampling!r}))."
            )
        super().__init__(network, process, prediction_type=prediction_type, **kwargs)

    @property
    def time_sampling(self):
        """How training times are drawn (the process's `time_sampling`)."""
        return self.process.time_sampling

    def reflow_pairs(self, num_pairs, num_steps=50, sampler="heun", noise=None, labels=None, guidance_scale=None,
                     batch_size=256, seed=0, verbose=True):
        """Draws (noise, sample) pairs with the model's ODE: the training data of one reflow step.

        Each noise is integrated from `t_max` to 0 by `generate(initial_noise=...)`
        with a deterministic sampler, in batches of `batch_size`. A second
        `FlowMatching` model fitted on the returned dict learns the flow of
        this coupling, whose paths cross less, so they are straighter and
        fewer steps sample well (Liu et al. 2022, "Flow Straight and Fast",
        sec. 2.3: the 2-rectified flow).

        Args:
            num_pairs: how many pairs.
            num_steps: steps of the ODE solve (`"heun"` evaluates the model
                `2 * num_steps - 1` times).
            sampler: a deterministic sampler: one of `REFLOW_SAMPLERS`.
            noise: `(num_pairs, *image_shape)` standard normal noise to start
                from; drawn with `seed` if omitted.
            labels: int labels `(num_pairs,)` for a conditional model; drawn
                uniformly with `seed` if omitted.
            guidance_scale: classifier-free guidance scale of the solve.
            batch_size: pairs per `generate` call.
            seed: int seed of the noise and labels.
            verbose: show a progress bar over the pairs.

        Returns:
            A dict of float32 numpy arrays for `fit()`: `"images"` (the
            samples), `"noise"` (their noise), and `"labels"` (int32) for a
            conditional model.

        Example:
        >>> pairs = model.reflow_pairs(1024, num_steps=50)  # doctest: +SKIP
        >>> second.fit(pairs, epochs=10, batch_size=128)  # doctest: +SKIP
        """
        if sampler not in REFLOW_SAMPLERS:
            raise ValueError(
                f"Reflow needs a deterministic ODE solve; sampler={sampler!r} is not one. Use one of {REFLOW_SAMPLERS}."
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer. Received: {batch_size!r}")
        generator = keras.random.SeedGenerator(seed)
        if noise is None:
            noise = keras.random.normal((num_pairs,) + self.image_shape, seed=generator)
        noise = np.asarray(ops.convert_to_numpy(noise), "float32")
        if labels is None and self.num_classes is not None:
            labels = keras.random.randint((num_pairs,), 0, self.num_classes, seed=generator)
        if labels is not None:
            labels = np.asarray(ops.convert_to_numpy(labels)).astype("int32")
        # Checks num_pairs, the noise's shape, the labels and the guidance once, before any solve.
        self._check_generate_args(num_pairs, labels, guidance_scale, noise)
        progbar = keras.utils.Progbar(num_pairs, unit_name="pair") if verbose else None
        samples = []
        for start in range(0, num_pairs, batch_size):
            stop = min(start + batch_size, num_pairs)
            # The last batch is padded to full size, so the sampling loop compiles once.
            chunk = _pad(noise[start:stop], batch_size)
            chunk_labels = None if labels is None else _pad(labels[start:stop], batch_size)
            images = self.generate(
                batch_size, sampler=sampler, num_steps=num_steps, initial_noise=chunk, labels=chunk_labels,
                guidance_scale=guidance_scale, seed=seed, verbose=False, return_float=True,
            )
            samples.append(images[: stop - start])
            if progbar is not None:
                progbar.update(stop)
        pairs = {"images": np.concatenate(samples), "noise": noise}
        if labels is not None:
            pairs["labels"] = labels
        return pairs


def _pad(array, size):
    """`array` with its first row repeated to `size` rows."""
    return np.concatenate([array, np.repeat(array[:1], size - len(array), axis=0)])


def flow_paths(model, noise, num_steps=100, labels=None, guidance_scale=None, use_ema=True):
    """The paths `z_t` of a flow from `noise` at `t_max` to `t = 0`, with Euler steps.

    Each step runs the model's own compiled sampling loop (the `"euler"`
    sampler, which in sampler space is exactly Euler on `dz/dt = v(z, t)`),
    so the velocity of step `i` is `(z[i] - z[i + 1]) / (times[i] - times[i + 1])`.

    Args:
        model: a `FlowMatching` model (or any model on a `RectifiedFlow`).
        noise: standard normal noise `(N, *model.image_shape)`, one path each.
        num_steps: Euler steps along each path, on the process's time grid.
        labels: int labels `(N,)`, needed by a conditional model.
        guidance_scale: classifier-free guidance scale (needs `labels`).
        use_ema: use the optimizer's EMA weights when it keeps them.

    Returns:
        `(times, z)`: float64 numpy `(num_steps + 1,)` descending from
        `t_max` to 0, and float32 numpy `(num_steps + 1, N, *image_shape)`
        with `z[0] = noise` and `z[-1]` the samples.

    Example:
    >>> times, z = flow_paths(model, noise, num_steps=50)  # doctest: +SKIP
    >>> z[-1].shape == noise.shape  # doctest: +SKIP
    True
    """
    if getattr(model.process, "kind", None) != "flow":
        raise ValueError(
            f"Flow paths are in a rectified flow's time t; this model's process is "
            f"{type(model.process).__name__}. Pass a FlowMatching model."
        )
    noise = np.asarray(noise, "float32")
    labels = model._check_generate_args(len(noise), labels, guidance_scale, noise)
    if model.num_classes is not None and labels is None:
        raise ValueError("This model is class-conditional: pass labels=..., one per noise.")
    sigmas = model.process.sigmas(num_steps)
    times = sigmas.astype("float64") / (1.0 + sigmas.astype("float64"))
    euler = get_sampler("euler")
    options, _ = model._sampler_options(euler, None, False, None)
    x = ops.convert_to_tensor(noise * model.process.prior_std(sigmas[0]))
    z = [noise]
    for i in range(num_steps):
        x = model._run_sampler(x, sigmas[i : i + 2], euler, options, False, labels, guidance_scale, 0, use_ema,
                               False)
        z.append((ops.convert_to_numpy(x) * (1.0 - times[i + 1])).astype("float32"))  # z_t = (1 - t) x
    return times, np.stack(z)


def straightness(model, noise, num_steps=100, labels=None, guidance_scale=None, use_ema=True):
    """How far a flow's paths are from straight lines: Liu et al.'s straightness `S`.

    `S = int_0^1 E ||(z_1 - z_0) - dz_t/dt||^2 dt`, the mean squared deviation of
    the velocity along each path from its straight displacement (Liu, Gong &
    Liu 2022, "Flow Straight and Fast", Definition 2.1, in this package's time
    convention: noise at `t = 1`). It is 0 exactly when every path is a
    straight line travelled at constant speed, which one Euler step then
    solves exactly. The paths are `flow_paths(model, noise, num_steps)`; the
    velocity of each Euler step is the model's at its start, and the
    integral is over the steps' times. The squared norm sums over a
    sample's dimensions, as in the paper; divide by `prod(model.image_shape)`
    for a per-dimension value.

    Args:
        model: a `FlowMatching` model (or any model on a `RectifiedFlow`).
        noise: standard normal noise `(N, *model.image_shape)`, one path each.
        num_steps: Euler steps along each path.
        labels: int labels `(N,)`, needed by a conditional model.
        guidance_scale: classifier-free guidance scale (needs `labels`).
        use_ema: use the optimizer's EMA weights when it keeps them.

    Returns:
        A float: `S`, averaged over the paths.

    Example:
    >>> noise = np.random.default_rng(0).normal(size=(256, 2)).astype("float32")
    >>> straightness(model, noise, num_steps=50)  # doctest: +SKIP
    0.43
    """
    times, z = flow_paths(model, noise, num_steps, labels, guidance_scale, use_ema)
    z = z.astype("float64")
    dt = times[:-1] - times[1:]
    displacement = (z[0] - z[-1]) / (times[0] - times[-1])
    axes = tuple(range(1, z.ndim - 1))
    deviation = sum(
        (dt[i] / dt.sum()) * np.sum(np.square((z[i] - z[i + 1]) / dt[i] - displacement), axis=axes)
        for i in range(num_steps)
    )
    return float(np.mean(deviation))
