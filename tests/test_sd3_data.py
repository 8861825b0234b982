"""Captioned training folders, batches with flips and prior examples, caching."""

import functools
import itertools
import json

import keras_hub
import numpy as np
import pytest
from PIL import Image

from keras_diffusion import sd3
from keras_diffusion.sd3 import data
from tests.sd3_fixtures import tiny_setup, torch_single_thread  # noqa: F401


def write_image(path, color, size=(48, 40)):
    Image.new("RGB", size, color).save(path)


def test_metadata_jsonl_captions_txt_and_file_names(tmp_path):
    write_image(tmp_path / "b.png", (255, 0, 0))
    write_image(tmp_path / "a_red-cat.png", (0, 255, 0))
    assert data.read_captions(tmp_path) == [("a_red-cat.png", "a red cat"), ("b.png", "b")]
    (tmp_path / "captions.txt").write_text("b.png\ta red square\n\n")
    assert data.read_captions(tmp_path) == [("b.png", "a red square")]
    (tmp_path / "metadata.jsonl").write_text(
        json.dumps({"file_name": "a_red-cat.png", "text": "a cat"}) + "\n"
    )
    loaded = data.load_captioned_folder(tmp_path, 16)
    assert loaded.captions == ["a cat"] and loaded.images.shape == (1, 16, 16, 3)
    np.testing.assert_array_equal(loaded.images[0, 8, 8], [0, 255, 0])


def test_resize_covers_then_center_crops(tmp_path):
    image = np.zeros((20, 40, 3), np.uint8)
    image[:, 10:30] = 255  # the middle half is white
    Image.fromarray(image).save(tmp_path / "wide.png")
    out = data.load_image(tmp_path / "wide.png", (10, 10))
    assert out.shape == (10, 10, 3)
    assert out.min() > 200  # only the white middle survives the crop


def test_bad_inputs_get_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.read_captions(tmp_path / "missing")
    with pytest.raises(ValueError, match="holds no images"):
        data.read_captions(tmp_path)
    write_image(tmp_path / "cat.png", (1, 2, 3))
    (tmp_path / "captions.txt").write_text("cat.png\ta cat\ndog.png\ta dog\n")
    with pytest.raises(ValueError, match="'dog.png'"):
        data.read_captions(tmp_path)
    (tmp_path / "captions.txt").write_text("cat.png a cat\n")
    with pytest.raises(ValueError, match="line 1 has no tab"):
        data.read_captions(tmp_path)
    (tmp_path / "captions.txt").unlink()
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "cat.png"}\n')
    with pytest.raises(ValueError, match="line 1 is not a JSON object"):
        data.read_captions(tmp_path)


def test_unreadable_files_are_named(tmp_path):
    write_image(tmp_path / "good.png", (1, 2, 3))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="'broken.png'"):
        data.load_captioned_folder(tmp_path, 16)
    loaded = data.load_captioned_folder(tmp_path, 16, skip_bad_files=True)
    assert loaded.captions == ["good"]


def test_batches_flip_shuffle_and_pair_prior_examples():
    images = np.zeros((5, 4, 4, 3), np.uint8)
    images[:, :, 0] = 255  # left column white
    examples = {"images": images, "token_ids": {"clip_l": np.arange(5)[:, None]}}
    prior = {"images": images[:2], "token_ids": {"clip_l": np.array([[10], [11]])}}
    batches = data.TrainingBatches(examples, 2, prior=prior, seed=0)
    assert len(batches) == 3
    seen = []
    for index in range(len(batches)):
        batch = batches[index]
        instance = batch["prior"] == 0
        assert instance.sum() == len(batch["prior"]) - 2  # two prior examples each
        np.testing.assert_array_equal(batch["prior"][~instance], [1, 1])
        assert set(batch["token_ids"]["clip_l"][~instance, 0]) <= {10, 11}
        seen += list(batch["token_ids"]["clip_l"][instance, 0])
        flipped = batch["images"][:, 0, -1, 0] == 1.0
        assert np.all(flipped | (batch["images"][:, 0, 0, 0] == 1.0))
    assert sorted(seen) == [0, 1, 2, 3, 4]  # every instance once per epoch
    # A batch is a function of (seed, epoch, step) alone.
    fresh = data.TrainingBatches(examples, 2, prior=prior, seed=0)
    np.testing.assert_array_equal(batches.batch(0, 1)["token_ids"]["clip_l"], fresh.batch(0, 1)["token_ids"]["clip_l"])
    # After a whole pass, the next batch 0 starts epoch 1, in another order.
    np.testing.assert_array_equal(batches[0]["token_ids"]["clip_l"], fresh.batch(1, 0)["token_ids"]["clip_l"])
    orders = [[tuple(fresh.batch(epoch, i)["token_ids"]["clip_l"][:, 0]) for i in range(3)] for epoch in (0, 1)]
    assert orders[0] != orders[1]


def test_cached_examples_match_the_encoders_and_cache_flips():
    model = tiny_setup().model
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    captions = data.CaptionedImages(images, ["a cat", "airplane", "a dog"], ["1", "2", "3"])
    cached = data.cache_examples(model, captions)  # padded to one batch of 8
    assert cached["latents"].shape == (3, 4, 4, 16)
    flipped = data.cache_examples(
        model, data.CaptionedImages(images[:, :, ::-1].copy(), captions.captions, captions.files),
        random_flip=False,
    )
    np.testing.assert_allclose(cached["flipped_latents"], flipped["latents"], atol=1e-5)
    np.testing.assert_allclose(cached["context"], flipped["context"], atol=1e-6)
    batch = data.TrainingBatches(cached, 3, shuffle=False, seed=1)[0]
    assert set(batch) == {"latents", "context", "pooled_projection", "prior"}
    with pytest.raises(ValueError, match="load them with image_size"):
        data.cache_examples(model, data.CaptionedImages(images[:, :16, :16].copy(), ["a"] * 3, ["1"] * 3))


def copies_of_one_image(count):
    image = np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    return data.CaptionedImages(np.repeat(image, count, axis=0), ["a cat"] * count, ["1"] * count)


@functools.cache
def sampling_tiny_model():
    """The tiny model with a VAE that samples its latents, as SD3's presets do."""
    tiny = tiny_setup().model
    config = tiny.backbone.get_config()
    config["vae"]["config"]["sampler_method"] = "sample"
    backbone = keras_hub.models.StableDiffusion3Backbone.from_config(config)
    backbone.set_weights(tiny.backbone.get_weights())
    return sd3.StableDiffusion3(backbone, tiny.preprocessor)


def test_sampled_latents_are_fresh_per_image_batch_and_call_and_follow_the_seed():
    model = sampling_tiny_model()
    copies = copies_of_one_image(9)

    def latents(seed):
        return data.cache_examples(model, copies, random_flip=False, seed=seed)["latents"]

    first = latents(3)  # two encoder calls (of 8 images each, padded)
    for i, j in itertools.combinations(range(9), 2):
        assert not np.allclose(first[i], first[j]), f"images {i} and {j} got the same noise"
    np.testing.assert_array_equal(latents(3), first)
    assert not np.allclose(latents(4), first)
    assert not np.allclose(latents(None), latents(None))
    with pytest.raises(ValueError, match="`seed` must be an int"):
        data.cache_examples(model, copies, seed="3")


def test_pokemon_blip_unreachable_says_what_to_do(tmp_path):
    with pytest.raises(ConnectionError, match="Offline, put captioned images in a folder"):
        data.load_pokemon_blip(32, cache_dir=str(tmp_path), url="http://127.0.0.1:9/pokemon_dataset.tar.gz")
