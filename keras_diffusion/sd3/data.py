"""Captioned image data for fine-tuning Stable Diffusion 3.

A training folder holds images and their captions, given in one of three
ways (checked in this order):

- `metadata.jsonl`: one JSON object per line with `"file_name"` and `"text"`
  (the Hugging Face `imagefolder` layout);
- `captions.txt`: one `file_name<TAB>caption` per line;
- neither: each image's caption is its file name without the extension,
  with `_` and `-` read as spaces (`a_photo_of_a_cat.png`).

Images are resized so that they cover the model's size, then center-cropped
(`load_image`). `TrainingBatches` serves them to `fit()` with a random
horizontal flip and a reshuffle per epoch, both seeded; `cache_examples`
encodes images and captions once with the frozen VAE and text encoders, so
epochs only run the MMDiT (with flips, both orientations are cached).
`load_pokemon_blip` fetches the Pokemon BLIP captions used by keras.io's
fine-tuning example, when the network allows.
"""

import json
import os
import tarfile

import keras
import numpy as np
from PIL import Image, ImageOps

from keras_diffusion.resume import ResumableBatches

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
METADATA_FILE = "metadata.jsonl"
CAPTIONS_FILE = "captions.txt"
POKEMON_BLIP_URL = (
    "https://huggingface.co/datasets/sayakpaul/pokemon-blip-original-version/"
    "resolve/main/pokemon_dataset.tar.gz"
)


class CaptionedImages:
    """Images and their captions, loaded and cropped.

    Attributes:
        images: uint8 array `(N, H, W, 3)`.
        captions: list of N strings.
        files: list of N source paths (or names).

    Example:
    >>> data = load_captioned_folder("pets/", image_size=64)  # doctest: +SKIP
    >>> len(data), data.images.shape[1:]  # doctest: +SKIP
    (12, (64, 64, 3))
    """

    def __init__(self, images, captions, files):
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(
                f"`images` must be uint8 of shape (N, H, W, 3); got {images.dtype} "
                f"{images.shape}."
            )
        if not len(images) == len(captions) == len(files):
            raise ValueError(
                f"Got {len(images)} images, {len(captions)} captions and {len(files)} "
                "file names; they must match one to one."
            )
        if not len(images):
            raise ValueError("No images: a training set needs at least one image.")
        self.images = images
        self.captions = [str(caption) for caption in captions]
        self.files = list(files)

    def __len__(self):
        return len(self.images)


def read_captions(folder):
    """Lists `(file_name, caption)` pairs of a training folder.

    Args:
        folder: the folder (see the module docstring for the layouts).

    Returns:
        A list of `(file_name, caption)`, in file order.

    Raises:
        FileNotFoundError: the folder is missing.
        ValueError: no images, a malformed caption file, or captions naming
            images that do not exist (all such names are listed).

    Example:
    >>> read_captions("pets/")[:1]  # doctest: +SKIP
    [('cat.png', 'a photo of a cat')]
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"Training folder {folder!r} does not exist or is not a folder. Pass the "
            "folder holding the images (and metadata.jsonl or captions.txt)."
        )
    metadata = os.path.join(folder, METADATA_FILE)
    captions_file = os.path.join(folder, CAPTIONS_FILE)
    if os.path.isfile(metadata):
        pairs = _read_metadata(metadata)
        source = METADATA_FILE
    elif os.path.isfile(captions_file):
        pairs = _read_captions_txt(captions_file)
        source = CAPTIONS_FILE
    else:
        names = sorted(
            name
            for name in os.listdir(folder)
            if name.lower().endswith(IMAGE_EXTENSIONS)
            and os.path.isfile(os.path.join(folder, name))
        )
        if not names:
            raise ValueError(
                f"Training folder {folder!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}) "
                f"and no {METADATA_FILE} or {CAPTIONS_FILE}. Add captioned images."
            )
        return [(name, caption_from_file_name(name)) for name in names]
    if not pairs:
        raise ValueError(f"{os.path.join(folder, source)!r} lists no images. Add lines to it.")
    missing = [name for name, _ in pairs if not os.path.isfile(os.path.join(folder, name))]
    if missing:
        shown = ", ".join(repr(name) for name in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise ValueError(
            f"{source} in {folder!r} names {len(missing)} image(s) that do not exist: "
            f"{shown}{more}. Fix the names or add the files."
        )
    return pairs


def caption_from_file_name(name):
    """`"a_photo-of_a_cat.png"` -> `"a photo of a cat"`."""
    stem = os.path.splitext(os.path.basename(name))[0]
    return " ".join(stem.replace("_", " ").replace("-", " ").split())


def load_image(path, image_size):
    """Reads an image as RGB uint8, resized to cover `image_size` and center-cropped.

    Args:
        path: the image file.
        image_size: `(height, width)`.

    Returns:
        uint8 array `(height, width, 3)`.
    """
    height, width = image_size
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image).convert("RGB")
    scale = max(height / image.height, width / image.width)
    new_width = max(width, round(image.width * scale))
    new_height = max(height, round(image.height * scale))
    image = image.resize((new_width, new_height), Image.Resampling.BICUBIC)
    left, top = (new_width - width) // 2, (new_height - height) // 2
    return np.asarray(image.crop((left, top, left + width, top + height)), dtype=np.uint8)


def load_captioned_folder(folder, image_size, *, skip_bad_files=False, max_images=None):
    """Loads a captioned training folder.

    Args:
        folder: see the module docstring for the caption layouts.
        image_size: int or `(height, width)`; usually `model.image_size`.
        skip_bad_files: `False` raises on unreadable images (naming all of
            them); `True` skips them with a warning naming each.
        max_images: keep only the first this many (in file order).

    Returns:
        A `CaptionedImages`.

    Raises:
        FileNotFoundError, ValueError: see `read_captions`; also for
            unreadable images unless `skip_bad_files`.

    Example:
    >>> data = load_captioned_folder("pets/", 64)  # doctest: +SKIP
    """
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    pairs = read_captions(folder)
    if max_images is not None:
        pairs = pairs[:max_images]
    images, captions, files, bad = [], [], [], []
    for name, caption in pairs:
        path = os.path.join(os.fspath(folder), name)
        try:
            images.append(load_image(path, size))
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            bad.append(f"{name!r} ({type(error).__name__}: {error})")
            continue
        captions.append(caption)
        files.append(path)
    if bad and not skip_bad_files or not images:
        raise ValueError(
            f"{len(bad)} image file(s) in {os.fspath(folder)!r} could not be read: "
            + "; ".join(bad)
            + ". Remove or replace them"
            + ("." if not images else ", or pass skip_bad_files=True (--skip-bad-files).")
        )
    for message in bad:
        print(f"Skipping unreadable image {message}.")
    return CaptionedImages(np.stack(images), captions, files)


def load_pokemon_blip(image_size, *, max_images=None, cache_dir=None, url=POKEMON_BLIP_URL):
    """Loads the Pokemon BLIP captions (833 images), keras.io's fine-tuning data.

    The archive is downloaded once with `keras.utils.get_file` (into
    `cache_dir`, default `~/.keras/datasets`).

    Args:
        image_size: int or `(height, width)`.
        max_images: keep only the first this many.
        cache_dir: where to keep the download.
        url: the archive's address.

    Returns:
        A `CaptionedImages`.

    Raises:
        ConnectionError: when the archive cannot be downloaded, with what to
            do instead.

    Example:
    >>> data = load_pokemon_blip(64, max_images=100)  # doctest: +SKIP
    """
    try:
        archive = keras.utils.get_file(
            "pokemon_dataset.tar.gz", origin=url, cache_dir=cache_dir
        )
    except Exception as error:  # urllib raises several kinds; all mean "unreachable".
        raise ConnectionError(
            f"Could not download the Pokemon BLIP captions from {url}: {error}. "
            "This needs network access to huggingface.co. Offline, put captioned "
            f"images in a folder ({METADATA_FILE} with file_name/text, {CAPTIONS_FILE}, "
            "or captions as file names) and pass that folder instead."
        ) from error
    folder = archive[: -len(".tar.gz")]
    if not os.path.isdir(folder):
        with tarfile.open(archive) as tar:
            tar.extractall(folder, filter="data")
    csv_path = _find(folder, "data.csv")
    import csv

    with open(csv_path, newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    if max_images is not None:
        rows = rows[:max_images]
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    base = os.path.dirname(csv_path)
    images = [load_image(os.path.join(base, row["image_path"]), size) for row in rows]
    return CaptionedImages(
        np.stack(images), [row["caption"] for row in rows], [row["image_path"] for row in rows]
    )


def tokenize(model, captions):
    """Token ids of captions, as numpy int32 arrays keyed like KerasHub's.

    Args:
        model: a `keras_diffusion.sd3.StableDiffusion3`.
        captions: list of strings.

    Returns:
        dict `{"clip_l": (N, L), "clip_g": (N, L)[, "t5": (N, L5)]}`.
    """
    token_ids = model.preprocessor.generate_preprocess(list(captions))
    return {name: np.asarray(keras.ops.convert_to_numpy(ids), np.int32) for name, ids in token_ids.items()}


class TrainingBatches(ResumableBatches):
    """Batches of training examples for `FlowMatchingTrainer.fit()`.

    Each example is either raw (`"images"` float in [-1, 1] and
    `"token_ids"`) or cached (`"latents"`, `"context"`,
    `"pooled_projection"`, see `cache_examples`). The order is reshuffled
    every epoch and a random half of the examples is flipped horizontally,
    both drawn from `seed` and the epoch number. With `prior` examples
    (DreamBooth's class images), each batch holds `batch_size` examples of
    each kind, the prior ones flagged with `"prior": 1`.

    Args:
        examples: dict of numpy arrays (nested dicts allowed) with equal
            first dimension, as made by `raw_examples` or `cache_examples`.
        batch_size: examples per batch (of each kind, with `prior`).
        prior: optional second dict of the same structure.
        random_flip: flip images (or pick the flipped cached latents).
        shuffle: reshuffle every epoch.
        seed: int seed.

    Example:
    >>> batches = TrainingBatches(raw_examples(model, data), batch_size=4)  # doctest: +SKIP
    >>> trainer.fit(batches, epochs=10)  # doctest: +SKIP
    """

    def __init__(self, examples, batch_size, *, prior=None, random_flip=True, shuffle=True, seed=0):
        # The order depends on the examples' count only, so the base class
        # is given one array of that length; the batches come from batch().
        super().__init__(np.zeros(_num_examples(examples)), batch_size, seed=seed, shuffle=shuffle)
        self.examples = examples
        self.prior = prior
        self.random_flip = random_flip
        self.num_prior = None if prior is None else _num_examples(prior)

    def config(self):
        return {**super().config(), "data.num_prior": self.num_prior, "data.random_flip": self.random_flip}

    def _select(self, examples, count, epoch, index, kind):
        rng = np.random.default_rng([self.seed, epoch, kind])
        order = rng.permutation(count) if self.shuffle else np.arange(count)
        flips = rng.random(count) < 0.5 if self.random_flip else np.zeros(count, bool)
        # The prior set is cycled so that every batch has batch_size of them.
        positions = np.arange(index * self.batch_size, (index + 1) * self.batch_size)
        if kind == 0:
            positions = positions[positions < count]
        chosen = order[positions % count]
        return _take(examples, chosen, flips[chosen])

    def batch(self, epoch, step):
        """Batch `step` of epoch `epoch`: a pure function of the seed and the position."""
        batch = self._select(self.examples, self.num_examples, epoch, step, 0)
        size = _num_examples(batch)
        batch["prior"] = np.zeros(size, "float32")
        if self.prior is not None:
            prior = self._select(self.prior, self.num_prior, epoch, step, 1)
            prior["prior"] = np.ones(_num_examples(prior), "float32")
            batch = _concatenate(batch, prior)
        return batch


def raw_examples(model, data):
    """Examples that the trainer encodes every step: images and token ids.

    Args:
        model: a `keras_diffusion.sd3.StableDiffusion3` (its tokenizers).
        data: a `CaptionedImages`.

    Returns:
        dict `{"images": uint8 (N, H, W, 3), "token_ids": {...}}`.
    """
    _check_size(model, data)
    return {"images": data.images, "token_ids": tokenize(model, data.captions)}


def cache_examples(model, data, *, batch_size=8, random_flip=True, cache_text=True, seed=None):
    """Encodes images and captions once, so that epochs only run the MMDiT.

    A VAE that samples its latents (`sampler_method="sample"`, as SD3's
    presets do) draws fresh noise for every image, batch and call. `seed`
    restarts that noise, so the same seed caches the same latents.

    Args:
        model: a `keras_diffusion.sd3.StableDiffusion3`.
        data: a `CaptionedImages`.
        batch_size: examples per encoder call.
        random_flip: also cache the latents of the flipped images.
        cache_text: cache the text embeddings too. `False` keeps the token
            ids instead (textual inversion trains the text encoders' input).
        seed: int to restart the VAE's sampling noise from, or `None` to
            continue it.

    Returns:
        dict with float32 `"latents"` (`(N, h, w, c)`, scaled and shifted like
        SD3's), `"context"` and `"pooled_projection"` (or `"token_ids"`
        without `cache_text`), and `"flipped_latents"` with `random_flip`,
        for `TrainingBatches`.

    Example:
    >>> examples = cache_examples(model, data, seed=0)  # doctest: +SKIP
    >>> again = cache_examples(model, data, seed=0)  # the same latents  # doctest: +SKIP
    """
    _check_size(model, data)
    if seed is not None:
        _seed_vae_sampler(model.backbone, seed)
    token_ids = tokenize(model, data.captions)
    encode = _example_encoder(model)
    parts = {"latents": [], "context": [], "pooled_projection": []}
    if random_flip:
        parts["flipped_latents"] = []
    for start in range(0, len(data), batch_size):
        images = _model_range(data.images[start : start + batch_size])
        ids = {name: value[start : start + batch_size] for name, value in token_ids.items()}
        count = len(images)
        # The last batch is padded to batch_size: one compiled program.
        images, ids = _pad(images, batch_size), {k: _pad(v, batch_size) for k, v in ids.items()}
        latents, flipped, context, pooled = encode(images, ids)
        parts["latents"].append(_numpy(latents)[:count])
        if random_flip:
            parts["flipped_latents"].append(_numpy(flipped)[:count])
        parts["context"].append(_numpy(context)[:count])
        parts["pooled_projection"].append(_numpy(pooled)[:count])
    examples = {name: np.concatenate(values) for name, values in parts.items()}
    if not cache_text:
        del examples["context"], examples["pooled_projection"]
        examples["token_ids"] = token_ids
    return examples


def _example_encoder(model):
    """The frozen encoders as one compiled function, kept by the model.

    `model.compiled` rebuilds it when the model changes (a textual-inversion
    token swaps the embedding table a trace would hold).
    """
    from keras_diffusion.compile import CompiledLoop
    from keras_diffusion.sd3.finetune import encode_text

    backbone = model.backbone

    def encode(images, token_ids):
        images = keras.ops.cast(images, backbone.compute_dtype)
        latents = backbone.encode_image_step(images)
        flipped = backbone.encode_image_step(keras.ops.flip(images, axis=2))
        context, pooled = encode_text(backbone, token_ids)
        return latents, flipped, context, pooled

    return model.compiled("example_encoder", lambda: CompiledLoop(encode, model))


def _seed_vae_sampler(backbone, seed):
    """Restarts the noise of the VAE's latent sampler at `seed`."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise ValueError(f"`seed` must be an int or None, got {seed!r}.")
    state = backbone.vae.distribution_sampler.seed_generator.state
    state.assign(keras.random.SeedGenerator(seed).state.value)


def _pad(array, size):
    if len(array) == size:
        return array
    return np.concatenate([array, np.repeat(array[-1:], size - len(array), axis=0)])


def _numpy(tensor):
    return np.asarray(keras.ops.convert_to_numpy(keras.ops.cast(tensor, "float32")))


def _model_range(images):
    return images.astype("float32") / 127.5 - 1.0


def _check_size(model, data):
    if tuple(data.images.shape[1:3]) != tuple(model.image_size):
        raise ValueError(
            f"The images are {data.images.shape[1]}x{data.images.shape[2]} but the model "
            f"makes {model.image_size[0]}x{model.image_size[1]}; load them with "
            "image_size=model.image_size."
        )


def _num_examples(examples):
    for value in examples.values():
        return _num_examples(value) if isinstance(value, dict) else len(value)
    raise ValueError("Empty examples dict.")


def _take(examples, indices, flips):
    batch = {}
    for name, value in examples.items():
        if name == "flipped_latents":
            continue
        if isinstance(value, dict):
            batch[name] = _take(value, indices, flips)
        elif name == "images":
            images = _model_range(value[indices])
            batch[name] = np.where(flips[:, None, None, None], images[:, :, ::-1], images)
        elif name == "latents" and "flipped_latents" in examples:
            flipped = examples["flipped_latents"][indices]
            batch[name] = np.where(flips[:, None, None, None], flipped, value[indices])
        else:
            batch[name] = value[indices]
    return batch


def _concatenate(first, second):
    return {
        name: _concatenate(value, second[name])
        if isinstance(value, dict)
        else np.concatenate([value, second[name]])
        for name, value in first.items()
    }


def _read_metadata(path):
    pairs = []
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                pairs.append((str(record["file_name"]), str(record["text"])))
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise ValueError(
                    f"{path!r} line {number} is not a JSON object with 'file_name' and "
                    f"'text' ({type(error).__name__}: {error}). Each line must look like "
                    '{"file_name": "cat.png", "text": "a photo of a cat"}.'
                ) from None
    return pairs


def _read_captions_txt(path):
    pairs = []
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            name, tab, caption = line.partition("\t")
            if not tab or not name.strip():
                raise ValueError(
                    f"{path!r} line {number} has no tab: each line must be "
                    "'file_name<TAB>caption'."
                )
            pairs.append((name.strip(), caption.strip()))
    return pairs


def _find(folder, name):
    for root, _, files in os.walk(folder):
        if name in files:
            return os.path.join(root, name)
    raise FileNotFoundError(
        f"The downloaded archive in {folder!r} has no {name}; delete the folder and "
        "the archive beside it to download again."
    )
