"""DreamBooth data: frozen-model class images, paired and flagged batches."""

import numpy as np
import pytest

from keras_diffusion import sd3
from keras_diffusion.sd3 import data, dreambooth
from tests.sd3_fixtures import NUM_STEPS, tiny_setup, torch_single_thread  # noqa: F401
from tests.test_sd3_data import copies_of_one_image, sampling_tiny_model
from tests.test_sd3_finetune import synthetic_set


def test_class_images_come_from_the_frozen_model_and_are_reused(tmp_path):
    model = tiny_setup().model
    prior = dreambooth.class_images(
        model, "a cat", 3, folder=tmp_path, num_steps=NUM_STEPS, seed=4, batch_size=2
    )
    assert prior.images.shape == (3, 32, 32, 3) and prior.captions == ["a cat"] * 3
    expected = sd3.text_to_image(model, ["a cat"] * 2, num_steps=NUM_STEPS, seed=4)
    np.testing.assert_array_equal(prior.images[:2], expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"class_{i:04d}.png" for i in range(3)]
    again = dreambooth.class_images(model, "a cat", 3, folder=tmp_path, num_steps=NUM_STEPS)
    np.testing.assert_array_equal(again.images, prior.images)  # read back, not regenerated


def test_topping_up_class_images_continues_the_seeds(tmp_path):
    model = tiny_setup().model
    settings = dict(num_steps=NUM_STEPS, seed=4, batch_size=2)
    dreambooth.class_images(model, "a cat", 4, folder=tmp_path, **settings)
    topped_up = dreambooth.class_images(model, "a cat", 8, folder=tmp_path, **settings)
    distinct = len({image.tobytes() for image in topped_up.images})
    assert distinct == 8, f"{8 - distinct} of the 8 images repeat another"
    uninterrupted = dreambooth.class_images(model, "a cat", 8, **settings)
    np.testing.assert_array_equal(topped_up.images, uninterrupted.images)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"class_{i:04d}.png" for i in range(8)]


def test_batches_pair_instance_prompt_with_flagged_class_examples():
    model = tiny_setup().model
    instance = synthetic_set(4)
    prior = data.CaptionedImages(instance.images[:2], ["a square"] * 2, ["c0", "c1"])
    batches = dreambooth.dreambooth_batches(
        model, instance, "a photo of sks square", prior, batch_size=2, cache=False
    )
    instance_ids = data.tokenize(model, ["a photo of sks square"])["clip_l"][0]
    class_ids = data.tokenize(model, ["a square"])["clip_l"][0]
    batch = batches[0]
    np.testing.assert_array_equal(batch["prior"], [0, 0, 1, 1])
    for row, flag in zip(batch["token_ids"]["clip_l"], batch["prior"]):
        np.testing.assert_array_equal(row, class_ids if flag else instance_ids)
    with pytest.raises(ValueError, match="instance_prompt"):
        dreambooth.dreambooth_batches(model, instance, "", prior)
    with pytest.raises(ValueError, match="num_images"):
        dreambooth.class_images(model, "a cat", 0)


def test_cached_batches_seed_the_vae_noise():
    model = sampling_tiny_model()
    copies = copies_of_one_image(2)
    expected = data.cache_examples(model, copies, seed=5)["latents"]
    batches = dreambooth.dreambooth_batches(model, copies, "a sks cat", copies, batch_size=2, seed=5)
    np.testing.assert_array_equal(batches.examples["latents"], expected)
    # The class images continue the stream: other noise than the instances'.
    assert not np.allclose(batches.prior["latents"], expected)
