"""DreamBooth data: frozen-model class images, paired and flagged batches."""

import numpy as np
import pytest

from keras_diffusion import sd3
from keras_diffusion.sd3 import data, dreambooth
from tests.sd3_fixtures import NUM_STEPS, tiny_setup, torch_single_thread  # noqa: F401
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
