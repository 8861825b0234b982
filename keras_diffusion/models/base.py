"""`DiffusionModel`: what every diffusion `keras.Model` here shares.

A model is a network, a process (`keras_diffusion.processes`: how `t` is
drawn, `alpha(t)`, `sigma(t)`, the noise levels, the network's time input,
the prior), a parameterization (`keras_diffusion.parameterizations`: the
target and `x0_hat`) and a loss weighting. It asks the process and the
parameterization every question and answers none itself. This base does the
rest:

- `call()` draws `t` and noise with `keras.random` and a `SeedGenerator`,
  corrupts the batch and runs the network once; `compute_loss()` compares
  the prediction with its target. So plain `compile()` + `fit()` trains on
  TensorFlow, JAX and PyTorch, from numpy arrays, `tf.data` or a
  `keras.utils.PyDataset`.
- `denoise()` turns the network into a k-diffusion denoiser in sigma space
  (`x0_hat` from `x = x_t / alpha` at noise level `sigma`), with
  classifier-free guidance, so every sampler in `keras_diffusion.samplers`
  works on every model.
- `generate()` runs a sampler's whole loop compiled once per backend
  (`keras_diffusion.compile`), in chunks that drive a progress bar;
  `invert()` runs DDIM backwards (image to noise).

Inputs to `fit()`: a float batch of images in [-1, 1], shape `(N, H, W, C)`
(or any data of shape `(N, *image_shape)`: vectors `(N, D)`, sequences
`(N, T, C)`), or for class-conditional models a dict
`{"images": ..., "labels": ...}`; a dict may add `"noise"`, one paired noise
per image (reflow).
"""

import math
import secrets

import keras
import numpy as np
from keras import ops

from keras_diffusion.compile import CompiledLoop
from keras_diffusion.datasets import validate_images
from keras_diffusion.images import to_uint8
from keras_diffusion.likelihood import log_likelihood
from keras_diffusion.optimizers import AdamW
from keras_diffusion.parameterizations import get_parameterization
from keras_diffusion.processes import append_dims
from keras_diffusion.resume import ResumableBatches
from keras_diffusion.samplers import SAMPLERS
from keras_diffusion.samplers import default_num_steps
from keras_diffusion.samplers import get_sampler
from keras_diffusion.samplers import get_sigmas
from keras_diffusion.samplers import run_steps

LOSS_TYPES = ("mse", "mae", "pseudo_huber")


class DiffusionModel(keras.Model):
    """Base class: a denoising network on a process, a prediction type and a loss.

    Args:
        network: a Keras model mapping `[x_t, t]` (plus `labels` when
            `num_classes` is set) to a prediction shaped like `x_t`; `t` is
            the process's `network_time`.
        process: a `keras_diffusion.processes.Process`.
        prediction_type: what the network predicts: `"epsilon"` (the
            noise), `"sample"` (the clean image), `"v_prediction"`
            (`alpha * eps - sigma * x0`, Salimans & Ho 2022), `"velocity"`
            (`eps - x0`, rectified flow) or `"edm"` (Karras et al.'s
            preconditioned output); see `keras_diffusion.parameterizations`.
            One that does not fit the process is an error.
        loss_type: `"mse"`, `"mae"` or `"pseudo_huber"` (`sqrt(|e|^2 + c^2) - c`
            over each example, `c = 0.00054 sqrt(d)`: improved consistency
            training's loss).
        min_snr_gamma: if set, weights each example's loss by
            `min(SNR, gamma) / SNR` (expressed for the prediction type), as in
            Hang et al. 2023, "Efficient Diffusion Training via Min-SNR
            Weighting". `5.0` is the paper's choice.
        num_classes: the number of class labels of a conditional network.
            Label `num_classes` is the "no label" of classifier-free guidance.
        label_dropout: during training, the probability of replacing a label
            by the "no label" one, so that guidance works at generation.
        image_shape: the shape of one sample, `(H, W, C)` for images (any
            shape works); read from a functional network if omitted.
        seed: seed of the training noise and timestep draws.

    Class attributes `default_sampler` and `default_clip_sample` are what
    `generate()` runs with when not told otherwise.

    A model with other inputs or conditioning (SD3's text-conditioned MMDiT,
    `keras_diffusion.sd3.flow`) overrides the hooks, not the training loop:
    `_unpack` (a batch to data and conditioning), `_predict` (how the
    network is called), `_drop_condition` and `_with_unconditional` (the
    unconditional branch of training dropout and of guidance),
    `_loss_weight`, `_reduce_loss` (per-example losses to the batch's) and
    `_check_fit_inputs`.
    """

    default_sampler = "ddpm"
    default_clip_sample = True
    # Whether `denoise` takes `sigma_next` (an average-velocity model, for the "meanflow" sampler).
    interval_denoiser = False

    def __init__(
        self,
        network,
        process,
        prediction_type="epsilon",
        loss_type="mse",
        min_snr_gamma=None,
        num_classes=None,
        label_dropout=0.1,
        image_shape=None,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.parameterization = get_parameterization(prediction_type, process)
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"Unknown loss_type: {loss_type!r}. Use one of {LOSS_TYPES}.")
        if min_snr_gamma is not None and min_snr_gamma <= 0:
            raise ValueError(f"min_snr_gamma must be positive or None. Received: {min_snr_gamma}")
        if not 0.0 <= label_dropout < 1.0:
            raise ValueError(f"label_dropout must be in [0, 1). Received: {label_dropout}")
        if image_shape is None:
            inputs = getattr(network, "inputs", None)
            if not inputs:
                raise ValueError(
                    "Cannot read the sample shape from this network. Pass "
                    "image_shape=(H, W, C) (or the shape of one sample) explicitly."
                )
            image_shape = tuple(inputs[0].shape[1:])
        input_names = [getattr(i, "name", "") for i in getattr(network, "inputs", None) or []]
        if num_classes is None and "labels" in input_names:
            raise ValueError(
                "The network takes class labels; pass num_classes=... to the model."
            )
        self.network = network
        self.process = process
        self.prediction_type = prediction_type
        self.loss_type = loss_type
        self.min_snr_gamma = min_snr_gamma
        self.num_classes = num_classes
        self.label_dropout = float(label_dropout)
        self.image_shape = tuple(int(d) for d in image_shape)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self._sampling_loops = {}
        # The network arrives built; saying so lets callbacks such as
        # BackupAndRestore load weights before the first batch.
        self.built = True

    def denoise(self, x, sigma, labels=None, guidance_scale=None, clip_x0=False):
        """The model's estimate of the clean sample: a k-diffusion style denoiser.

        Samplers (`keras_diffusion.samplers`) work in "x0 + sigma * eps"
        space (Karras et al. 2022, sec. 2): `x = x_t / alpha` at noise level
        `sigma = sigma(t) / alpha(t)`. The process gives `alpha` and the time
        `t` of a noise level (fractional times work); the network sees its
        parameterization's input (`x_t = alpha * x`, or EDM's `c_in * x`),
        and the parameterization turns its output into `x0_hat`.
        Classifier-free guidance happens here, so every sampler supports it.

        Args:
            x: float tensor `(batch, ...)` in sigma space.
            sigma: noise levels, a float or a tensor `(batch,)`; positive.
            labels: int labels `(batch,)`, for a conditional model.
            guidance_scale: classifier-free guidance scale (needs `labels`);
                the network's output is `uncond + scale * (cond - uncond)`.
            clip_x0: clip `x0_hat` to [-1, 1].

        Returns:
            `x0_hat`, float32, shaped like `x`.

        Example:
        >>> x0 = model.denoise(x, model.process.sigmas(10)[0])  # doctest: +SKIP
        """
        x = ops.convert_to_tensor(x, "float32")
        sigma = ops.convert_to_tensor(sigma, "float32")
        if len(sigma.shape) == 0:
            sigma = ops.broadcast_to(sigma, (ops.shape(x)[0],))
        ndim = len(x.shape)
        a = append_dims(self.process.sigma_to_alpha(sigma), ndim)
        sig = append_dims(sigma, ndim)
        network_input = self.parameterization.network_input(a * x, a, a * sig)
        out = self._network_output(network_input, self.process.sigma_to_t(sigma), labels, guidance_scale)
        x0 = self.parameterization.x0(ops.cast(out, "float32"), x, sig, a)
        return ops.clip(x0, -1.0, 1.0) if clip_x0 else x0

    def score(self, x, sigma, labels=None, guidance_scale=None):
        """The score `grad log p_sigma(x) = (denoise(x, sigma) - x) / sigma**2` in sigma space, for any model.

        Args:
            x: float tensor `(batch, ...)` in sigma space.
            sigma: positive noise levels, a float or a tensor `(batch,)`.
            labels: int labels `(batch,)`, for a conditional model.
            guidance_scale: classifier-free guidance scale (needs `labels`).

        Returns:
            float32 tensor shaped like `x`.

        Example:
        >>> s = model.score(x, 1.0)  # doctest: +SKIP
        """
        x = ops.convert_to_tensor(x, "float32")
        sigma = ops.convert_to_tensor(sigma, "float32")
        if len(sigma.shape) == 0:
            sigma = ops.broadcast_to(sigma, (ops.shape(x)[0],))
        sig = append_dims(sigma, len(x.shape))
        return (self.denoise(x, sigma, labels, guidance_scale) - x) / ops.square(sig)

    def log_likelihood(self, images, **kwargs):
        """Bits/dim of each image `(N, *image_shape)` in [0, 255], through the probability-flow ODE.

        See `keras_diffusion.likelihood.log_likelihood` for the options
        (`dequantize`, `probe`, `num_probes`, `rtol`, `atol`, `seed`, ...).

        Example:
        >>> bpd = model.log_likelihood(test_images[:100], seed=0)  # doctest: +SKIP
        """
        return log_likelihood(self, images, **kwargs)

    # ---------------------------------------------------------------- training
    def _unpack(self, inputs):
        if isinstance(inputs, dict):
            images, labels = inputs.get("images"), inputs.get("labels")
            if images is None:
                raise ValueError(
                    f"Dict inputs need an 'images' entry. Received keys: {sorted(inputs)}"
                )
        elif isinstance(inputs, (tuple, list)) and len(inputs) == 2:
            images, labels = inputs
        else:
            images, labels = inputs, None
        self._check_images(images)
        if labels is None and self.num_classes is not None:
            raise ValueError(
                "This model is class-conditional: train it on "
                "{'images': images, 'labels': labels}."
            )
        if labels is not None and self.num_classes is None:
            raise ValueError(
                "Labels were given to an unconditional model. Build the network "
                "with num_classes=... and pass num_classes to the model, or drop the labels."
            )
        return images, labels

    def _check_images(self, images):
        shape = tuple(images.shape)
        if len(shape) != 1 + len(self.image_shape) or tuple(shape[1:]) != self.image_shape:
            raise ValueError(
                f"Expected images of shape (batch, {', '.join(map(str, self.image_shape))}); "
                f"received shape {shape}. Resize or pad the data to the network's "
                "image shape (keras_diffusion.datasets does this)."
            )
        dtype = keras.backend.standardize_dtype(images.dtype)
        if "float" not in dtype:
            raise ValueError(
                f"Expected float images in [-1, 1]; received dtype {dtype}. Convert "
                "uint8 images with keras_diffusion.images.to_model_range."
            )

    def call(self, inputs, training=False):
        """Noises a batch at random times and predicts; returns what the loss needs.

        A dict batch may carry `"noise"`, shaped like `"images"`: each example
        is then noised with its own paired noise instead of a fresh draw
        (reflow trains on such (noise, sample) pairs: `FlowMatching.reflow_pairs`).

        Returns:
            A dict with `"prediction"`, `"target"`, per-example `"weight"`,
            and the per-example `"alpha"` and `"sigma"` the batch was noised
            with (for metrics such as DDIM's image loss).
        """
        images, labels = self._unpack(inputs)
        images = ops.cast(images, "float32")
        batch = ops.shape(images)[0]
        t = self.process.sample_t(batch, self.seed_generator)
        alpha, sigma = self.process.alpha_sigma(t)
        noise = _paired_noise(inputs, images.shape)
        if noise is None:
            noise = keras.random.normal(ops.shape(images), seed=self.seed_generator)
        noise = ops.cast(noise, "float32")
        ndim = len(images.shape)
        a, s = append_dims(alpha, ndim), append_dims(sigma, ndim)
        noisy = a * images + s * noise
        if labels is not None and training and self.label_dropout > 0:
            drop = keras.random.uniform((batch,), seed=self.seed_generator) < self.label_dropout
            labels = self._drop_condition(labels, drop)
        prediction = self._predict(self.parameterization.network_input(noisy, a, s), t, labels, training)
        return {
            "prediction": prediction,
            "target": self.parameterization.target(images, noise, noisy, a, s),
            "weight": self._loss_weight(alpha, sigma),
            "alpha": alpha,
            "sigma": sigma,
        }

    def _predict(self, x, t, condition, training):
        """Runs the network on `x` at times `t` (a hook: what the network is given).

        Args:
            x: the network's input (`parameterization.network_input`).
            t: the process's times, `(batch,)`.
            condition: the conditioning (int labels here), or None.
            training: passed to the network.
        """
        inputs = [x, self.process.network_time(t)]
        if condition is not None:
            inputs.append(ops.cast(condition, "int32"))
        return self.network(inputs, training=training)

    def _drop_condition(self, condition, drop):
        """The conditioning with the examples where `drop` is True made unconditional (label dropout)."""
        return ops.where(drop, self.num_classes, ops.cast(condition, "int32"))

    def _with_unconditional(self, condition):
        """The conditioning twice, conditional half first, for one guided network call."""
        return ops.concatenate([condition, ops.full_like(condition, self.num_classes)])

    def _loss_weight(self, alpha, sigma):
        """The per-example loss weight (a hook): 1, or with min-SNR `min(SNR, gamma)` on the
        error of `x0_hat`, expressed for the output."""
        if self.min_snr_gamma is None:
            return ops.ones_like(alpha)
        snr = ops.square(alpha) / ops.square(sigma)
        return ops.minimum(snr, self.min_snr_gamma) * ops.square(self.parameterization.output_scale(alpha, sigma))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        error = ops.cast(y_pred["prediction"], "float32") - y_pred["target"]
        axes = tuple(range(1, len(error.shape)))
        if self.loss_type == "pseudo_huber":
            # Song & Dhariwal 2023 (improved consistency training): sqrt(|e|^2 + c^2) - c, c = 0.00054 sqrt(d).
            c = 0.00054 * math.sqrt(math.prod(error.shape[1:]))
            per_example = ops.sqrt(ops.sum(ops.square(error), axis=axes) + c**2) - c
        else:
            error = ops.square(error) if self.loss_type == "mse" else ops.abs(error)
            per_example = ops.mean(error, axis=axes)
        per_example = per_example * y_pred["weight"]
        loss = self._reduce_loss(per_example, x)
        if self.losses:
            loss = loss + ops.sum(self.losses)
        return loss

    def _reduce_loss(self, per_example, x):
        """The batch's loss from the weighted per-example losses (a hook; `x`: the inputs)."""
        return ops.mean(per_example)

    def compile(self, optimizer=None, **kwargs):
        """Compiles with the diffusion loss; defaults to AdamW with EMA.

        Args:
            optimizer: any Keras optimizer. The default is
                `keras_diffusion.optimizers.AdamW(2e-4, weight_decay=1e-4,
                use_ema=True, ema_momentum=0.999)`, whose EMA warms up as the
                command line's does.
                With `use_ema=True`, `fit()` ends by writing the averaged
                weights into the model (Keras' `finalize_variable_values`), and
                `generate()` uses them during training too.
            **kwargs: passed to `keras.Model.compile` (not `loss`: the loss is
                chosen by `loss_type` and `prediction_type`).
        """
        if kwargs.get("loss") is not None:
            raise ValueError(
                "Diffusion models compute their own loss. Choose it with "
                "loss_type='mse'|'mae' and prediction_type=... when building the model."
            )
        kwargs.pop("loss", None)
        if optimizer is None:
            optimizer = AdamW(learning_rate=2e-4, weight_decay=1e-4, use_ema=True, ema_momentum=0.999)
        super().compile(optimizer=optimizer, **kwargs)

    def compile_from_config(self, config):
        """Re-compiles a loaded model with its saved optimizer (and its EMA state)."""
        config = keras.saving.deserialize_keras_object(config)
        config.pop("loss", None)
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def fit(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.fit`, with the inputs checked first (`_check_fit_inputs`).

        A `keras_diffusion.resume.ResumableBatches` is fitted with
        `shuffle=False`: its batches are already shuffled by (seed, epoch).
        """
        # Checked here, not only in call(): an error raised inside a JAX
        # train step is masked by Keras' EMA finalization ("'NoneType' object
        # is not callable").
        self._check_fit_inputs(x)
        if isinstance(x, ResumableBatches):
            kwargs["shuffle"] = False  # they shuffle by (seed, epoch) themselves, reproducibly
        elif hasattr(x, "element_spec"):
            # Keras ignores shuffle for a tf.data.Dataset, and warns when it is left at True.
            kwargs.setdefault("shuffle", False)
        history = super().fit(x, y, *args, **kwargs)
        if getattr(self.optimizer, "use_ema", False):
            # fit() ends by assigning the EMA variables' values to the model's.
            # On JAX both then hold one buffer, and the next fit() fails with
            # "Attempt to donate the same buffer twice"; give the model a copy.
            for variable in self.trainable_variables:
                variable.assign(ops.copy(variable.value))
        return history

    def _check_fit_inputs(self, x):
        """Checks what `fit()` gets (numpy arrays, a `PyDataset`'s first batch, a `tf.data` spec)."""
        images = _images_of(x)
        if isinstance(images, np.ndarray):
            validate_images(images, expected_shape=self.image_shape)
            _paired_noise(x, images.shape)
        elif isinstance(x, keras.utils.PyDataset):
            self._check_images(np.asarray(_images_of(x[0])))
        elif hasattr(x, "element_spec"):  # a tf.data.Dataset
            self._check_images(_images_of(x.element_spec))

    # -------------------------------------------------------------- generation
    def _network_output(self, x, t, labels=None, guidance_scale=None):
        if guidance_scale is None:
            return self._predict(x, t, labels, training=False)
        both = self._predict(
            ops.concatenate([x, x]), ops.concatenate([t, t]), self._with_unconditional(labels), training=False
        )
        conditional, unconditional = ops.split(both, 2)
        return unconditional + guidance_scale * (conditional - unconditional)

    def _get_loop(self, sampler, options, clip_x0, conditional, guided):
        key = (sampler.name, tuple(sorted(options.items())), clip_x0, conditional, guided, self.jit_compile)
        if key not in self._sampling_loops:

            def loop(x, state, sigmas, seed, start, stop, *cond):
                labels = cond[0] if conditional else None
                scale = cond[1] if guided else None

                def denoiser(x, sigma, *sigma_next):
                    # The "meanflow" sampler passes the next level too (an interval model's x0_hat).
                    interval = {"sigma_next": sigma_next[0]} if sigma_next else {}
                    return self.denoise(x, sigma, labels, scale, clip_x0=clip_x0, **interval)

                return run_steps(sampler.step, denoiser, x, state, sigmas, seed, start, stop, **options)

            self._sampling_loops[key] = CompiledLoop(loop, self, jit_compile=self.jit_compile)
        return self._sampling_loops[key]

    def _check_generate_args(self, num_images, labels, guidance_scale, initial_noise):
        if isinstance(num_images, bool) or not isinstance(num_images, (int, np.integer)) or num_images < 1:
            raise ValueError(f"num_images must be a positive integer. Received: {num_images!r}")
        if self.num_classes is None and (labels is not None or guidance_scale is not None):
            raise ValueError(
                "labels and guidance_scale need a class-conditional model (built with "
                "num_classes=...). This model is unconditional: drop them."
            )
        if guidance_scale is not None and labels is None:
            raise ValueError("guidance_scale needs labels=... to guide towards.")
        if labels is not None:
            labels = np.asarray(labels)
            if labels.shape != (num_images,) or not np.issubdtype(labels.dtype, np.integer):
                raise ValueError(
                    f"labels must be {num_images} integers, one per image. "
                    f"Received shape {labels.shape}, dtype {labels.dtype}."
                )
            if labels.min() < 0 or labels.max() >= self.num_classes:
                raise ValueError(
                    f"labels must be in [0, {self.num_classes}). Received min {labels.min()}, max {labels.max()}."
                )
            labels = ops.convert_to_tensor(labels.astype("int32"))
        if initial_noise is not None:
            shape = tuple(np.shape(initial_noise))
            if shape != (num_images,) + self.image_shape:
                raise ValueError(
                    f"initial_noise must have shape {(num_images,) + self.image_shape}; received {shape}."
                )
        return labels

    def _run_sampler(self, x, sigmas, sampler, options, clip_x0, labels, guidance_scale, seed, use_ema, verbose):
        """Runs a sampler over `sigmas` through the compiled loop, in chunks for the progress bar."""
        loop = self._get_loop(sampler, options, clip_x0, labels is not None, guidance_scale is not None)
        cond = []
        if labels is not None:
            cond.append(labels)
        if guidance_scale is not None:
            cond.append(ops.convert_to_tensor(float(guidance_scale), "float32"))
        # A separate stream from the initial noise's, for the per-step noise.
        loop_seed = keras.random.SeedGenerator((seed * 7919 + 104729) % (2**31 - 1)).next()
        state = sampler.initial_state(x, options)
        num_steps = len(sigmas) - 1
        sigmas = ops.convert_to_tensor(sigmas, "float32")
        chunk = max(1, math.ceil(num_steps / 20))
        progbar = keras.utils.Progbar(num_steps, unit_name="step") if verbose else None
        with self._ema_weights(use_ema):
            for start in range(0, num_steps, chunk):
                stop = min(start + chunk, num_steps)
                x, state = loop(
                    x, state, sigmas, loop_seed,
                    ops.convert_to_tensor(start, "int32"), ops.convert_to_tensor(stop, "int32"), *cond,
                )
                if progbar is not None:
                    progbar.update(stop)
        return x

    def _sampler_options(self, sampler, eta, clip_sample, sampler_options):
        """The options to run `sampler` with, and whether the denoiser clips `x0_hat`."""
        options = dict(sampler_options or {})
        if eta is not None:
            if "eta" not in sampler.options:
                with_eta = sorted(name for name, s in SAMPLERS.items() if "eta" in s.options)
                raise ValueError(f"Sampler {sampler.name!r} takes no eta. Samplers with eta: {with_eta}.")
            options["eta"] = float(eta)
        if "clip_denoised" in sampler.options:  # DDIM clips x0 itself, as diffusers does
            options["clip_denoised"] = bool(clip_sample)
            clip_x0 = False
        else:
            clip_x0 = bool(clip_sample)
        return sampler.resolve(options), clip_x0

    def generate(
        self,
        num_images,
        sampler=None,
        num_steps=None,
        eta=None,
        seed=None,
        initial_noise=None,
        labels=None,
        guidance_scale=None,
        timestep_spacing=None,
        sigma_schedule="model",
        clip_sample=None,
        use_ema=True,
        verbose=True,
        return_float=False,
        sampler_options=None,
    ):
        """Generates images with any sampler, through a compiled sampling loop.

        The loop runs `keras_diffusion.samplers` on `self.denoise`, compiled
        once per shapes and options (`keras_diffusion.compile`), in chunks
        that drive a progress bar.

        Args:
            num_images: how many images.
            sampler: a name from `keras_diffusion.samplers.SAMPLERS`:
                `"ddpm"`, `"ddim"`, `"euler"`, `"euler_ancestral"`, `"heun"`,
                `"dpmpp_2m"`, `"dpmpp_2m_sde"`, `"lms"` or `"unipc"`; default
                the model's `default_sampler`.
            num_steps: denoising steps; default the process's
                `default_num_steps(sampler)` (50 for a DDPM, 18 Heun steps
                for EDM). `"heun"` evaluates the model `2 * num_steps - 1`
                times (`samplers.num_model_evaluations`). The command line
                makes the same choices.
            eta: stochasticity of `"ddim"` (default 0, deterministic),
                `"euler_ancestral"` and `"dpmpp_2m_sde"` (default 1); other
                samplers take none.
            seed: int; the same seed gives the same images on one backend.
            initial_noise: `(num_images, H, W, C)` standard normal noise used
                instead of the first draw (compare runs across backends or
                peers); the sampler starts from it times the process's
                `prior_std(sigma_max)` (`sqrt(1 + sigma_max**2)` for VP).
            labels: int class labels, one per image (conditional models).
            guidance_scale: classifier-free guidance scale (1 = conditional).
            timestep_spacing: `"leading"`, `"trailing"` or `"linspace"`, for
                `sigma_schedule="model"`; default the process's.
            sigma_schedule: `"model"` (the process's own `sigmas`), `"karras"`
                (rho=7) or `"exponential"`, over the process's `sigma_range`.
            clip_sample: clip the predicted clean sample to [-1, 1] at each
                model evaluation; default the model's `default_clip_sample`
                (on for DDPM, as in diffusers' DDPM/DDIM schedulers: it keeps
                the first steps from amplifying the model's error). DDIM,
                like diffusers', clips `x0_hat` but keeps the model's own
                noise estimate.
            use_ema: sample with the optimizer's EMA weights when it keeps them.
            verbose: show a progress bar.
            return_float: return float32 images in [-1, 1] instead of uint8.
            sampler_options: a dict of further sampler options, e.g.
                `{"s_churn": 40.0}` for `"heun"` (see `keras_diffusion.samplers`).

        Returns:
            uint8 numpy images `(num_images, H, W, C)`.

        Example:
        >>> images = model.generate(16, sampler="dpmpp_2m", num_steps=20,
        ...                         sigma_schedule="karras", seed=0)  # doctest: +SKIP
        """
        sampler = self.default_sampler if sampler is None else sampler
        clip_sample = self.default_clip_sample if clip_sample is None else clip_sample
        spec = get_sampler(sampler)
        if spec.name == "meanflow" and not self.interval_denoiser:
            raise ValueError(
                f"The 'meanflow' sampler needs a model of average velocities over intervals "
                f"(keras_diffusion.distill.MeanFlow); this is a {type(self).__name__}. Use its default "
                f"sampler {self.default_sampler!r}."
            )
        labels = self._check_generate_args(num_images, labels, guidance_scale, initial_noise)
        options, clip_x0 = self._sampler_options(spec, eta, clip_sample, sampler_options)
        if num_steps is None:
            num_steps = default_num_steps(self.process, sampler)
        sigmas = get_sigmas(self.process, num_steps, sigma_schedule, timestep_spacing)
        if seed is None:
            seed = secrets.randbelow(2**31 - 1)
        if initial_noise is None:
            shape = (num_images,) + self.image_shape
            noise = keras.random.normal(shape, seed=keras.random.SeedGenerator(seed))
        else:
            noise = ops.convert_to_tensor(np.asarray(initial_noise, "float32"))
        x = noise * self.process.prior_std(sigmas[0])
        x = self._run_sampler(x, sigmas, spec, options, clip_x0, labels, guidance_scale, seed, use_ema, verbose)
        x = ops.convert_to_numpy(x)
        return x.astype("float32") if return_float else to_uint8(x)

    def invert(
        self,
        images,
        num_steps=50,
        timestep_spacing=None,
        sigma_schedule="model",
        labels=None,
        guidance_scale=None,
        use_ema=True,
        verbose=False,
    ):
        """DDIM inversion: the noise from which deterministic DDIM generates `images`.

        Runs the deterministic DDIM (probability-flow Euler) step backwards,
        from the smallest nonzero noise level of the schedule up to the
        largest, treating the images as samples at the smallest level (as
        diffusers' `DDIMInverseScheduler` does). `generate(sampler="ddim",
        initial_noise=noise, clip_sample=False)` with the same `num_steps`,
        `timestep_spacing`, `sigma_schedule`, labels and guidance then
        reproduces the images up to the inversion's discretization error.

        Reference: Song, Meng & Ermon 2021, sec. 4.3 (DDIM as an ODE that
        can be run in reverse); Mokady et al. 2023 (null-text inversion) use
        the same construction.

        Args:
            images: float images in [-1, 1], `(N, H, W, C)`.
            num_steps: the number of steps of the generation to invert.
            timestep_spacing: as in `generate`.
            sigma_schedule: as in `generate`.
            labels: int labels `(N,)` (conditional models).
            guidance_scale: classifier-free guidance scale (needs `labels`).
            use_ema: use the optimizer's EMA weights when it keeps them.
            verbose: show a progress bar.

        Returns:
            float32 numpy `(N, H, W, C)`: the `initial_noise` for `generate`.

        Example:
        >>> noise = model.invert(images, num_steps=50)  # doctest: +SKIP
        >>> again = model.generate(len(images), sampler="ddim", num_steps=50,
        ...                        initial_noise=noise, clip_sample=False)  # doctest: +SKIP
        """
        images = np.asarray(images, "float32")
        self._check_images(images)
        labels = self._check_generate_args(len(images), labels, guidance_scale, None)
        sigmas = get_sigmas(self.process, num_steps, sigma_schedule, timestep_spacing)
        options, _ = self._sampler_options(get_sampler("ddim"), 0.0, False, None)
        x = self._run_sampler(
            ops.convert_to_tensor(images), np.flip(sigmas[:-1]).copy(), get_sampler("ddim"), options, False,
            labels, guidance_scale, 0, use_ema, verbose,
        )
        return ops.convert_to_numpy(x) / self.process.prior_std(sigmas[0])

    def _ema_weights(self, use_ema):
        return _EMASwap(self, use_ema)

    def copy_network(self, with_weights=True):
        """A fresh copy of the network; with its (EMA, when kept) weights, for a student to start from.

        Example:
        >>> student_network = teacher.copy_network()  # doctest: +SKIP
        """
        network = keras.models.clone_model(self.network)
        if with_weights:
            with self._ema_weights(True):
                network.set_weights(self.network.get_weights())
        return network

    # ------------------------------------------------------------ serialization
    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "network": keras.saving.serialize_keras_object(self.network),
                "process": keras.saving.serialize_keras_object(self.process),
                "prediction_type": self.prediction_type,
                "loss_type": self.loss_type,
                "min_snr_gamma": self.min_snr_gamma,
                "num_classes": self.num_classes,
                "label_dropout": self.label_dropout,
                "image_shape": self.image_shape,
                "seed": self.seed,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["network"] = keras.saving.deserialize_keras_object(config["network"])
        if "process" in config:
            config["process"] = keras.saving.deserialize_keras_object(config["process"])
        return cls(**config)


def _images_of(batch):
    """The images of a batch given as an array, `(images, labels)` or a dict."""
    if isinstance(batch, dict):
        return batch.get("images")
    if isinstance(batch, (tuple, list)):
        return batch[0]
    return batch


def _paired_noise(batch, images_shape):
    """A dict batch's `"noise"` (checked to be shaped like its images), or None."""
    noise = batch.get("noise") if isinstance(batch, dict) else None
    if noise is None:
        return None
    if tuple(noise.shape) != tuple(images_shape):
        raise ValueError(
            f"The paired 'noise' must have the images' shape {tuple(images_shape)}; received "
            f"{tuple(noise.shape)}. Pass one noise array per image (FlowMatching.reflow_pairs returns both)."
        )
    return noise


class _EMASwap:
    """Context manager: the optimizer's EMA weights in the model, then the raw ones back.

    Keras optimizers with `use_ema=True` keep the average in private
    variables and copy it into the model only when `fit()` ends. Sampling
    during training (a sample-grid callback) should see the average too.
    """

    def __init__(self, model, enabled):
        optimizer = getattr(model, "optimizer", None)
        averages = getattr(optimizer, "_model_variables_moving_average", None) if optimizer else None
        self.pairs = []
        # An average exists only once the optimizer has taken a step: a
        # freshly built (or loaded-but-untrained) optimizer holds no average.
        if (
            enabled
            and optimizer is not None
            and optimizer.use_ema
            and averages
            and int(ops.convert_to_numpy(optimizer.iterations)) > 0
        ):
            self.pairs = list(zip(model.trainable_variables, averages))

    def __enter__(self):
        self.saved = [ops.copy(v.value) for v, _ in self.pairs]
        for variable, average in self.pairs:
            variable.assign(average)

    def __exit__(self, *exc):
        for (variable, _), value in zip(self.pairs, self.saved):
            variable.assign(value)
        return False
