"""`DDIM`: the keras.io "Denoising Diffusion Implicit Models" model, on every backend.

András Béres' keras.io example trains a continuous-time diffusion model with
cosine signal and noise rates, feeds the network the noise variance, uses an
MAE loss on the noise, normalizes the images with an adapted
`keras.layers.Normalization`, keeps an EMA of the weights for generation and
measures KID in `test_step` with a few DDIM steps. It is written with
`tf.GradientTape` and runs only on TensorFlow. This class reproduces it on
top of `DiffusionModel`, so that `compile()` + `fit()` + `evaluate()` work on
TensorFlow, JAX and PyTorch, and every sampler of the package can sample it.

Where the evaluation happens, and why: Keras 3's JAX trainer calls a
stateless `test_step(state, data)`, so overriding `test_step` cannot be
written once for all backends. Keras' own hooks are backend-neutral: on
every backend `evaluate()` runs `call(x, training=False)` and then
`compute_metrics(x, y, y_pred)` (JAX maps the metric variables in and out
around both). So `call(training=False)` also generates a batch with
`kid_diffusion_steps` deterministic DDIM steps (as keras.io's `test_step`
does), and `compute_metrics` updates the noise loss, the image loss and the
KID. Training steps do not generate, and their logs leave KID out.
"""

import keras
import numpy as np
from keras import ops

from keras_diffusion.images import to_uint8
from keras_diffusion.models.base import DiffusionModel
from keras_diffusion.processes import ContinuousCosineSchedule
from keras_diffusion.processes import append_dims


@keras.saving.register_keras_serializable(package="keras_diffusion")
class DDIM(DiffusionModel):
    """The keras.io DDIM: continuous cosine rates, noise-variance input, MAE, KID.

    Training draws `t ~ U[0, 1]`; the signal and noise rates are
    `cos(angle(t))` and `sin(angle(t))` (`ContinuousCosineSchedule`) and the
    network receives the noise variance `sin(angle(t))**2`. Images are
    normalized by `normalizer`, a `keras.layers.Normalization` that `adapt()`
    fits to the data (keras.io's "unit variance, like the noise");
    `generate()` undoes it. The loss is the MAE on the noise; the MAE between
    the implied clean image and the real one is reported as `image_loss`.
    `evaluate()` also reports `kid` between the batch and as many images
    generated with `kid_diffusion_steps` DDIM steps. keras.io measures KID
    with the EMA weights: `evaluate()` after `fit()` does too (`fit()` ends by
    writing the EMA into the model); for `fit(validation_data=...)` add
    `keras.callbacks.SwapEMAWeights()`, as `examples/ddim_flowers.py` does.

    Inputs to `fit()`/`evaluate()`/`adapt()`: float images in [-1, 1],
    `(N, H, W, C)`, like every model in this package. (The normalization is
    affine, so this trains the same network as keras.io's [0, 1] images.)

    Args:
        network: a Keras model mapping `[x_t, noise_variance]` to the
            predicted noise, e.g. `build_ddim_unet(...)` or
            `unet_from_preset("ddim_keras_io")`.
        schedule: a `ContinuousCosineSchedule`; default
            `min_signal_rate=0.02, max_signal_rate=0.95` (keras.io).
        kid_feature_extractor: feature extractor of the KID measured by
            `evaluate()`: `"inception"` (keras.io's InceptionV3 at 75x75;
            its weights download once), `"mnist"` (bundled, offline), a
            `keras.Model`/callable from images in [0, 1] to `(N, D)`
            features, or None to measure no KID. A custom extractor is not
            saved with the model; a loaded copy measures no KID.
        kid_diffusion_steps: DDIM steps of the images KID is measured on
            (keras.io: 5, to keep evaluation cheap).
        num_steps: the default number of steps of `generate()` (keras.io's
            `plot_diffusion_steps`: 20).
        loss_type: `"mae"` (keras.io) or `"mse"`.
        prediction_type: `"epsilon"` (keras.io), `"sample"` or `"v_prediction"`.
        **kwargs: `min_snr_gamma`, `image_shape`, `seed`, ... of
            `DiffusionModel`.

    Example:
    >>> from keras_diffusion.networks import build_ddim_unet
    >>> net = build_ddim_unet((16, 16, 3), widths=(8, 16), block_depth=1)
    >>> model = DDIM(net, kid_feature_extractor=None)
    >>> x = np.random.uniform(-1, 1, (8, 16, 16, 3)).astype("float32")
    >>> model.adapt(x)
    >>> model.compile()
    >>> _ = model.fit(x, epochs=1, batch_size=4, verbose=0)
    >>> model.generate(2, seed=0, verbose=0).shape
    (2, 16, 16, 3)
    """

    default_sampler = "ddim"
    default_clip_sample = False

    def __init__(
        self,
        network,
        schedule=None,
        kid_feature_extractor="inception",
        kid_diffusion_steps=5,
        num_steps=20,
        loss_type="mae",
        prediction_type="epsilon",
        **kwargs,
    ):
        super().__init__(
            network, schedule if schedule is not None else ContinuousCosineSchedule(),
            loss_type=loss_type, prediction_type=prediction_type, **kwargs,
        )
        for name, value in (("kid_diffusion_steps", kid_diffusion_steps), ("num_steps", num_steps)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer. Received: {name}={value!r}")
        if self.num_classes is not None:
            raise ValueError(
                "DDIM is unconditional, as in the keras.io example. For class "
                "labels and guidance use keras_diffusion.DDPM(..., num_classes=...)."
            )
        self.kid_diffusion_steps = int(kid_diffusion_steps)
        self.num_steps = int(num_steps)
        self.normalizer = keras.layers.Normalization(axis=-1, name="normalizer")
        self.normalizer.build((None,) + self.image_shape)
        self.noise_loss_tracker = keras.metrics.Mean(name="noise_loss")
        self.image_loss_tracker = keras.metrics.Mean(name="image_loss")
        # Only a name is kept: a keras.Model attribute would become a tracked
        # sublayer, whose weights the optimizer would then try to train.
        self._kid_extractor_name = kid_feature_extractor if isinstance(kid_feature_extractor, str) else None
        self.kid = None
        if kid_feature_extractor is not None:
            from keras_diffusion.metrics import KID

            self.kid = KID(feature_extractor=kid_feature_extractor, name="kid")

    @property
    def schedule(self):
        """The `ContinuousCosineSchedule` (the model's process), under its keras.io-era name."""
        return self.process

    # ----------------------------------------------------------- normalization
    def adapt(self, data):
        """Fits the normalizer's per-channel mean and variance to the data.

        keras.io calls `normalizer.adapt(train_dataset)` before training; do
        the same. Without it the normalizer is the identity.

        Args:
            data: float images in [-1, 1] `(N, H, W, C)` as a numpy array, a
                `tf.data.Dataset` of image batches, or either as
                `{"images": ...}` / `(images, labels)`. A dataset is read
                to its end once (use `dataset.take(n)` to read fewer batches).
        """
        if isinstance(data, dict) or (isinstance(data, (tuple, list)) and len(data) == 2):
            data = data["images"] if isinstance(data, dict) else data[0]
        elif hasattr(data, "element_spec") and isinstance(data.element_spec, (dict, tuple)):
            data = data.map(lambda *b: b[0]["images"] if isinstance(b[0], dict) else b[0])
        if isinstance(data, np.ndarray):
            from keras_diffusion.datasets import validate_images

            validate_images(data, expected_shape=self.image_shape)
        self.normalizer.adapt(data)
        # The normalizer keeps its statistics as constants (finalize_state);
        # compiled functions traced before this call hold the old ones.
        self.train_function = self.test_function = self.predict_function = None
        self._sampling_loops = {}

    def normalize(self, images):
        """Images in [-1, 1] to the normalized space the network works in."""
        return self.normalizer(ops.cast(images, "float32"))

    def denormalize(self, x):
        """Normalized samples back to images, clipped to [-1, 1]."""
        x = ops.cast(x, "float32") * ops.sqrt(self.normalizer.variance) + self.normalizer.mean
        return ops.clip(x, -1.0, 1.0)

    # ---------------------------------------------------------------- training
    def call(self, inputs, training=False):
        """Noises a normalized batch and predicts; when evaluating, also generates.

        Returns:
            The base class's dict (`prediction`, `target`, `weight`) plus
            `alpha` and `sigma`; with `training=False` and a KID metric, also
            `generated`: as many images in [-1, 1], made with
            `kid_diffusion_steps` deterministic DDIM steps.
        """
        images, labels = self._unpack(inputs)
        outputs = super().call(self.normalize(images), training=training)
        if not training and self.kid is not None:
            outputs["generated"] = self._generate_for_kid(ops.shape(images)[0])
        return outputs

    def _generate_for_kid(self, batch):
        sigmas = self.process.sigmas(self.kid_diffusion_steps)
        noise = keras.random.normal((batch,) + self.image_shape, seed=self.seed_generator)
        # keras.io starts from unit-variance noise in x_t space: x_t / alpha in sigma space.
        x = noise * self.process.prior_std(sigmas[0])
        for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
            x0 = self.denoise(x, float(sigma))
            x = x0 + (float(sigma_next) / float(sigma)) * (x - x0)
        return self.denormalize(x)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        """Updates `noise_loss`, `image_loss` and (when evaluating) `kid`; returns the logs."""
        prediction = ops.cast(y_pred["prediction"], "float32")
        error = y_pred["target"] - prediction
        # x0_hat - x0 in terms of the prediction error.
        scale = self.parameterization.output_scale(y_pred["alpha"], y_pred["sigma"])
        image_error = append_dims(scale, len(error.shape)) * error
        distance = ops.abs if self.loss_type == "mae" else ops.square
        self.noise_loss_tracker.update_state(ops.mean(distance(error)))
        self.image_loss_tracker.update_state(ops.mean(distance(image_error)))
        evaluating = "generated" in y_pred
        if evaluating:
            real, _ = self._unpack(x)
            self.kid.update_state(
                (ops.cast(real, "float32") + 1.0) / 2.0, (y_pred["generated"] + 1.0) / 2.0
            )
        logs = super().compute_metrics(x, y, y_pred, sample_weight)
        if self.kid is not None and not evaluating:
            logs.pop(self.kid.name, None)
        return logs

    # -------------------------------------------------------------- generation
    def generate(self, num_images, sampler=None, num_steps=None, return_float=False, **kwargs):
        """Generates images: deterministic DDIM with `num_steps` (20) steps by default.

        Arguments are those of `DiffusionModel.generate`; the defaults follow
        keras.io: `sampler="ddim"`, `eta=0`, `"trailing"` times (1 down to
        1/n, the schedule's default), no clipping of the normalized
        clean-image estimate. The result is denormalized and clipped to the
        image range.

        Returns:
            uint8 numpy images `(num_images, H, W, C)`, or float32 in [-1, 1]
            with `return_float=True`.
        """
        num_steps = self.num_steps if num_steps is None else num_steps
        x = super().generate(num_images, sampler=sampler, num_steps=num_steps, return_float=True, **kwargs)
        x = ops.convert_to_numpy(self.denormalize(x))
        return x.astype("float32") if return_float else to_uint8(x)

    def invert(self, images, num_steps=None, **kwargs):
        """DDIM inversion of images in [-1, 1]: `DiffusionModel.invert` in the normalized space.

        `generate(len(images), initial_noise=noise, num_steps=num_steps)` with
        the same steps and spacing then gives the images back, up to the
        inversion's discretization error.

        Returns:
            float32 numpy `(N, H, W, C)`: the `initial_noise` for `generate`.
        """
        images = np.asarray(images, "float32")
        self._check_images(images)
        normalized = ops.convert_to_numpy(self.normalize(images))
        num_steps = self.num_steps if num_steps is None else num_steps
        return super().invert(normalized, num_steps=num_steps, **kwargs)

    # ------------------------------------------------------------ serialization
    def get_config(self):
        config = super().get_config()
        for key in ("num_classes", "label_dropout", "process"):
            config.pop(key, None)
        config.update(
            {
                # The schedule's own config under "schedule": the format files have had since the first release.
                "schedule": self.process.get_config(),
                "kid_feature_extractor": self._kid_extractor_name,
                "kid_diffusion_steps": self.kid_diffusion_steps,
                "num_steps": self.num_steps,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["schedule"] = ContinuousCosineSchedule.from_config(config["schedule"])
        return super().from_config(config)
