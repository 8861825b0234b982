"""Loading Stable Diffusion 3: KerasHub presets, local preset folders, `tiny`.

A `StableDiffusion3` holds one KerasHub `StableDiffusion3Backbone` and its
`StableDiffusion3TextToImagePreprocessor`, and builds KerasHub's three tasks
(`StableDiffusion3TextToImage`, `...ImageToImage`, `...Inpaint`) on top of
them on first use, so the weights are loaded once for every task and walk.

Presets, resolved in this order by `from_preset`:

- `"tiny"`: a randomly initialised model of about 0.6M parameters (see
  `build_tiny`). It is built once, saved under `cache_dir` and reloaded from
  there, so every backend and every run uses the same weights. Its images
  are noise-like: it exists to run the whole pipeline offline and in tests.
- A folder written by `StableDiffusion3.save_to_preset` (or by KerasHub's
  `save_to_preset`).
- One of `KERAS_HUB_PRESETS`, downloaded from Kaggle by KerasHub. This needs
  network access and a Kaggle account that accepted the model's licence.
- A `kaggle://`, `hf://` or other handle KerasHub understands.
"""

import io
import json
import os
import shutil
import string
import uuid

import numpy as np

KERAS_HUB_PRESETS = (
    "stable_diffusion_3_medium",
    "stable_diffusion_3.5_medium",
    "stable_diffusion_3.5_large",
    "stable_diffusion_3.5_large_turbo",
)
TINY = "tiny"
# Versioned: a new tiny model (v2: "toy" became one token) gets a new folder
# instead of silently reusing a cached older one.
DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "keras_diffusion", "sd3_tiny_v2")

# The VAE downsamples images by 8 in each direction.
_VAE_FACTOR = 8
# File names inside a preset folder. The two CLIP preprocessors need their own
# names: with KerasHub's default names the second one overwrites the first.
_CONFIG_FILE = "config.json"
_TEXT_ENCODERS = ("clip_l", "clip_g")


class PresetUnavailableError(ConnectionError):
    """A KerasHub preset could not be downloaded (no network or no access)."""


class StableDiffusion3:
    """A Stable Diffusion 3 model: KerasHub backbone, preprocessor and tasks.

    Build one with `from_preset` or `build_tiny` rather than directly. Pass it
    to `text_to_image`, `image_to_image`, `inpaint` and the walks.

    Args:
        backbone: a `keras_hub.models.StableDiffusion3Backbone`.
        preprocessor: a
            `keras_hub.models.StableDiffusion3TextToImagePreprocessor`.

    Attributes:
        image_size: `(height, width)` of the images the model makes.
        latent_shape: `(height // 8, width // 8, channels)` of its latents.

    Example:
    >>> model = build_tiny(image_size=32)  # doctest: +SKIP
    >>> model.image_size  # doctest: +SKIP
    (32, 32)
    """

    _TASK_CLASSES = {
        "text_to_image": "StableDiffusion3TextToImage",
        "image_to_image": "StableDiffusion3ImageToImage",
        "inpaint": "StableDiffusion3Inpaint",
    }

    def __init__(self, backbone, preprocessor):
        self.backbone = backbone
        self.preprocessor = preprocessor
        self._compiled = {}
        self._compiled_signature = None

    @property
    def image_size(self):
        return tuple(self.backbone.image_shape[:2])

    @property
    def latent_shape(self):
        return tuple(self.backbone.latent_shape[1:])

    @property
    def variables(self):
        """Every variable generation reads: the backbone's (seed states
        included, such as a sampling VAE's), plus rows that textual
        inversion splices into the text encoders untracked."""
        variables = list(self.backbone.variables)
        known = {id(v) for v in variables}
        for name in _TEXT_ENCODERS:
            token_embedding = getattr(self.backbone, name).embedding.token_embedding
            variables += [v for v in token_embedding.weights if id(v) not in known]
        return variables

    @property
    def trainable_variables(self):
        return [v for v in self.variables if v.trainable]

    @property
    def non_trainable_variables(self):
        return [v for v in self.variables if not v.trainable]

    def compiled(self, key, build):
        """The object `build()` made for `key`, rebuilt when the model changed.

        Compiled programs (KerasHub's tasks and their `generate`, the walks'
        renderer, the data encoders) trace the model as it was: a graph
        traced before `enable_lora` or a textual-inversion token has no
        adapter path and no new rows. So everything built here is dropped
        whenever the set of variables (or their trainable flags) or the
        preprocessor changes. Values that training changes need no rebuild:
        every backend reads them at run time (JAX gets them as arguments
        through `keras_diffusion.compile.CompiledLoop`, whose owner is this
        model, untracked rows included).

        Args:
            key: any hashable name for the object.
            build: a function of no arguments that makes it.

        Returns:
            The cached or freshly built object.
        """
        signature = (
            id(self.preprocessor),
            tuple((id(v), v.trainable) for v in self.variables),
        )
        if signature != self._compiled_signature:
            self._compiled = {}
            self._compiled_signature = signature
        if key not in self._compiled:
            self._compiled[key] = build()
        return self._compiled[key]

    def task(self, kind):
        """Returns the KerasHub task of `kind`, sharing this model's weights.

        Args:
            kind: `"text_to_image"`, `"image_to_image"` or `"inpaint"`.

        Returns:
            A `keras_hub.models.StableDiffusion3TextToImage`, `...ImageToImage`
            or `...Inpaint` built on `self.backbone` and `self.preprocessor`.
            Call it through `run_task` (or `text_to_image` & co.) to change
            `num_steps` between calls safely.
        """
        if kind not in self._TASK_CLASSES:
            raise ValueError(
                f"Unknown task {kind!r}; expected one of {sorted(self._TASK_CLASSES)}."
            )

        def build():
            import keras_hub

            task_class = getattr(keras_hub.models, self._TASK_CLASSES[kind])
            return task_class(self.backbone, self.preprocessor)

        return self.compiled(("task", kind), build)

    def run_task(self, kind, inputs, num_steps, **kwargs):
        """Calls KerasHub's `generate` of task `kind`, with a managed program.

        KerasHub compiles `generate` once, with the scheduler's sigmas for
        the first `num_steps` baked in (another `num_steps` then reuses stale
        sigmas: JAX returns wrong images, TensorFlow raises an index error).
        Here each `num_steps` gets its own program: KerasHub's own
        `generate_step`, compiled as KerasHub does it (`jax.jit` in a
        `StatelessScope`, `tf.function`, torch's `no_grad`) by
        `keras_diffusion.compile.CompiledLoop`, and rebuilt when the model
        changes (see `compiled`). So any sequence of calls returns what a
        fresh KerasHub task on the current weights would.

        Args:
            kind: `"text_to_image"`, `"image_to_image"` or `"inpaint"`.
            inputs: the `inputs` dict KerasHub's `generate` takes.
            num_steps: number of denoising steps.
            **kwargs: other `generate` arguments (`guidance_scale`, `seed`,
                `strength`).

        Returns:
            KerasHub's output: uint8 images.
        """
        from keras_diffusion.compile import CompiledLoop

        task = self.task(kind)
        task.generate_function = self.compiled(
            ("generate", kind, num_steps),
            lambda: CompiledLoop(task.generate_step, self, jit_compile=task.jit_compile),
        )
        return task.generate(inputs, num_steps=num_steps, **kwargs)

    @property
    def frame_renderer(self):
        """The compiled denoise-and-decode loop the walks share."""
        from keras_diffusion.sd3.walks import FrameRenderer

        return self.compiled("frame_renderer", lambda: FrameRenderer(self))

    def save_to_preset(self, preset_dir):
        """Saves the backbone and preprocessor as a KerasHub preset folder.

        Args:
            preset_dir: folder to write; created if missing.

        Returns:
            `preset_dir`.

        Example:
        >>> build_tiny().save_to_preset("sd3_tiny")  # doctest: +SKIP
        'sd3_tiny'
        """
        self.backbone.save_to_preset(preset_dir)
        self.preprocessor.save_to_preset(preset_dir)
        return preset_dir


def check_image_size(image_size, patch_size=None, position_size=None):
    """Validates an image size and returns it as `(height, width)`.

    Args:
        image_size: an int (square) or a `(height, width)` pair.
        patch_size: the MMDiT's patch size, when known. Each side must then be
            a multiple of `8 * patch_size`, or the MMDiT's patches do not
            tile the latent.
        position_size: the MMDiT's position-embedding size, when known. Each
            side must be at most `8 * patch_size * position_size`.

    Returns:
        `(height, width)` as ints.

    Example:
    >>> check_image_size(64)
    (64, 64)
    """
    sizes = (image_size, image_size) if _is_int(image_size) else image_size
    if (
        not isinstance(sizes, (tuple, list))
        or len(sizes) != 2
        or not all(_is_int(side) and side > 0 for side in sizes)
    ):
        raise ValueError(
            "`image_size` must be a positive int or a (height, width) pair of "
            f"positive ints, got {image_size!r}."
        )
    height, width = int(sizes[0]), int(sizes[1])
    if height % _VAE_FACTOR or width % _VAE_FACTOR:
        raise ValueError(
            f"`image_size` must be a multiple of 8 on each side (the VAE "
            f"downsamples by 8), got {height}x{width}. Try "
            f"{_round_up(height, 8)}x{_round_up(width, 8)}."
        )
    if patch_size:
        step = _VAE_FACTOR * patch_size
        if height % step or width % step:
            raise ValueError(
                f"`image_size` must be a multiple of {step} on each side for "
                f"this model: the MMDiT cuts the (size / 8) latent into "
                f"{patch_size}x{patch_size} patches. Got {height}x{width}; try "
                f"{_round_up(height, step)}x{_round_up(width, step)}."
            )
        if position_size and max(height, width) > step * position_size:
            raise ValueError(
                f"`image_size` {height}x{width} is too large for this model: "
                f"its position embedding covers at most "
                f"{step * position_size}x{step * position_size} pixels."
            )
    return height, width


def build_tiny(image_size=32, *, seed=0, include_t5=False):
    """Builds a small randomly initialised SD3, in the manner of KerasHub's tests.

    The model has the real SD3 structure (CLIP-L and CLIP-G text encoders, an
    MMDiT, a VAE, the flow-matching scheduler) at toy widths: about 0.6M
    parameters. Its CLIP tokenizers use a toy BPE vocabulary: single letters
    and digits, so every lowercase prompt tokenizes, plus a few merges
    ("air", "plane", "toy"). Its images are noise-like; it exists so that
    tests and offline demos run the full pipeline.

    Weights are drawn after `keras.utils.set_random_seed(seed)`, so this sets
    Keras' global seed. The draws differ between backends: save the model
    with `save_to_preset` to share it.

    Args:
        image_size: int or `(height, width)`, a multiple of 16 on each side,
            at most 512.
        seed: seed for the random weights.
        include_t5: add a tiny T5 text encoder (one layer, width 4096 like
            SD3's T5-XXL so that the MMDiT's context width does not change).
            Needs the `sentencepiece` package; KerasHub's T5 encoder cannot
            be built on the torch backend.

    Returns:
        A `StableDiffusion3`.

    Example:
    >>> model = build_tiny(image_size=32)  # doctest: +SKIP
    >>> model.backbone.count_params() < 2_000_000  # doctest: +SKIP
    True
    """
    import keras
    import keras_hub
    from keras_hub.src.models.vae.vae_backbone import VAEBackbone

    patch_size, position_size = 2, 32
    height, width = check_image_size(image_size, patch_size, position_size)
    if include_t5 and keras.backend.backend() == "torch":
        raise NotImplementedError(
            "KerasHub's T5 encoder for SD3 cannot be built on the torch "
            "backend (it assigns layers before `keras.Model.__init__`). Use "
            "include_t5=False, or build the preset under JAX or TensorFlow "
            "and load it here with include_t5=False."
        )
    keras.utils.set_random_seed(seed)
    vocabulary, merges = _toy_clip_vocabulary()
    clip_preprocessors = {}
    for name in _TEXT_ENCODERS:
        tokenizer = keras_hub.tokenizers.CLIPTokenizer(
            vocabulary,
            merges,
            # SD3's CLIP-L pads with its end token, CLIP-G with id 0.
            pad_with_end_token=name == "clip_l",
            config_file=f"{name}_tokenizer.json",
        )
        clip_preprocessors[name] = keras_hub.models.CLIPPreprocessor(
            tokenizer, config_file=f"{name}_preprocessor.json"
        )
    t5, t5_preprocessor = _tiny_t5() if include_t5 else (None, None)
    preprocessor = keras_hub.models.StableDiffusion3TextToImagePreprocessor(
        clip_preprocessors["clip_l"], clip_preprocessors["clip_g"], t5_preprocessor
    )
    # float32 text encoders: KerasHub defaults them to float16, which JAX
    # cannot run on CPU (its dot_product_attention has no float16 kernel).
    # Both CLIPs are as wide as the MMDiT (real SD3 uses 768/1280/1536):
    # fewer distinct weight shapes, so fewer initializers for JAX to compile.
    backbone = keras_hub.models.StableDiffusion3Backbone(
        mmdit_patch_size=patch_size,
        mmdit_hidden_dim=32,
        mmdit_num_layers=2,
        mmdit_num_heads=2,
        mmdit_position_size=position_size,
        mmdit_qk_norm=None,
        mmdit_dual_attention_indices=None,
        vae=VAEBackbone(
            encoder_num_filters=[32] * 4,
            encoder_num_blocks=[1] * 4,
            decoder_num_filters=[32] * 4,
            decoder_num_blocks=[1] * 4,
            # "mode" makes image encoding deterministic.
            sampler_method="mode",
            name="vae",
        ),
        clip_l=keras_hub.models.CLIPTextEncoder(
            vocabulary_size=len(vocabulary),
            embedding_dim=32,
            hidden_dim=32,
            num_layers=2,
            num_heads=2,
            intermediate_dim=128,
            intermediate_activation="quick_gelu",
            intermediate_output_index=-2,
            dtype="float32",
            name="clip_l",
        ),
        clip_g=keras_hub.models.CLIPTextEncoder(
            vocabulary_size=len(vocabulary),
            embedding_dim=32,
            hidden_dim=32,
            num_layers=2,
            num_heads=2,
            intermediate_dim=128,
            intermediate_activation="gelu",
            intermediate_output_index=-2,
            dtype="float32",
            name="clip_g",
        ),
        t5=t5,
        image_shape=(height, width, 3),
    )
    return StableDiffusion3(backbone, preprocessor)


def from_preset(
    preset,
    *,
    image_size=None,
    dtype=None,
    include_t5=True,
    cache_dir=DEFAULT_CACHE_DIR,
):
    """Loads a Stable Diffusion 3 model.

    Args:
        preset: `"tiny"`, a local preset folder, one of `KERAS_HUB_PRESETS`
            (downloaded from Kaggle by KerasHub), or a KerasHub handle such as
            `"kaggle://..."` or `"hf://..."`.
        image_size: int or `(height, width)` of the generated images, a
            multiple of 8 (and of 8 x the MMDiT patch size, i.e. 16 for all
            SD3 presets). Defaults to the preset's size (1024 for KerasHub's,
            32 for `"tiny"`).
        dtype: the compute/weight dtype, such as `"float16"` or
            `"bfloat16"`; defaults to the preset's. On JAX with CPU the text
            encoders cannot run in float16.
        include_t5: keep the preset's T5 text encoder if it has one.
            `False` drops it (less memory; also the only way to load a T5
            preset on torch). KerasHub's four SD3 presets have no T5.
        cache_dir: where `"tiny"` is saved on first use and reloaded from.

    Returns:
        A `StableDiffusion3`.

    Raises:
        ValueError: for an unknown preset name or a bad `image_size`.
        PresetUnavailableError: when a KerasHub preset cannot be downloaded.

    Example:
    >>> model = from_preset("tiny", image_size=64)  # doctest: +SKIP
    >>> model = from_preset("stable_diffusion_3_medium", image_size=512,
    ...                     dtype="float16")  # doctest: +SKIP
    """
    if image_size is not None:
        check_image_size(image_size)
    if not isinstance(preset, (str, os.PathLike)):
        raise ValueError(f"`preset` must be a name or a folder path, got {preset!r}.")
    preset = os.fspath(preset)
    if preset == TINY:
        preset = tiny_preset_dir(cache_dir)
    elif os.path.isdir(preset):
        if not os.path.isfile(os.path.join(preset, _CONFIG_FILE)):
            raise ValueError(
                f"{preset!r} is a folder but not a KerasHub preset: it has no "
                f"{_CONFIG_FILE}. Save one with `StableDiffusion3.save_to_preset`."
            )
    elif preset not in KERAS_HUB_PRESETS and "://" not in preset:
        raise ValueError(
            f"Unknown preset {preset!r}: it is not 'tiny', not an existing "
            "folder and not one of KerasHub's SD3 presets. Use 'tiny', a local "
            f"preset folder, or one of: {', '.join(KERAS_HUB_PRESETS)}."
        )
    if os.path.isdir(preset):
        # Absolute, so that KerasHub does not read a folder named like one of
        # its presets as that preset.
        return _load(os.path.abspath(preset), image_size, dtype, include_t5)
    # The first download (config.json) tells "unreachable" apart from any
    # later problem; a failure in the large weight download is one too.
    config = _download_config(preset)
    try:
        return _load(preset, image_size, dtype, include_t5, config)
    except OSError as error:
        raise _unavailable(preset, error) from error


def tiny_preset_dir(cache_dir=DEFAULT_CACHE_DIR):
    """Returns the folder of the cached `tiny` preset, building it on first use.

    The model is built with `build_tiny()` (seed 0, 32x32 images) and written
    to a temporary folder that is then renamed into place, so concurrent
    first uses never see a half-written preset.

    Args:
        cache_dir: the preset folder.

    Returns:
        The absolute path of `cache_dir`.

    Example:
    >>> tiny_preset_dir("/tmp/sd3_tiny")  # doctest: +SKIP
    '/tmp/sd3_tiny'
    """
    cache_dir = os.path.abspath(os.path.expanduser(cache_dir))
    if os.path.isfile(os.path.join(cache_dir, _CONFIG_FILE)):
        return cache_dir
    if os.path.isdir(cache_dir) and os.listdir(cache_dir):
        raise ValueError(
            f"The tiny preset cache {cache_dir!r} exists but holds no "
            f"{_CONFIG_FILE}. Remove it, or pass another cache folder."
        )
    parent = os.path.dirname(cache_dir)
    os.makedirs(parent, exist_ok=True)
    staging = os.path.join(parent, f".{os.path.basename(cache_dir)}.{uuid.uuid4().hex[:12]}")
    try:
        build_tiny().save_to_preset(staging)
        try:
            os.rename(staging, cache_dir)
        except OSError:
            # Another process finished first; its preset is identical.
            if not os.path.isfile(os.path.join(cache_dir, _CONFIG_FILE)):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return cache_dir


def _load(preset, image_size, dtype, include_t5, config=None):
    import keras_hub

    if config is None:
        with open(os.path.join(preset, _CONFIG_FILE), encoding="utf-8") as file:
            config = json.load(file)
    backbone_config = config.get("config", {})
    backbone_kwargs = {}
    if image_size is not None:
        height, width = check_image_size(
            image_size,
            backbone_config.get("mmdit_patch_size"),
            backbone_config.get("mmdit_position_size"),
        )
        backbone_kwargs["image_shape"] = (height, width, 3)
    if dtype is not None:
        backbone_kwargs["dtype"] = dtype
    preprocessor_kwargs = {}
    if not include_t5:
        backbone_kwargs["t5"] = None
        preprocessor_kwargs["t5_preprocessor"] = None
    backbone = keras_hub.models.StableDiffusion3Backbone.from_preset(
        preset, **backbone_kwargs
    )
    preprocessor = keras_hub.models.StableDiffusion3TextToImagePreprocessor.from_preset(
        preset, **preprocessor_kwargs
    )
    return StableDiffusion3(backbone, preprocessor)


def _download_config(preset):
    """Fetches a remote preset's config.json, or raises PresetUnavailableError."""
    from keras_hub.src.utils import preset_utils

    try:
        path = preset_utils.get_file(preset, _CONFIG_FILE)
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    # KerasHub reports an unreachable host as OSError (requests'
    # ConnectionError), a refused or gated download as FileNotFoundError or
    # ValueError, and a missing `kagglehub` as ImportError.
    except (OSError, ValueError, ImportError) as error:
        raise _unavailable(preset, error) from error


def _unavailable(preset, error):
    return PresetUnavailableError(
        f"Could not download the SD3 preset {preset!r}: {error}\n"
        "KerasHub presets download from Kaggle: this needs network access, "
        "the `kagglehub` package, Kaggle credentials (KAGGLE_USERNAME and "
        "KAGGLE_KEY, or ~/.kaggle/kaggle.json) and the model's licence "
        "accepted on kaggle.com. Offline, use preset='tiny' or a local "
        "preset folder saved with `StableDiffusion3.save_to_preset`."
    )


def _toy_clip_vocabulary():
    """A toy CLIP BPE vocabulary that tokenizes any lowercase prompt.

    Single letters and digits, plus merges for "air", "plane" and "toy" (one
    token, so the README's `--initializer toy` works on `tiny`). KerasHub's
    BPE tokenizer rejects a merge whose pieces are not themselves in the
    vocabulary, so every intermediate piece is listed. The end token gets
    the largest id: CLIP pools the hidden state at the argmax token id.
    """
    symbols = list(string.ascii_lowercase + string.digits)
    merges = ["a i", "ai r", "p l", "pl a", "n e</w>", "pla ne</w>", "t o", "to y</w>"]
    pieces = symbols + [s + "</w>" for s in symbols]
    pieces += ["ai", "air", "pl", "pla", "ne</w>", "plane</w>", "to", "toy</w>"]
    pieces += ["<|startoftext|>", "<|endoftext|>"]
    return {piece: index for index, piece in enumerate(pieces)}, merges


def _tiny_t5():
    """A one-layer T5 encoder with a word-level SentencePiece vocabulary."""
    import keras_hub
    import sentencepiece
    from keras_hub.src.models.stable_diffusion_3.t5_encoder import T5Encoder

    proto = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(
            ["a cat in a field", "an airplane over the airport", "a dog on the beach"]
        ),
        model_writer=proto,
        vocab_size=20,
        hard_vocab_limit=False,
        model_type="WORD",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        pad_piece="<pad>",
        eos_piece="</s>",
        unk_piece="<unk>",
        minloglevel=2,
    )
    tokenizer = keras_hub.tokenizers.T5Tokenizer(
        proto=proto.getvalue(), config_file="t5_tokenizer.json"
    )
    preprocessor = keras_hub.models.T5Preprocessor(
        tokenizer, sequence_length=16, config_file="t5_preprocessor.json"
    )
    # Width 4096 (SD3's T5-XXL width) keeps the MMDiT's context width the same
    # with or without T5, as for real presets; narrow attention and MLP keep
    # the encoder small.
    encoder = T5Encoder(
        vocabulary_size=tokenizer.vocabulary_size(),
        num_layers=1,
        num_heads=1,
        hidden_dim=4096,
        intermediate_dim=8,
        key_value_dim=8,
        dtype="float32",
        name="t5",
    )
    return encoder, preprocessor


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _round_up(value, multiple):
    return max(multiple, -(-value // multiple) * multiple)
