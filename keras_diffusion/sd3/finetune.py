"""Fine-tuning Stable Diffusion 3 with the rectified-flow loss, through `fit()`.

`FlowMatchingTrainer` is SD3's `MMDiTFlow` (`keras_diffusion.sd3.flow`: a
`keras_diffusion.FlowMatching` over the MMDiT of a KerasHub
`StableDiffusion3Backbone`, on `RectifiedFlow(shift=backbone.shift)` with
the `"velocity"` parameterization), so `call()`, `compute_loss()`,
`compile()` and `fit()` are `DiffusionModel`'s. Each training example is a
clean latent `x` (the frozen VAE encodes the image with the backbone's own
scale and shift, or a cached latent is used) and a caption's text
embeddings (the frozen CLIP encoders, and T5 when present, encode its token
ids, or cached embeddings are used). For each example the base draws

- `t` from the process's `time_sampling`, then SD3's time shift
  `shift * t / (1 + (shift - 1) * t)` (`RectifiedFlow.sample_t`; `shift=1`
  turns it off; diffusers' `train_dreambooth_lora_sd3.py` applies it
  through a 1000-entry table, this applies it continuously);
- noise `eps ~ N(0, I)`, and the noisy latent `(1 - t) x + t eps`, which the
  MMDiT (`training=True`) sees at timestep `1000 t`, as in KerasHub.

`weighting_scheme` follows diffusers' names and rule
(`compute_density_for_timestep_sampling` and
`compute_loss_weighting_for_sd3` in `diffusers.training_utils`): a scheme is
either a density of `t` or a loss weight, never both. `"logit_normal"`
(`sigmoid(N(mean, std))`, the default) and `"mode"` (`1 - u - s
(cos^2(pi u / 2) - 1 + u)`, `u ~ U(0, 1)`) are densities of SD3 (Esser et
al. 2024, sec. 3.1), the process's `time_sampling`, with unit weights;
`"sigma_sqrt"` (`1 / t^2`, bounded at the smallest level of diffusers'
table) and `"cosmap"` (`2 / (pi (1 - 2 t + 2 t^2))`) weight the loss of
uniform times (the base's `_loss_weight` hook); `"uniform"` (diffusers'
`"none"`) is neither.

The MMDiT predicts the velocity `v = eps - x`; the default loss is its mean
squared error. `precondition_outputs=True` is diffusers' default instead:
the error of the clean latent `x_t - t v_hat` against `x`, which is the
velocity error times `t` (so the loss weight gains a factor `t^2`); the
gradients are smaller, more at low noise, and diffusers' learning rates
carry over only with it. Examples flagged as prior examples (DreamBooth's
class images, the input `"prior"`) form a second mean, added with weight
`prior_loss_weight` (the base's `_reduce_loss` hook). With
`caption_dropout=p`, each training example's caption is replaced by the
empty one with probability `p` (the base's label dropout), so the
unconditional branch that guidance uses keeps training.

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

from keras_diffusion.processes import RectifiedFlow
from keras_diffusion.sd3.flow import MMDiTFlow

WEIGHTING_SCHEMES = ("logit_normal", "mode", "uniform", "sigma_sqrt", "cosmap")
# The process's time sampling of each scheme: the densities are their own,
# the loss weights draw t uniformly (diffusers' rule).
_TIME_SAMPLING = {
    "logit_normal": "logit_normal",
    "mode": "mode",
    "uniform": "uniform",
    "sigma_sqrt": "uniform",
    "cosmap": "uniform",
}


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


class FlowMatchingTrainer(MMDiTFlow):
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
            trainer changes its weights in place, and freezes everything but
            the MMDiT).
        weighting_scheme: diffusers' `--weighting_scheme`: the density of
            `t` (`"logit_normal"`, the default, or `"mode"`) or the loss
            weight of uniform times (`"sigma_sqrt"`, `"cosmap"`), or
            `"uniform"` for neither (diffusers' `"none"`).
        logit_mean, logit_std: parameters of `"logit_normal"` (0 and 1).
        mode_scale: parameter of `"mode"` (1.29).
        shift: the process's time shift; `None` uses the backbone
            scheduler's (3.0 for SD3), 1.0 disables it.
        precondition_outputs: compare the clean latent `x_t - t v_hat`
            with `x` (diffusers' default) instead of the velocity with
            `eps - x` (ours): the same minimiser, a loss `t^2` times ours.
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
        **kwargs: passed to `MMDiTFlow` (`loss_type`, `dtype`, ...).

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
        process = RectifiedFlow(
            shift=backbone.shift if shift is None else shift,
            time_sampling=_TIME_SAMPLING[weighting_scheme],
            logit_mean=logit_mean,
            logit_std=logit_std,
            mode_scale=mode_scale,
            t_min=1.0 / backbone.num_train_timesteps,
        )
        super().__init__(backbone, process=process, label_dropout=caption_dropout, seed=seed, **kwargs)
        self.backbone = backbone
        self.weighting_scheme = weighting_scheme
        self.precondition_outputs = bool(precondition_outputs)
        self.null_caption = null_caption
        self.prior_loss_weight = float(prior_loss_weight)
        self.trainable_layers = list(trainable_layers)
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
        # The smallest level of diffusers' 1000-entry table, shift(1 / 1000):
        # it bounds "sigma_sqrt"'s 1 / t^2, which is unbounded on continuous t.
        self.min_sigma = float(self.process.shift_time(self.process.t_min))

    def encode_images(self, images):
        """VAE latents of images in [-1, 1], scaled and shifted like SD3's."""
        return self.backbone.encode_image_step(ops.cast(images, self.backbone.compute_dtype))

    def _unpack(self, inputs):
        """`(latents, text conditioning)` of a batch: encodes raw images and token ids."""
        if not isinstance(inputs, dict):
            raise ValueError(
                "FlowMatchingTrainer trains on dicts with 'latents' or 'images' and 'context' + "
                "'pooled_projection' or 'token_ids'; keras_diffusion.sd3.data.TrainingBatches "
                f"makes them. Received: {type(inputs).__name__}."
            )
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
        if "context" in inputs:
            context, pooled = inputs["context"], inputs["pooled_projection"]
        else:
            context, pooled = encode_text(self.backbone, inputs["token_ids"])
        return ops.cast(latents, "float32"), {"context": context, "pooled_projection": pooled}

    def _drop_condition(self, condition, drop):
        """The empty caption's embeddings where `drop` is True (caption dropout)."""
        null_context, null_pooled = encode_text(self.backbone, self.null_caption)
        context, pooled = condition["context"], condition["pooled_projection"]
        return {
            "context": ops.where(ops.reshape(drop, (-1, 1, 1)), ops.cast(null_context, context.dtype), context),
            "pooled_projection": ops.where(ops.reshape(drop, (-1, 1)), ops.cast(null_pooled, pooled.dtype), pooled),
        }

    def _loss_weight(self, alpha, sigma):
        """The weighting scheme's weight of each example's loss, times `t^2` with `precondition_outputs`."""
        sigma = ops.convert_to_tensor(sigma, "float32")  # = t on the flow
        if self.weighting_scheme == "sigma_sqrt":
            weight = 1.0 / ops.square(ops.maximum(sigma, self.min_sigma))
        elif self.weighting_scheme == "cosmap":
            weight = 2.0 / (math.pi * (1.0 - 2.0 * sigma + 2.0 * ops.square(sigma)))
        else:
            weight = ops.ones_like(sigma)
        # x_t - t v_hat - x = -t (v_hat - v): the clean latent's error is the velocity's times t.
        return weight * ops.square(sigma) if self.precondition_outputs else weight

    def _reduce_loss(self, per_example, x):
        """Mean over instance examples + `prior_loss_weight` x mean over prior ones (`x["prior"]`)."""
        prior = x.get("prior") if isinstance(x, dict) else None
        prior = ops.zeros_like(per_example) if prior is None else ops.cast(prior, "float32")
        instance = 1.0 - prior
        loss = ops.sum(per_example * instance) / ops.maximum(ops.sum(instance), 1.0)
        if self.prior_loss_weight:
            prior_loss = ops.sum(per_example * prior) / ops.maximum(ops.sum(prior), 1.0)
            loss = loss + self.prior_loss_weight * prior_loss
        return loss

    def compile(self, optimizer=None, **kwargs):
        """Compiles with the flow-matching loss.

        Args:
            optimizer: any Keras optimizer; the default is keras.io's
                fine-tuning setting, `AdamW(1e-5, weight_decay=1e-2,
                epsilon=1e-8, global_clipnorm=1.0)`. Put
                `gradient_accumulation_steps`, `global_clipnorm`/`clipnorm`
                and `use_ema` on it.
            **kwargs: passed to `DiffusionModel.compile`, except `loss`.
        """
        if optimizer is None:
            optimizer = keras.optimizers.AdamW(
                learning_rate=1e-5, weight_decay=1e-2, epsilon=1e-8, global_clipnorm=1.0
            )
        super().compile(optimizer=optimizer, **kwargs)

    def _check_fit_inputs(self, x):
        # Raw uint8 (or 0-255 float) images are refused before training starts.
        check_images(x)


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
