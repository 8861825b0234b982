"""Textual inversion for SD3: new words whose CLIP embeddings are learned.

`add_placeholder_token(model, "<my-toy>", "toy")` adds the placeholder to
both CLIP tokenizers' vocabularies as an unsplittable token, and gives each
CLIP encoder a `PlaceholderEmbedding`: the encoder's frozen token table with
one trainable row per placeholder spliced in, initialised from the
initializer token's row. Several placeholders (one concept each) can be
added at once and learn together. Only those rows train (`FlowMatchingTrainer(...,
train_diffuser=False, trainable_layers=inversion.layers)`); every other row
and every other weight stays bit-identical, because they are not trainable
variables at all.

KerasHub's CLIP pools the hidden state at the largest token id, which must
stay the end token. So the n placeholders take ids from the end token's old
id `V - 1` on and the end token moves n up (`id V - 1 + n`); the spliced
table is `[rows 0..V-2, n placeholder rows, end-token row]`. This needs the end token to
be the last entry of the vocabulary, as in CLIP's.

`save_textual_inversion` writes the learned rows (a few KB); on a freshly
loaded model `load_textual_inversion` adds the token again with those rows,
and prompts can use it with `text_to_image` and the walks. The T5 encoder,
when present, is not adapted: it reads the placeholder as unknown pieces.
"""

import json

import keras
import keras_hub
import numpy as np
from keras import ops

from keras_diffusion.files import write_npz

_ENCODERS = ("clip_l", "clip_g")
_FORMAT = "keras_diffusion.sd3.textual_inversion/1"


@keras.saving.register_keras_serializable("keras_diffusion")
class CLIPTokenizerWithPlaceholders(keras_hub.tokenizers.CLIPTokenizer):
    """A CLIP tokenizer that keeps extra placeholder tokens whole.

    Args:
        vocabulary, merges, **kwargs: as for `keras_hub.tokenizers.CLIPTokenizer`.
        placeholder_tokens: tokens (already in `vocabulary`) that are never
            split by the BPE.
    """

    def __init__(self, vocabulary=None, merges=None, placeholder_tokens=(), **kwargs):
        self.placeholder_tokens = list(placeholder_tokens)
        super().__init__(vocabulary=vocabulary, merges=merges, **kwargs)

    def set_vocabulary_and_merges(self, vocabulary, merges):
        self.unsplittable_tokens = [self.start_token, self.end_token, *self.placeholder_tokens]
        super().set_vocabulary_and_merges(vocabulary, merges)

    def get_config(self):
        return {**super().get_config(), "placeholder_tokens": self.placeholder_tokens}


class PlaceholderEmbedding(keras.layers.Layer):
    """A CLIP token embedding with trainable placeholder rows spliced in.

    Ids below `first_id` read the base table, ids `first_id .. first_id +
    n - 1` read the new rows, and id `first_id + n` reads the base table's
    last row (the end token).

    Args:
        base: the encoder's `ReversibleEmbedding` (not trained).
        initial_rows: float array `(n, embedding_dim)`.

    Example:
    >>> inversion = add_placeholder_token(model, "<toy>", "a")  # doctest: +SKIP
    >>> inversion.layers[0].rows.shape  # doctest: +SKIP
    (1, 32)
    """

    def __init__(self, base, initial_rows, **kwargs):
        kwargs.setdefault("dtype", base.dtype_policy)
        super().__init__(**kwargs)
        initial_rows = np.asarray(initial_rows, "float32")
        self.base = base
        self.first_id = base.input_dim - 1
        self.rows = self.add_weight(
            shape=initial_rows.shape,
            initializer=keras.initializers.Constant(initial_rows),
            dtype=base.variable_dtype,
            name="placeholder_rows",
        )
        self.built = True

    def table(self):
        """The full `(V + n, dim)` table this layer looks ids up in."""
        base = self.base.embeddings
        rows = ops.cast(self.rows, base.dtype)
        return ops.concatenate([base[: self.first_id], rows, base[self.first_id :]], axis=0)

    def call(self, token_ids):
        table = ops.cast(self.table(), self.compute_dtype)
        return ops.take(table, ops.cast(token_ids, "int32"), axis=0)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.base.output_dim,)


class TextualInversion:
    """The placeholders added to a model: their tokens, ids and embedding layers.

    Attributes:
        placeholders: the token strings, in row order.
        initializer_tokens: the words their rows started from (or `None`s).
        token_ids: `{"clip_l": [ids], "clip_g": [ids]}`, one per placeholder.
        layers: the two `PlaceholderEmbedding` layers, to pass as the
            trainer's `trainable_layers`.
    """

    def __init__(self, placeholders, initializer_tokens, token_ids, layers):
        self.placeholders = list(placeholders)
        self.initializer_tokens = list(initializer_tokens)
        self.token_ids = token_ids
        self.layers = layers

    @property
    def placeholder(self):
        """The placeholder, when there is one (`placeholders` lists several)."""
        if len(self.placeholders) != 1:
            raise ValueError(
                f"This model has {len(self.placeholders)} placeholders; read `placeholders`."
            )
        return self.placeholders[0]

    @property
    def initializer_token(self):
        """The initializer of the one placeholder (see `placeholder`)."""
        return self.initializer_tokens[self.placeholders.index(self.placeholder)]

    def rows(self):
        """`{"clip_l": (n, dim), "clip_g": (n, dim)}` numpy rows as learned so far."""
        return {name: ops.convert_to_numpy(layer.rows) for name, layer in zip(_ENCODERS, self.layers)}


def add_placeholder_token(model, placeholder, initializer_token=None, *, initial_rows=None):
    """Adds trainable placeholder tokens to both CLIP encoders of `model`.

    The model's preprocessor is replaced by one whose tokenizers know the
    placeholders, and the model rebuilds its compiled programs, so
    `text_to_image(model, "a photo of <toy>")` uses the new rows.

    Args:
        model: a `keras_diffusion.sd3.StableDiffusion3`.
        placeholder: the new token, e.g. `"<cat-toy>"`: lowercase, no
            spaces, not already in the vocabulary; or a list of such tokens,
            one concept each (their rows train together).
        initializer_token: a word that each CLIP tokenizer turns into one
            token; its embedding rows are the starting point. With several
            placeholders, a word for all or a list with one per placeholder.
        initial_rows: instead of `initializer_token`, the rows themselves:
            `{"clip_l": (n, dim_l), "clip_g": (n, dim_g)}` (as loaded).

    Returns:
        A `TextualInversion`.

    Raises:
        ValueError: a bad placeholder or initializer token, or a model that
            already has placeholders.

    Example:
    >>> inversion = add_placeholder_token(model, "<cat-toy>", "toy")  # doctest: +SKIP
    >>> trainer = FlowMatchingTrainer(model.backbone, train_diffuser=False,
    ...                               trainable_layers=inversion.layers)  # doctest: +SKIP
    """
    placeholders = [placeholder] if isinstance(placeholder, str) else list(placeholder)
    for token in placeholders:
        if not isinstance(token, str) or not token or token != token.strip().lower() or " " in token:
            raise ValueError(
                f"A placeholder must be one lowercase word without spaces, such as "
                f"'<cat-toy>'; got {token!r}."
            )
    if not placeholders or len(set(placeholders)) != len(placeholders):
        raise ValueError(f"The placeholders must be distinct and at least one; got {placeholders}.")
    if (initializer_token is None) == (initial_rows is None):
        raise ValueError("Pass exactly one of `initializer_token` and `initial_rows`.")
    initializers = [None] * len(placeholders)
    if initializer_token is not None:
        initializers = (
            [initializer_token] * len(placeholders)
            if isinstance(initializer_token, str)
            else list(initializer_token)
        )
        if len(initializers) != len(placeholders):
            raise ValueError(
                f"Got {len(initializers)} initializer tokens for {len(placeholders)} "
                "placeholders; pass one word, or one per placeholder."
            )
    count = len(placeholders)
    preprocessor = model.preprocessor
    backbone = model.backbone
    new_preprocessors, layers, token_ids = {}, [], {}
    for name in _ENCODERS:
        clip_preprocessor = getattr(preprocessor, f"{name}_preprocessor")
        tokenizer = clip_preprocessor.tokenizer
        embedding = getattr(backbone, name).embedding
        if isinstance(embedding.token_embedding, PlaceholderEmbedding):
            raise ValueError(
                "This model already has textual-inversion tokens. Load a fresh model "
                "and add all placeholders in one call (a list)."
            )
        vocabulary = dict(tokenizer.vocabulary)
        taken = [token for token in placeholders if token in vocabulary]
        if taken:
            raise ValueError(
                f"{taken[0]!r} is already in the {name} vocabulary; choose a new "
                "word, such as '<my-concept>'."
            )
        end_id = tokenizer.end_token_id
        if end_id != len(vocabulary) - 1:
            raise ValueError(
                f"The {name} tokenizer's end token has id {end_id}, not the last id "
                f"{len(vocabulary) - 1}; textual inversion needs CLIP's layout."
            )
        dim = embedding.token_embedding.output_dim
        if initial_rows is None:
            ids = []
            for word in initializers:
                pieces = [int(i) for i in np.asarray(tokenizer(word)).reshape(-1)]
                if len(pieces) != 1:
                    raise ValueError(
                        f"The initializer token {word!r} is {len(pieces)} tokens for "
                        f"the {name} tokenizer; choose a word that is one token (e.g. 'dog', "
                        "'toy', 'cat' for real CLIP)."
                    )
                ids += pieces
            rows = ops.convert_to_numpy(embedding.token_embedding.embeddings)[ids]
        else:
            rows = np.asarray(initial_rows[name], "float32")
            if rows.shape != (count, dim):
                raise ValueError(
                    f"The {name} rows have shape {rows.shape}; this model needs "
                    f"({count}, {dim}) for {count} placeholder(s)."
                )
        for offset, token in enumerate(placeholders):
            vocabulary[token] = end_id + offset
        vocabulary[tokenizer.end_token] = end_id + count
        new_tokenizer = CLIPTokenizerWithPlaceholders(
            vocabulary=vocabulary,
            merges=list(tokenizer.merges),
            pad_with_end_token=tokenizer.pad_with_end_token,
            placeholder_tokens=placeholders,
            config_file=tokenizer.config_file,
        )
        new_preprocessors[name] = keras_hub.models.CLIPPreprocessor(
            new_tokenizer,
            sequence_length=clip_preprocessor.sequence_length,
            add_start_token=clip_preprocessor.add_start_token,
            add_end_token=clip_preprocessor.add_end_token,
            to_lower=clip_preprocessor.to_lower,
            config_file=clip_preprocessor.config_file,
        )
        layers.append(
            PlaceholderEmbedding(embedding.token_embedding, rows, name=f"{name}_placeholder")
        )
        token_ids[name] = [end_id + offset for offset in range(count)]
    # Only once both encoders passed every check does the model change.
    for name, layer in zip(_ENCODERS, layers):
        # The encoder's functional graph calls `embedding.token_embedding`
        # at run time. The built layer refuses new tracked state, and the
        # new rows must not join the backbone's saved weights anyway: set
        # the attribute without Keras' tracking.
        object.__setattr__(getattr(backbone, name).embedding, "token_embedding", layer)
        layer.base.trainable = False  # only the new rows train
    # A new preprocessor and new variables: the model rebuilds its tasks and
    # compiled programs on next use (`StableDiffusion3.compiled`).
    model.preprocessor = keras_hub.models.StableDiffusion3TextToImagePreprocessor(
        new_preprocessors["clip_l"],
        new_preprocessors["clip_g"],
        preprocessor.t5_preprocessor,
    )
    return TextualInversion(placeholders, initializers, token_ids, layers)


def save_textual_inversion(inversion, path):
    """Writes the learned rows and the placeholder to an `.npz` file (atomically).

    Args:
        inversion: the `TextualInversion` from `add_placeholder_token`.
        path: the file to write.

    Returns:
        `path`.

    Example:
    >>> save_textual_inversion(inversion, "out/cat_toy.embedding.npz")  # doctest: +SKIP
    """
    config = {
        "format": _FORMAT,
        "placeholders": inversion.placeholders,
        "initializer_tokens": inversion.initializer_tokens,
    }
    arrays = {**inversion.rows(), "config": np.array(json.dumps(config))}
    return write_npz(path, arrays)


def load_textual_inversion(model, path):
    """Adds a saved placeholder token with its learned rows to `model`.

    Args:
        model: a freshly loaded `StableDiffusion3` of the same architecture.
        path: a file from `save_textual_inversion`.

    Returns:
        A `TextualInversion`; prompts can now use its `placeholder`.

    Example:
    >>> model = keras_diffusion.sd3.from_preset("tiny")  # doctest: +SKIP
    >>> inversion = load_textual_inversion(model, "cat_toy.embedding.npz")  # doctest: +SKIP
    >>> text_to_image(model, f"a photo of {inversion.placeholder}")  # doctest: +SKIP
    """
    with np.load(path) as file:
        arrays = {name: file[name] for name in file.files}
    config = json.loads(str(arrays.get("config", "{}")))
    if config.get("format") != _FORMAT:
        raise ValueError(
            f"{path!r} is not a textual-inversion file written by save_textual_inversion."
        )
    # Files of one placeholder written before lists existed name it alone.
    placeholders = config.get("placeholders") or [config["placeholder"]]
    inversion = add_placeholder_token(
        model, placeholders, initial_rows={name: arrays[name] for name in _ENCODERS}
    )
    inversion.initializer_tokens = config.get("initializer_tokens") or [config["initializer_token"]]
    return inversion
