"""Flow-matching fine-tuning of the tiny SD3: draws, loss, training, resume."""

import functools
import math

import keras
import numpy as np
import pytest
from keras import ops

from keras_diffusion import sd3
from keras_diffusion.sd3 import data
from keras_diffusion.sd3.finetune import FlowMatchingTrainer, count_params, encode_text
from tests.resume_check import assert_same_run
from tests.sd3_fixtures import tiny_setup, torch_single_thread  # noqa: F401


def fresh_model():
    """A private copy of the tiny model: training changes weights in place."""
    return sd3.from_preset(tiny_setup().preset_dir)


def synthetic_set(count=8):
    """Two kinds of images with their own captions: flat red and flat blue."""
    rng = np.random.default_rng(0)
    images = np.zeros((count, 32, 32, 3), np.uint8)
    images[: count // 2, ..., 0] = 220
    images[count // 2 :, ..., 2] = 220
    images = np.clip(images + rng.integers(0, 30, images.shape), 0, 255).astype(np.uint8)
    captions = ["a red square"] * (count // 2) + ["a blue square"] * (count // 2)
    return data.CaptionedImages(images, captions, [f"{i}.png" for i in range(count)])


@functools.cache
def cached_set():
    """The synthetic set encoded once by the shared tiny model (not trained)."""
    return data.cache_examples(tiny_setup().model, synthetic_set(8), batch_size=8)


def test_each_scheme_draws_times_by_its_density():
    """The schemes' densities are the process's time sampling, with the trainer's parameters."""
    backbone = tiny_setup().model.backbone
    n = 20000

    def draws(seed, **options):
        process = FlowMatchingTrainer(backbone, shift=1.0, **options).process
        return ops.convert_to_numpy(process.sample_t(n, keras.random.SeedGenerator(seed)))

    t = draws(1, weighting_scheme="logit_normal", logit_mean=0.5, logit_std=0.8)
    logits = np.log(t / (1 - t))
    assert abs(logits.mean() - 0.5) < 0.03 and abs(logits.std() - 0.8) < 0.03
    t = draws(2, weighting_scheme="mode", mode_scale=1.29)
    # Moments against the density's analytic transform of U(0, 1).
    u_grid = (np.arange(200000) + 0.5) / 200000
    mode = 1 - u_grid - 1.29 * (np.cos(np.pi * u_grid / 2) ** 2 - 1 + u_grid)
    assert abs(t.mean() - mode.mean()) < 0.01
    assert abs((t**2).mean() - (mode**2).mean()) < 0.01
    assert (t**2).mean() < 1 / 3 - 0.02  # more mass in the middle than U(0, 1)
    for seed, scheme in enumerate(("uniform", "sigma_sqrt", "cosmap")):
        t = draws(seed, weighting_scheme=scheme)
        assert 0 <= t.min() and t.max() <= 1 and abs(t.mean() - 0.5) < 0.01
        assert abs((t**2).mean() - 1 / 3) < 0.01
    trainer = FlowMatchingTrainer(backbone)
    assert trainer.process.shift == backbone.shift == 3.0
    assert trainer.prediction_type == "velocity"


def test_call_noises_with_the_documented_formula():
    """target = eps - x, noisy = (1 - sigma) x + sigma eps, at timestep 1000 sigma."""
    model = tiny_setup().model
    trainer = FlowMatchingTrainer(model.backbone, seed=5, weighting_scheme="uniform", shift=2.0)
    cached = cached_set()
    inputs = {name: cached[name][:2] for name in ("latents", "context", "pooled_projection")}
    outputs = trainer(inputs)
    replay = keras.random.SeedGenerator(5)
    u = ops.convert_to_numpy(keras.random.uniform((2,), seed=replay))
    sigma = 2.0 * u / (1 + u)  # SD3's shift of uniform times
    noise = ops.convert_to_numpy(keras.random.normal((2, 4, 4, 16), seed=replay))
    latents = inputs["latents"]
    np.testing.assert_allclose(ops.convert_to_numpy(outputs["target"]), noise - latents, atol=1e-6)
    s = sigma[:, None, None, None]
    expected = model.backbone.diffuser(
        {
            "latent": (1 - s) * latents + s * noise,
            "context": inputs["context"],
            "pooled_projection": inputs["pooled_projection"],
            "timestep": (sigma * 1000)[:, None],
        }
    )
    np.testing.assert_allclose(
        ops.convert_to_numpy(outputs["prediction"]), ops.convert_to_numpy(expected), atol=1e-5
    )


def test_raw_inputs_are_encoded_like_the_cache():
    """Images and token ids go through the frozen VAE and text encoders in call()."""
    model = tiny_setup().model
    raw = data.raw_examples(model, synthetic_set(8))
    cached = cached_set()
    from_raw = FlowMatchingTrainer(model.backbone, seed=9)(
        {"images": raw["images"][:2].astype("float32") / 127.5 - 1,
         "token_ids": {name: ids[:2] for name, ids in raw["token_ids"].items()}}
    )
    from_cache = FlowMatchingTrainer(model.backbone, seed=9)(
        {name: cached[name][:2] for name in ("latents", "context", "pooled_projection")}
    )
    for name in ("target", "prediction"):
        np.testing.assert_allclose(
            ops.convert_to_numpy(from_raw[name]), ops.convert_to_numpy(from_cache[name]), atol=1e-4
        )


def _check_encode_text_matches_keras_hub(model):
    token_ids = model.preprocessor.generate_preprocess(["a cat", "airplane"])
    context, pooled = encode_text(model.backbone, token_ids)
    expected = model.backbone.encode_text_step(token_ids, token_ids)
    np.testing.assert_allclose(ops.convert_to_numpy(context), ops.convert_to_numpy(expected[0]), atol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(pooled), ops.convert_to_numpy(expected[2]), atol=1e-6)


def test_encode_text_matches_keras_hub():
    _check_encode_text_matches_keras_hub(tiny_setup().model)


@pytest.mark.slow  # builds a tiny SD3 with a T5 encoder
@pytest.mark.skipif(
    keras.backend.backend() == "torch", reason="KerasHub's T5 encoder cannot be built on torch"
)
def test_encode_text_with_t5_matches_keras_hub():
    _check_encode_text_matches_keras_hub(sd3.build_tiny(32, include_t5=True))


def test_only_the_mmdit_trains_and_bad_options_fail():
    model = fresh_model()
    trainer = FlowMatchingTrainer(model.backbone, seed=0)
    trainable = {id(v) for v in trainer.trainable_variables}
    assert trainable == {id(v) for v in model.backbone.diffuser.weights}
    assert count_params(trainer.trainable_variables) == model.backbone.diffuser.count_params()
    with pytest.raises(ValueError, match="Nothing to train"):
        FlowMatchingTrainer(model.backbone, train_diffuser=False)
    with pytest.raises(ValueError, match="weighting_scheme"):
        FlowMatchingTrainer(model.backbone, weighting_scheme="snr")
    with pytest.raises(ValueError, match="null_caption"):
        FlowMatchingTrainer(model.backbone, caption_dropout=0.1)
    with pytest.raises(ValueError, match="caption_dropout"):
        FlowMatchingTrainer(model.backbone, caption_dropout=1.0, null_caption={})
    with pytest.raises(ValueError, match="shift"):
        FlowMatchingTrainer(model.backbone, shift=0.0)
    with pytest.raises(ValueError, match="own loss"):
        trainer.compile(loss="mse")


def test_prior_term_enters_the_loss_with_its_weight():
    model = tiny_setup().model
    batch = {name: value[:4] for name, value in cached_set().items() if name != "flipped_latents"}
    batch["prior"] = np.array([0, 0, 1, 1], "float32")
    trainer = FlowMatchingTrainer(model.backbone, seed=3)
    y_pred = trainer(batch)
    per_example = np.mean(
        (ops.convert_to_numpy(y_pred["prediction"]) - ops.convert_to_numpy(y_pred["target"])) ** 2,
        axis=(1, 2, 3),
    )
    instance, prior = per_example[:2].mean(), per_example[2:].mean()
    losses = {}
    for weight in (0.0, 1.0, 2.5):
        trainer.prior_loss_weight = weight
        losses[weight] = float(ops.convert_to_numpy(trainer.compute_loss(x=batch, y_pred=y_pred)))
        np.testing.assert_allclose(losses[weight], instance + weight * prior, rtol=1e-5)
    assert losses[0.0] == pytest.approx(instance, rel=1e-5)  # lambda = 0: no prior term
    assert losses[2.5] > losses[1.0] > losses[0.0]


def test_loss_falls_and_an_interrupted_run_resumes_exactly(tmp_path):
    """Fine-tuning killed inside an epoch and resumed ends where the uninterrupted run does.

    Everything random is drawn: the order and flips of `TrainingBatches`, the
    trainer's times, noise and caption dropout, and EMA is on. 8 examples in
    batches of 4 for 4 epochs, a checkpoint every 3 steps: the run killed
    after step 4 resumes from step 3 (epoch 2, step 1). Weights, optimizer,
    generators and every epoch's loss are compared exactly. LoRA's own
    resume is checked in tests/test_resume.py (test_a_lora_adapter_resumes_exactly)
    and through the `finetune` command in tests/test_sd3_finetune_command.py.
    """
    model = fresh_model()
    trainer = FlowMatchingTrainer(
        model.backbone, seed=0, caption_dropout=0.25, null_caption=data.tokenize(model, [""])
    )
    trainer.compile(keras.optimizers.AdamW(2e-3, use_ema=True, ema_momentum=0.9))
    batches = data.TrainingBatches(cached_set(), 4, seed=0)
    backup, reference = assert_same_run(trainer, batches, tmp_path, stops=(4,), epochs=4, save_freq=3)
    assert backup.resumes == [{"epoch": 2, "step": 1}]
    losses = [entry["loss"] for entry in reference.log]
    assert losses[-1] < 0.9 * losses[0], losses


@pytest.mark.slow  # ~30 s on JAX: one more compiled train step
def test_options_from_keras_optimizers_train():
    """Gradient accumulation, clipping and EMA are the optimizer's."""
    model = fresh_model()
    before = [ops.convert_to_numpy(v) for v in model.backbone.diffuser.weights]
    trainer = FlowMatchingTrainer(model.backbone, seed=0, weighting_scheme="cosmap")
    optimizer = keras.optimizers.AdamW(
        1e-3, gradient_accumulation_steps=2, global_clipnorm=1.0, use_ema=True, ema_momentum=0.5
    )
    trainer.compile(optimizer)
    history = trainer.fit(data.TrainingBatches(cached_set(), 4, seed=0), epochs=2, verbose=0)
    assert all(math.isfinite(loss) for loss in history.history["loss"])
    assert int(ops.convert_to_numpy(optimizer.iterations)) == 2  # 4 batches, 2 accumulated
    after = [ops.convert_to_numpy(v) for v in model.backbone.diffuser.weights]
    assert any(not np.array_equal(a, b) for a, b in zip(before, after))


def test_each_scheme_is_a_density_or_a_weight_never_both():
    """diffusers' rule: logit_normal/mode weight by 1, sigma_sqrt/cosmap draw t uniformly."""
    backbone = tiny_setup().model.backbone
    sigma = np.linspace(0.0, 1.0, 11).astype("float32")
    weights = {
        scheme: ops.convert_to_numpy(
            FlowMatchingTrainer(backbone, weighting_scheme=scheme, shift=3.0)._loss_weight(1 - sigma, sigma)
        )
        for scheme in ("logit_normal", "mode", "uniform", "sigma_sqrt", "cosmap")
    }
    for scheme in ("logit_normal", "mode", "uniform"):
        np.testing.assert_array_equal(weights[scheme], np.ones(11))
    np.testing.assert_allclose(weights["cosmap"], 2 / (np.pi * (1 - 2 * sigma + 2 * sigma**2)), rtol=1e-5)
    # sigma_sqrt: 1 / sigma^2, bounded where diffusers' 1000-entry table ends.
    smallest = 3.0 * 0.001 / (1 + 2.0 * 0.001)
    np.testing.assert_allclose(weights["sigma_sqrt"][1:], 1 / sigma[1:] ** 2, rtol=1e-5)
    np.testing.assert_allclose(weights["sigma_sqrt"][0], 1 / smallest**2, rtol=1e-4)
    # Unbounded, the mean weight of continuous draws diverges (1e6 draws gave
    # ~1e5, carried by 0.1% of them); bounded, it is about the table's.
    trainer = FlowMatchingTrainer(backbone, weighting_scheme="sigma_sqrt", shift=3.0)
    t = trainer.process.sample_t(200000, keras.random.SeedGenerator(5))  # shifted uniform times
    mean_weight = float(np.mean(ops.convert_to_numpy(trainer._loss_weight(1 - t, t))))
    table = 3.0 * np.arange(1, 1001) / 1000 / (1 + 2.0 * np.arange(1, 1001) / 1000)
    assert 0.8 < mean_weight / np.mean(1 / table**2) < 1.4


def test_preconditioned_outputs_are_the_clean_latents_error():
    """diffusers' loss on x_t - t v_hat against x: the velocity loss weighted by t^2."""
    model = tiny_setup().model
    batch = {name: value[:4] for name, value in cached_set().items() if name != "flipped_latents"}
    plain = FlowMatchingTrainer(model.backbone, seed=3)(batch)
    trainer = FlowMatchingTrainer(model.backbone, seed=3, precondition_outputs=True)
    preconditioned = trainer(batch)
    sigma = ops.convert_to_numpy(preconditioned["sigma"])
    np.testing.assert_allclose(ops.convert_to_numpy(preconditioned["weight"]), sigma**2, rtol=1e-6)
    for name in ("prediction", "target", "sigma"):  # the same draws
        np.testing.assert_array_equal(ops.convert_to_numpy(plain[name]), ops.convert_to_numpy(preconditioned[name]))
    latents, s = batch["latents"], sigma[:, None, None, None]
    v, v_hat = ops.convert_to_numpy(preconditioned["target"]), ops.convert_to_numpy(preconditioned["prediction"])
    noisy = latents + s * v  # (1 - t) x + t eps
    expected = np.mean((noisy - s * v_hat - latents) ** 2)
    loss = float(ops.convert_to_numpy(trainer.compute_loss(x=batch, y_pred=preconditioned)))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_caption_dropout_trains_some_examples_on_the_empty_caption():
    model = tiny_setup().model
    batch = {name: value for name, value in cached_set().items() if name != "flipped_latents"}
    null_context, null_pooled = encode_text(model.backbone, data.tokenize(model, [""]))
    trainer = FlowMatchingTrainer(
        model.backbone, seed=0, caption_dropout=0.5, null_caption=data.tokenize(model, [""])
    )
    # What call(training=True) draws: drop where uniform < caption_dropout.
    drop = keras.random.uniform((8,), seed=keras.random.SeedGenerator(0)) < trainer.label_dropout
    condition = trainer._drop_condition(
        {name: ops.convert_to_tensor(batch[name]) for name in ("context", "pooled_projection")}, drop
    )
    context, pooled = (ops.convert_to_numpy(condition[name]) for name in ("context", "pooled_projection"))
    dropped = np.all(np.isclose(pooled, ops.convert_to_numpy(null_pooled)), axis=1)
    kept = np.all(pooled == batch["pooled_projection"], axis=1)
    assert np.all(dropped | kept) and 0 < dropped.sum() < 8
    np.testing.assert_allclose(context[dropped], np.repeat(ops.convert_to_numpy(null_context), dropped.sum(), 0), atol=1e-5)


def test_raw_uint8_images_are_refused_before_training():
    model = tiny_setup().model
    trainer = FlowMatchingTrainer(model.backbone, seed=0)
    trainer.compile()
    raw = data.raw_examples(model, synthetic_set(2))
    with pytest.raises(ValueError, match="TrainingBatches"):
        trainer.fit(raw, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        trainer.fit({**raw, "images": raw["images"].astype("float32")}, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="TrainingBatches"):
        trainer({**raw, "images": ops.convert_to_tensor(raw["images"])})
