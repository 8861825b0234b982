"""Stable Diffusion 3 through KerasHub, on JAX, TensorFlow and PyTorch.

Load a model, generate, and walk through its latent spaces:

- Loading (`pipeline`): `from_preset` takes `"tiny"`, a local preset folder
  or one of KerasHub's `KERAS_HUB_PRESETS`; `build_tiny` builds a small
  random model; `StableDiffusion3.save_to_preset` writes a preset folder.
- Generation (`generate`): `text_to_image`, `image_to_image`, `inpaint`,
  returning uint8 `(N, H, W, 3)` arrays equal to KerasHub's own `generate`;
  `text_to_image(..., sampler="dpmpp_2m")` runs any sampler of
  `keras_diffusion.samplers` instead, on `MMDiTFlow`'s `denoise`;
  `save_images` writes them as PNGs.
- Walks (`walks`): `interpolate_prompts`, `walk_around_prompt`,
  `circular_walk`, `interpolation_grid`, built on `encode_prompts`, `slerp`
  and `render`; `save_gif` and `save_grid` write the frames.

- Fine-tuning (`finetune`, `data`, `lora`, `dreambooth`,
  `textual_inversion`): `FlowMatchingTrainer` trains the MMDiT with the
  rectified-flow loss through `fit()`; `load_captioned_folder`,
  `cache_examples` and `TrainingBatches` feed it; `enable_lora` /
  `save_lora` / `load_lora` / `merge_lora` put adapters on the MMDiT;
  `class_images` and `dreambooth_batches` add DreamBooth's prior
  preservation; `add_placeholder_token` learns a new word.

The `tiny` preset has random weights, so its images look like noise; it runs
the whole pipeline offline. Real presets download from Kaggle (network,
credentials and an accepted licence needed).

The names load lazily, so that KerasHub (with tensorflow-text) loads only
when SD3 is used, not when the command line builds its parser.

Example:
>>> from keras_diffusion import sd3
>>> model = sd3.from_preset("tiny")  # doctest: +SKIP
>>> images = sd3.text_to_image(model, "a cat", num_steps=4, seed=1)  # doctest: +SKIP
>>> sd3.save_images("cat.png", images)  # doctest: +SKIP
>>> frames = sd3.interpolate_prompts(model, ["a dog", "a cat"], frames=8,
...                                  num_steps=4, seed=1)  # doctest: +SKIP
>>> sd3.save_gif("dog_to_cat.gif", frames, fps=4)  # doctest: +SKIP
"""

import importlib

_MODULES = {
    "keras_diffusion.sd3.data": (
        "CaptionedImages",
        "TrainingBatches",
        "cache_examples",
        "load_captioned_folder",
        "load_pokemon_blip",
        "raw_examples",
    ),
    "keras_diffusion.sd3.dreambooth": ("class_images", "dreambooth_batches"),
    "keras_diffusion.sd3.finetune": ("FlowMatchingTrainer", "encode_text"),
    "keras_diffusion.sd3.flow": ("MMDiTFlow",),
    "keras_diffusion.sd3.lora": (
        "enable_lora",
        "load_lora",
        "lora_parameter_counts",
        "merge_lora",
        "parameter_report",
        "save_lora",
    ),
    "keras_diffusion.sd3.textual_inversion": (
        "add_placeholder_token",
        "load_textual_inversion",
        "save_textual_inversion",
    ),
    "keras_diffusion.sd3.generate": (
        "image_to_image",
        "inpaint",
        "save_images",
        "text_to_image",
    ),
    "keras_diffusion.sd3.pipeline": (
        "KERAS_HUB_PRESETS",
        "PresetUnavailableError",
        "StableDiffusion3",
        "build_tiny",
        "check_image_size",
        "from_preset",
        "tiny_preset_dir",
    ),
    "keras_diffusion.sd3.walks": (
        "Embeddings",
        "FrameRenderer",
        "circular_walk",
        "encode_prompts",
        "interpolate_prompts",
        "interpolation_grid",
        "render",
        "save_gif",
        "save_grid",
        "slerp",
        "walk_around_prompt",
    ),
}
_LAZY = {name: module for module, names in _MODULES.items() for name in names}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'keras_diffusion.sd3' has no attribute {name!r}")


__all__ = sorted(_LAZY)
