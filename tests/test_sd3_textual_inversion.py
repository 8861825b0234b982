"""Textual inversion on the tiny SD3: only the new token's rows change."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_diffusion import sd3
from keras_diffusion.sd3 import data
from keras_diffusion.sd3.finetune import FlowMatchingTrainer, count_params
from keras_diffusion.sd3.textual_inversion import (
    PlaceholderEmbedding,
    add_placeholder_token,
    load_textual_inversion,
    save_textual_inversion,
)
from tests.sd3_fixtures import NUM_STEPS, SEED, tiny_setup, torch_single_thread  # noqa: F401
from tests.test_sd3_finetune import synthetic_set

PLACEHOLDER = "<sq>"


def test_placeholder_tokenizes_whole_and_keeps_the_end_token_last():
    model = sd3.from_preset(tiny_setup().preset_dir)
    before = data.tokenize(model, ["a red square"])
    inversion = add_placeholder_token(model, PLACEHOLDER, "a")
    after = data.tokenize(model, [f"a {PLACEHOLDER} square", "a red square"])
    vocabulary_size = model.backbone.clip_l.vocabulary_size
    for name in ("clip_l", "clip_g"):
        ids = after[name][0]
        assert inversion.token_ids[name] == [vocabulary_size - 1]
        assert list(ids).count(vocabulary_size - 1) == 1  # one token, not pieces
        assert ids.argmax() == list(ids).index(vocabulary_size)  # the end token, pooled
        same = before[name][0] < vocabulary_size - 1
        np.testing.assert_array_equal(after[name][1][same], before[name][0][same])
    # The spliced table: old rows, the initializer's row, then the end row.
    layer = inversion.layers[0]
    base = ops.convert_to_numpy(layer.base.embeddings)
    table = ops.convert_to_numpy(layer.table())
    a_id = data.tokenize(model, ["a"])["clip_l"][0][1]
    np.testing.assert_array_equal(table[:-2], base[:-1])
    np.testing.assert_array_equal(table[-2], base[a_id])
    np.testing.assert_array_equal(table[-1], base[-1])
    with pytest.raises(ValueError, match="already has textual-inversion tokens"):
        add_placeholder_token(model, "<other>", "a")


def test_several_placeholders_learn_their_own_rows_and_reload(tmp_path):
    model = sd3.from_preset(tiny_setup().preset_dir)
    inversion = add_placeholder_token(model, ["<r>", "<b>"], ["a", "p"])
    vocabulary_size = model.backbone.clip_l.vocabulary_size
    assert inversion.token_ids["clip_l"] == [vocabulary_size - 1, vocabulary_size]
    ids = data.tokenize(model, ["a <b> <r>"])["clip_l"][0]
    assert list(ids[:5]) == [ids[0], ids[1], vocabulary_size, vocabulary_size - 1, vocabulary_size + 1]
    table = ops.convert_to_numpy(inversion.layers[0].table())
    base = ops.convert_to_numpy(inversion.layers[0].base.embeddings)
    letter = data.tokenize(model, ["a p"])["clip_l"][0]
    np.testing.assert_array_equal(table[-3:-1], base[letter[1:3]])
    with pytest.raises(ValueError, match="placeholders"):
        inversion.placeholder
    for layer, rows in zip(inversion.layers, ([[1.0] * 32, [2.0] * 32], [[3.0] * 32, [4.0] * 32])):
        layer.rows.assign(np.array(rows, "float32"))
    path = save_textual_inversion(inversion, tmp_path / "two.npz")
    loaded = load_textual_inversion(sd3.from_preset(tiny_setup().preset_dir), path)
    assert loaded.placeholders == ["<r>", "<b>"] and loaded.initializer_tokens == ["a", "p"]
    np.testing.assert_array_equal(loaded.rows()["clip_g"], [[3.0] * 32, [4.0] * 32])
    with pytest.raises(ValueError, match="one per placeholder"):
        add_placeholder_token(sd3.from_preset(tiny_setup().preset_dir), ["<x>", "<y>"], ["a"])


def test_only_the_new_rows_train_and_the_token_reloads(tmp_path):
    model = sd3.from_preset(tiny_setup().preset_dir)
    weights = {v.path: ops.convert_to_numpy(v) for v in model.backbone.weights}
    inversion = add_placeholder_token(model, PLACEHOLDER, "a")
    tables = [ops.convert_to_numpy(layer.table()) for layer in inversion.layers]
    squares = synthetic_set(4)
    squares.captions = [f"a {PLACEHOLDER} square"] * 4
    examples = data.cache_examples(model, squares, batch_size=4, cache_text=False)
    trainer = FlowMatchingTrainer(
        model.backbone, seed=0, train_diffuser=False, trainable_layers=inversion.layers
    )
    assert count_params(trainer.trainable_variables) == 32 + 32  # one row per CLIP
    trainer.compile(keras.optimizers.AdamW(5e-2, weight_decay=0.0))
    trainer.fit(data.TrainingBatches(examples, 4, seed=0), epochs=2, verbose=0)

    for layer, before in zip(inversion.layers, tables):
        after = ops.convert_to_numpy(layer.table())
        changed = np.flatnonzero(np.any(after != before, axis=1))
        np.testing.assert_array_equal(changed, [layer.first_id])
    for variable in model.backbone.weights:
        np.testing.assert_array_equal(ops.convert_to_numpy(variable), weights[variable.path])

    prompt = [f"a {PLACEHOLDER} square"]
    images = sd3.text_to_image(model, prompt, num_steps=NUM_STEPS, seed=SEED)
    path = save_textual_inversion(inversion, tmp_path / "sq.embedding.npz")
    fresh = sd3.from_preset(tiny_setup().preset_dir)
    loaded = load_textual_inversion(fresh, path)
    assert loaded.placeholder == PLACEHOLDER and loaded.initializer_token == "a"
    np.testing.assert_array_equal(sd3.text_to_image(fresh, prompt, num_steps=NUM_STEPS, seed=SEED), images)


def test_bad_placeholders_and_initializers():
    model = sd3.from_preset(tiny_setup().preset_dir)
    with pytest.raises(ValueError, match="one lowercase word"):
        add_placeholder_token(model, "My Toy", "a")
    with pytest.raises(ValueError, match="already in the clip_l vocabulary"):
        add_placeholder_token(model, "a</w>", "a")
    with pytest.raises(ValueError, match="is 2 tokens"):
        add_placeholder_token(model, "<toy>", "ab")
    # A refused token leaves the model as it was.
    for name in ("clip_l", "clip_g"):
        layer = getattr(model.backbone, name).embedding.token_embedding
        assert not isinstance(layer, PlaceholderEmbedding) and layer.trainable
    assert "<toy>" not in model.preprocessor.clip_l_preprocessor.tokenizer.vocabulary
    # The README's `--placeholder "<my-toy>" --initializer toy`: one token on tiny.
    assert add_placeholder_token(model, "<my-toy>", "toy").initializer_token == "toy"
