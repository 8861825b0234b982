"""Fine-tuning Stable Diffusion 3 with the rectified-flow loss, through `fit()`.

`FlowMatchingTrainer` is a `keras.Model` around a KerasHub
`StableDiffusion3Backbone`. Each training example is a clean latent `x` (the
frozen VAE encodes the image with the backbone's own scale and shift, or a
cached latent is used) and a caption's text embeddings (the frozen CLIP
encoders, and T5 when present, encode its token ids, or cached embeddings
are used). For each example the trainer draws

- `t` from the density that `weighting_scheme` names, with diffusers' names
  and rule (`compute_density_for_timestep_sampling` and
  `compute_loss_weighting_for_sd3` in `diffusers.training_utils`): one
  scheme picks either a density or a loss weight, never both.
  `"logit_normal"` (`sigmoid(N(mean, std))`, the default) and `"mode"`
  (`1 - u - s (cos^2(pi u / 2) - 1 + u)`, `u ~ U(0, 1)`) are densities of
  SD3 (Esser et al. 2024, sec. 3.1) with unit weights; `"sigma_sqrt"`
  (`1 / sigma^2`) and `"cosmap"` (`2 / (pi (1 - 2 sigma + 2 sigma^2))`)
  weight the loss of uniform times; `"uniform"` (diffusers' `"none"`) is
  neither;
- `sigma = shift * t / (1 + (shift - 1) * t)`, the time shift of SD3's
  scheduler (`shift=1` turns it off; diffusers' `train_dreambooth_lora_sd3.py`
  applies it through a 1000-entry table, this applies it continuously);
- noise `eps ~ N(0, I)`, and the noisy latent `(1 - sigma) x + sigma eps` at
  timestep `sigma * 1000`.

The MMDiT (`backbone.diffuser`, called with `training=True`) predicts the
velocity `v = eps - x`. The default loss is the velocity's mean squared
error. `precondition_outputs=True` is diffusers' default instead: the
prediction becomes a clean latent `x_t - sigma v_hat` and is compared with
`x`, which is the velocity error times `sigma^2`; so the gradients are
smaller, more at low noise, and diffusers' learning rates carry over only
with it. Examples flagged as prior examples (DreamBooth's class images) form
a second mean, added with weight `prior_loss_weight`. With
`caption_dropout=p`, each example's caption is replaced by the empty one
with probability `p`, so the unconditional branch that guidance uses keeps
training.

What trains: the MMDiT's trainable variables (all of them, or only LoRA
adapters after `keras_diffusion.sd3.lora.enable_lora`), plus any
`trainable_layers` (textual inversion's new token rows). The VAE and text
encoders are frozen. Mixed precision, gradient accumulation, clipping and
EMA are Keras' own: load the model with `dtype="mixed_bfloat16"` (or
`"mixed_float16"`, which compiles with a `LossScaleOptimizer`), and give the
optimizer `gradient_accumulation_steps`, `global_clipnorm` and `use_ema`.
Checkpoint and resume with `keras.callbacks.BackupAndRestore`.
"""

import math

import keras
import numpy as np
from keras import ops

from keras_diffusion.resume import ResumableBatches

WEIGHTING_SCHEMES = ("logit_normal", "mode", "uniform", "sigma_sqrt", "cosmap")
# The schemes that are densities of t; the others draw t uniformly.
_DENSITIES = ("logit_normal", "mode")


def encode_text(backbone, token_ids):
    """Encodes token ids with the backbone's CLIP (and T5) encoders.

    The same computation as KerasHub's `encode_text_step` for one set of
    prompts (that function always encodes a negative set too).

    Args:
        backbone: a `keras_hub.models.StableDiffusion3Backbone`.
        token_ids: dict with int `"clip_l"` and `"clip_g"` token ids of shape
            `(batch, sequence)`, and `"t5"` when the backbone has T5.

    Returns:
        `(context, pooled_projection)`: the MMDiT's `context` of shape
        `(batch, tokens, 4096)` and `pooled_projection` of shape
        `(batch, clip_l_dim + clip_g_dim)`.

    Example:
    >>> token_ids = model.preprocessor.generate_preprocess(["a cat"])  # doctest: +SKIP
    >>> context, pooled = encode_text(model.backbone, token_ids)  # doctest: +SKIP
    """
    clip_l = backbone.clip_l({"token_ids": token_ids["clip_l"]}, training=False)
    clip_g = backbone.clip_g({"token_ids": token_ids["clip_g"]}, training=False)
    clip_l_pooled = backbone.clip_l_projection(
        clip_l["sequence_output"], token_ids["clip_l"], training=False
    )
    clip_g_pooled = backbone.clip_g_projection(
        clip_g["sequence_output"], token_ids["clip_g"], training=False
    )
    pooled, context = backbone.clip_concatenate(
        clip_l_pooled,
        clip_g_pooled,
        clip_l["intermediate_output"],
        clip_g["intermediate_output"],
        padding=backbone.t5_hidden_dim - backbone.clip_hidden_dim,
    )
    if backbone.t5 is not None:
        t5 = backbone.t5(
            {
                "token_ids": token_ids["t5"],
                "padding_mask": ops.ones_like(token_ids["t5"]),
            },
            training=False,
        )
        context = ops.concatenate([context, t5], axis=-2)
    else:
        context = ops.pad(context, [[0, 0], [0, backbone.clip_l.max_sequence_length], [0, 0]])
    return context, pooled


def sample_t(batch_size, weighting_scheme, seed, logit_mean=0.0, logit_std=1.0, mode_scale=1.29):
    """Draws flow-matching times `t` in (0, 1) with one of SD3's densities.

    Args:
        batch_size: number of draws.
        weighting_scheme: one of `WEIGHTING_SCHEMES`; `"sigma_sqrt"`,
            `"cosmap"` and `"uniform"` draw `t` uniformly.
        seed: a `keras.random.SeedGenerator` or int.
        logit_mean, logit_std: the normal's mean and std for `"logit_normal"`.
        mode_scale: `s` of the `"mode"` density (SD3 uses 1.29).

    Returns:
        float32 tensor of shape `(batch_size,)`.

    Example:
    >>> t = sample_t(4, "logit_normal", seed=0)
    >>> tuple(t.shape)
    (4,)
    """
    if weighting_scheme == "logit_normal":
        u = keras.random.normal((batch_size,), logit_mean, logit_std, seed=seed)
        return ops.sigmoid(u)
    u = keras.random.uniform((batch_size,), seed=seed)
    if weighting_scheme == "mode":
        return 1.0 - u - mode_scale * (ops.square(ops.cos(math.pi * u / 2.0)) - 1.0 + u)
    if weighting_scheme in WEIGHTING_SCHEMES:
        return u
    raise ValueError(
        f"Unknown weighting_scheme {weighting_scheme!r}; expected one of {WEIGHTING_SCHEMES}."
    )


def shift_sigma(t, shift):
    """SD3's time shift: `shift * t / (1 + (shift - 1) * t)`; `shift=1` is the identity."""
    return shift * t / (1.0 + (shift - 1.0) * t)


class FlowMatchingTrainer(keras.Model):
    """Trains an SD3 backbone's MMDiT with the rectified-flow loss, via `fit()`.

    The inputs `fit()` receives are dicts: either `"images"` (float,
    `(batch, H, W, 3)` in [-1, 1]) or `"latents"` (cached VAE latents,
    already scaled and shifted), and either `"token_ids"` (a dict of CLIP/T5
    ids) or `"context"` and `"pooled_projection"` (cached text embeddings).
    An optional float `"prior"` marks DreamBooth's class examples (1) against
    instance examples (0). `keras_diffusion.sd3.data.TrainingBatches` builds
    such batches (and turns uint8 images into [-1, 1]).

    Args:
        backbone: a `keras_hub.models.StableDiffusion3Backbone`, shared (the
            trainer changes its weights in place).
        weighting_scheme: diffusers' `--weighting_scheme`: the density of
            `t` (`"logit_normal"`, the default, or `"mode"`) or the loss
            weight of uniform times (`"sigma_sqrt"`, `"cosmap"`), or
            `"uniform"` for neither (diffusers' `"none"`).
        logit_mean, logit_std: parameters of `"logit_normal"` (0 and 1).
        mode_scale: parameter of `"mode"` (1.29).
        shift: time shift applied to `t`; `None` uses the backbone
            scheduler's (3.0 for SD3), 1.0 disables it.
        precondition_outputs: compare the clean latent `x_t - sigma v_hat`
            with `x` (diffusers' default) instead of the velocity with
            `eps - x` (ours): the same minimiser, a loss `sigma^2` times ours.
        caption_dropout: probability of training an example on the empty
            caption instead of its own; needs `null_caption`.
        null_caption: token ids of the empty prompt, as
            `keras_diffusion.sd3.data.tokenize(model, [""])` returns them.
        prior_loss_weight: DreamBooth's lambda: the loss is the mean over
            instance examples plus `prior_loss_weight` times the mean over
            prior examples. 0 removes the prior term.
        train_diffuser: whether the MMDiT's trainable variables train (all of
            them, or its LoRA adapters). `False` for textual inversion.
        trainable_layers: extra layers whose trainable variables train
            (textual inversion's new embedding rows).
        seed: int seed for the draws of `t`, noise and caption dropout.

    Example:
    >>> model = keras_diffusion.sd3.from_preset("tiny")  # doctest: +SKIP
    >>> trainer = FlowMatchingTrainer(model.backbone, seed=0)  # doctest: +SKIP
    >>> trainer.compile(keras.optimizers.AdamW(1e-4, global_clipnorm=1.0))  # doctest: +SKIP
    >>> trainer.fit(dataset, epochs=10)  # doctest: +SKIP
    """

    def __init__(
        self,
        backbone,
        *,
        weighting_scheme="logit_normal",
        logit_mean=0.0,
        logit_std=1.0,
        mode_scale=1.29,
        shift=None,
        precondition_outputs=False,
        caption_dropout=0.0,
        null_caption=None,
        prior_loss_weight=1.0,
        train_diffuser=True,
        trainable_layers=(),
        seed=None,
        **kwargs,
    ):
        kwargs.setdefault("dtype", backbone.dtype_policy)
        super().__init__(**kwargs)
        if weighting_scheme not in WEIGHTING_SCHEMES:
            raise ValueError(
                f"Unknown weighting_scheme {weighting_scheme!r}; expected one of "
                f"{WEIGHTING_SCHEMES}."
            )
        if prior_loss_weight < 0:
            raise ValueError(f"`prior_loss_weight` must be >= 0, got {prior_loss_weight}.")
        if not 0.0 <= caption_dropout < 1.0:
            raise ValueError(f"`caption_dropout` must be in [0, 1), got {caption_dropout}.")
        if caption_dropout and null_caption is None:
            raise ValueError(
                "caption_dropout needs the empty prompt's token ids: pass "
                "null_caption=keras_diffusion.sd3.data.tokenize(model, [\"\"])."
            )
        self.backbone = backbone
        self.weighting_scheme = weighting_scheme
        self.logit_mean = float(logit_mean)
        self.logit_std = float(logit_std)
        self.mode_scale = float(mode_scale)
        self.shift = float(backbone.shift if shift is None else shift)
        if self.shift <= 0:
            raise ValueError(f"`shift` must be positive, got {self.shift}; 1.0 turns it off.")
        self.precondition_outputs = bool(precondition_outputs)
        self.caption_dropout = float(caption_dropout)
        self.null_caption = null_caption
        self.prior_loss_weight = float(prior_loss_weight)
        self.trainable_layers = list(trainable_layers)
        self.seed_generator = keras.random.SeedGenerator(seed)
        # Everything but the MMDiT is frozen; the MMDiT's own flags are left
        # alone when it trains, so LoRA's frozen base kernels stay frozen.
        for layer in backbone.layers:
            if layer is not backbone.diffuser and layer.weights:
                layer.trainable = False
        if not train_diffuser:
            backbone.diffuser.trainable = False
        if not self.trainable_variables:
            raise ValueError(
                "Nothing to train: the MMDiT is frozen and no trainable_layers were "
                "given. Use train_diffuser=True (full fine-tuning or LoRA) or pass "
                "the textual-inversion embedding layers."
            )
        self.num_train_timesteps = backbone.num_train_timesteps
        # The smallest sigma of diffusers' 1000-entry table: it bounds
        # "sigma_sqrt"'s 1 / sigma^2, which is unbounded on continuous t.
        self.min_sigma = float(shift_sigma(1.0 / self.num_train_timesteps, self.shift))
        # All variables exist (the backbone's and the seed state), so the
        # trainer is built: BackupAndRestore can restore into it before fit().
        self.built = True

    def encode_images(self, images):
        """VAE latents of images in [-1, 1], scaled and shifted like SD3's."""
        return self.backbone.encode_image_step(ops.cast(images, self.backbone.compute_dtype))

    def call(self, inputs, training=False):
        """Noises a batch at random sigmas and predicts the velocity.

        Returns:
            A dict with `"prediction"` and `"target"` (the velocity and
            `eps - x`, or with `precondition_outputs` the clean latent and
            `x`), per-example `"weight"` and `"prior"` (1 for prior
            examples), all float32.
        """
        if "latents" in inputs:
            latents = inputs["latents"]
        else:
            images = inputs["images"]
            if not _is_float(images.dtype):
                raise ValueError(
                    f"`images` must be float in [-1, 1], got dtype {images.dtype}. "
                    "Serve uint8 images through keras_diffusion.sd3.data.TrainingBatches, "
                    "which scales them, or divide by 127.5 and subtract 1."
                )
            latents = self.encode_images(images)
        latents = ops.cast(latents, "float32")
        if "context" in inputs:
            context, pooled = inputs["context"], inputs["pooled_projection"]
        else:
            context, pooled = encode_text(self.backbone, inputs["token_ids"])
        batch = ops.shape(latents)[0]
        if self.caption_dropout:
            context, pooled = self._drop_captions(context, pooled, batch)
        t = sample_t(
            batch,
            self.weighting_scheme,
            self.seed_generator,
            self.logit_mean,
            self.logit_std,
            self.mode_scale,
        )
        sigma = shift_sigma(t, self.shift)
        noise = keras.random.normal(ops.shape(latents), seed=self.seed_generator)
        s = ops.reshape(sigma, (-1,) + (1,) * (len(latents.shape) - 1))
        noisy = (1.0 - s) * latents + s * noise
        dtype = self.backbone.diffuser.compute_dtype
        prediction = self.backbone.diffuser(
            {
                "latent": ops.cast(noisy, dtype),
                "context": ops.cast(context, dtype),
                "pooled_projection": ops.cast(pooled, dtype),
                "timestep": ops.cast(ops.reshape(sigma * self.num_train_timesteps, (-1, 1)), dtype),
            },
            training=training,
        )
        prediction = ops.cast(prediction, "float32")
        target = noise - latents
        if self.precondition_outputs:
            prediction, target = noisy - s * prediction, latents
        prior = inputs.get("prior")
        prior = ops.zeros_like(sigma) if prior is None else ops.cast(prior, "float32")
        return {
            "prediction": prediction,
            "target": target,
            "weight": self._loss_weight(sigma),
            "prior": prior,
        }

    def _drop_captions(self, context, pooled, batch):
        null_context, null_pooled = encode_text(self.backbone, self.null_caption)
        keep = keras.random.uniform((batch,), seed=self.seed_generator) >= self.caption_dropout
        context = ops.where(ops.reshape(keep, (-1, 1, 1)), context, ops.cast(null_context, context.dtype))
        pooled = ops.where(ops.reshape(keep, (-1, 1)), pooled, ops.cast(null_pooled, pooled.dtype))
        return context, pooled

    def _loss_weight(self, sigma):
        sigma = ops.convert_to_tensor(sigma, "float32")
        if self.weighting_scheme == "sigma_sqrt":
            return 1.0 / ops.square(ops.maximum(sigma, self.min_sigma))
        if self.weighting_scheme == "cosmap":
            return 2.0 / (math.pi * (1.0 - 2.0 * sigma + 2.0 * ops.square(sigma)))
        return ops.ones_like(sigma)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Mean over instance examples + `prior_loss_weight` x mean over prior ones."""
        error = ops.square(y_pred["prediction"] - y_pred["target"])
        per_example = ops.mean(error, axis=tuple(range(1, len(error.shape)))) * y_pred["weight"]
        prior = y_pred["prior"]
        instance = 1.0 - prior
        loss = ops.sum(per_example * instance) / ops.maximum(ops.sum(instance), 1.0)
        if self.prior_loss_weight:
            prior_loss = ops.sum(per_example * prior) / ops.maximum(ops.sum(prior), 1.0)
            loss = loss + self.prior_loss_weight * prior_loss
        if self.losses:
            loss = loss + ops.sum(self.losses)
        return loss

    def compile(self, optimizer=None, **kwargs):
        """Compiles with the flow-matching loss.

        Args:
            optimizer: any Keras optimizer; the default is keras.io's
                fine-tuning setting, `AdamW(1e-5, weight_decay=1e-2,
                epsilon=1e-8, global_clipnorm=1.0)`. Put
                `gradient_accumulation_steps`, `global_clipnorm`/`clipnorm`
                and `use_ema` on it.
            **kwargs: passed to `keras.Model.compile`, except `loss`.
        """
        if kwargs.pop("loss", None) is not None:
            raise ValueError(
                "FlowMatchingTrainer computes its own loss (velocity MSE); do not "
                "pass `loss` to compile()."
            )
        if optimizer is None:
            optimizer = keras.optimizers.AdamW(
                learning_rate=1e-5, weight_decay=1e-2, epsilon=1e-8, global_clipnorm=1.0
            )
        super().compile(optimizer=optimizer, **kwargs)

    def fit(self, x=None, *args, **kwargs):
        """`keras.Model.fit`, after checking the images; each trained variable
        then holds its own buffer.

        Images must be float in [-1, 1]: raw uint8 (or 0-255 float) images
        are refused before training starts (inside a compiled step JAX would
        hide the error). With `use_ema`, fit() ends by assigning the EMA
        values to the model's variables; on JAX both then share one buffer,
        and a later fit() fails with "Attempt to donate the same buffer
        twice", so they are copied.
        """
        check_images(x)
        if isinstance(x, ResumableBatches):
            kwargs["shuffle"] = False  # TrainingBatches shuffle by (seed, epoch) themselves
        history = super().fit(x, *args, **kwargs)
        if getattr(self.optimizer, "use_ema", False):
            for variable in self.trainable_variables:
                variable.assign(ops.copy(variable.value))
        return history


def check_images(data):
    """Raises ValueError unless the `"images"` that `data` serves are float in [-1, 1].

    Args:
        data: what `fit()` gets: a dict of arrays, or a `keras.utils.PyDataset`
            (its first batch is checked). Other inputs pass unchecked.

    Example:
    >>> check_images({"images": np.zeros((1, 8, 8, 3), "float32")})
    >>> check_images({"images": np.full((1, 8, 8, 3), 255, "uint8")})
    Traceback (most recent call last):
    ...
    ValueError: `images` must be float in [-1, 1], got uint8 values in [255, 255]. Serve raw images through keras_diffusion.sd3.data.TrainingBatches, which scales them to [-1, 1].
    """
    if isinstance(data, keras.utils.PyDataset) and len(data):
        data = data[0]
        data = data[0] if isinstance(data, tuple) else data
    if not isinstance(data, dict) or "images" not in data:
        return
    images = np.asarray(data["images"])
    if images.size == 0:
        raise ValueError("`images` is empty: a training set needs at least one image.")
    low, high = float(images.min()), float(images.max())
    if not _is_float(images.dtype) or low < -1.0 or high > 1.0 or not np.isfinite([low, high]).all():
        raise ValueError(
            f"`images` must be float in [-1, 1], got {images.dtype} values in "
            f"[{low:g}, {high:g}]. Serve raw images through "
            "keras_diffusion.sd3.data.TrainingBatches, which scales them to [-1, 1]."
        )


def _is_float(dtype):
    return "float" in str(dtype)


def count_params(variables):
    """Total number of scalars in `variables`.

    Example:
    >>> count_params([keras.Variable(np.zeros((2, 3)))])
    6
    """
    return int(sum(np.prod(v.shape) for v in variables))
