"""Does fine-tuning teach SD3 its captions? Red and blue squares on the tiny preset.

    KERAS_BACKEND=tensorflow python -m benchmarks.sd3_captions      # ~5-10 min per backend

Trains the tiny SD3 (random weights, so it knows no colours) on flat red and
flat blue squares captioned by their colour, with each fine-tuning method:
full fine-tuning, LoRA (rank 16, attention and MLPs), DreamBooth (the same
LoRA with prior preservation on "a square" images from the frozen model) and textual inversion (two
placeholders, `<red>` and `<blue>`, the only trained weights). Before and
after training it measures two things:

- the flow-matching loss of the red images under the red caption and under
  the blue one (and of the blue images under both), with the same fixed
  sigmas and noise: a model that learned the captions has the lower loss
  under the right caption;
- the latents generated for each caption (no guidance, fixed seeds): their
  mean distance to the mean encoded training latent of that caption's
  colour against the other colour's.

It writes `benchmarks/results/sd3_captions/<backend>.{json,md}`.
"""

import argparse
import os
import sys

import numpy as np

METHODS = ("full", "lora", "dreambooth", "textual-inversion")
COLOURS = ("red", "blue")
# Per method: (learning rate, epochs over 8 images in batches of 4).
SETTINGS = {
    "full": (1e-3, 30),
    "lora": (3e-3, 100),
    "dreambooth": (3e-3, 100),
    "textual-inversion": (5e-2, 30),
}
# LoRA (and DreamBooth's LoRA) on the blocks' attention and MLPs: at rank 4 on
# attention alone the tiny model learned the shared square, not the colours.
LORA_RANK = 16


def colour_squares(count=8, size=32, seed=0):
    """Flat red and flat blue squares with a little noise, captioned by colour."""
    from keras_diffusion.sd3 import data

    rng = np.random.default_rng(seed)
    images = np.zeros((count, size, size, 3), np.uint8)
    images[: count // 2, ..., 0] = 220
    images[count // 2 :, ..., 2] = 220
    images = np.clip(images + rng.integers(0, 30, images.shape), 0, 255).astype(np.uint8)
    captions = ["a red square"] * (count // 2) + ["a blue square"] * (count // 2)
    return data.CaptionedImages(images, captions, [f"{i}.png" for i in range(count)])


def caption_loss(model, latents, prompt, seed=0, sigmas=(0.1, 0.3, 0.5, 0.7, 0.9) * 4):
    """Velocity MSE of `latents` under `prompt`, over fixed sigmas and noise
    (the same draws for every prompt, so that differences are paired)."""
    from keras import ops

    from keras_diffusion.sd3 import data
    from keras_diffusion.sd3.finetune import encode_text

    backbone = model.backbone
    context, pooled = encode_text(backbone, data.tokenize(model, [prompt] * len(latents)))
    rng = np.random.default_rng(seed)
    errors = []
    for sigma in sigmas:
        noise = rng.standard_normal(latents.shape).astype("float32")
        noisy = (1 - sigma) * latents + sigma * noise
        timestep = np.full((len(latents), 1), sigma * backbone.num_train_timesteps, "float32")
        inputs = {"latent": noisy, "context": context, "pooled_projection": pooled, "timestep": timestep}
        velocity = backbone.diffuser({k: ops.convert_to_tensor(v) for k, v in inputs.items()}, training=False)
        errors.append(np.mean((ops.convert_to_numpy(velocity) - (noise - latents)) ** 2))
    return float(np.mean(errors))


def generated_latents(model, prompt, count=4, num_steps=8, seed=0):
    """Latents that SD3's own sampler makes for `prompt` (no guidance)."""
    import keras

    from keras_diffusion.sd3 import walks

    embeddings = walks.encode_prompts(model, [prompt] * count)
    noise = keras.random.normal((count, *model.latent_shape), seed=seed)
    latents = model.frame_renderer(noise, embeddings, num_steps, 1.0, decode=False)
    return keras.ops.convert_to_numpy(latents)


def scores(model, latents_by_colour, prompts):
    """The two measures for `prompts = {"red": ..., "blue": ...}`.

    Returns:
        dict: `loss[image colour][caption colour]`, `distance[caption
        colour][latent colour]`, and `losses_ok` / `latents_ok` (whether
        every image/caption prefers its own colour).
    """
    loss = {
        image: {caption: caption_loss(model, latents_by_colour[image], prompts[caption]) for caption in COLOURS}
        for image in COLOURS
    }
    means = {colour: latents_by_colour[colour].mean(axis=0) for colour in COLOURS}
    distance = {}
    for caption in COLOURS:
        made = generated_latents(model, prompts[caption])
        distance[caption] = {
            colour: float(np.mean(np.sqrt(((made - means[colour]) ** 2).sum(axis=(1, 2, 3)))))
            for colour in COLOURS
        }
    other = {"red": "blue", "blue": "red"}
    return {
        "loss": loss,
        "distance": distance,
        "losses_ok": all(loss[c][c] < loss[c][other[c]] for c in COLOURS),
        "latents_ok": all(distance[c][c] < distance[c][other[c]] for c in COLOURS),
    }


def run_method(method, preset, seed=0, epochs=None):
    """Trains a fresh tiny model with `method`; returns scores before and after."""
    import keras

    from keras_diffusion import sd3
    from keras_diffusion.sd3 import data, dreambooth, lora, textual_inversion
    from keras_diffusion.sd3.finetune import FlowMatchingTrainer

    learning_rate, default_epochs = SETTINGS[method]
    model = sd3.from_preset(preset)
    squares = colour_squares(size=model.image_size[0], seed=seed)
    prompts = {colour: f"a {colour} square" for colour in COLOURS}
    trainable_layers = ()
    if method == "textual-inversion":
        inversion = textual_inversion.add_placeholder_token(model, ["<red>", "<blue>"], ["r", "b"])
        trainable_layers = inversion.layers
        prompts = {colour: f"a <{colour}> square" for colour in COLOURS}
        squares.captions = [f"a <{c.split()[1]}> square" for c in squares.captions]
    cached = data.cache_examples(model, squares, batch_size=8, random_flip=False, seed=seed)
    latents_by_colour = {"red": cached["latents"][:4], "blue": cached["latents"][4:]}
    before = scores(model, latents_by_colour, prompts)
    prior = None
    if method == "dreambooth":
        prior = dreambooth.class_images(model, "a square", 4, num_steps=4, seed=seed)
    if method in ("lora", "dreambooth"):
        lora.enable_lora(model, rank=LORA_RANK, include_mlp=True, seed=seed)
    if method == "dreambooth":
        batches = dreambooth.dreambooth_batches(
            model, squares, None, prior, batch_size=4, random_flip=False, seed=seed
        )
    else:
        batches = data.TrainingBatches(cached, 4, random_flip=False, seed=seed)
    trainer = FlowMatchingTrainer(
        model.backbone,
        train_diffuser=method != "textual-inversion",
        trainable_layers=trainable_layers,
        seed=seed,
    )
    trainer.compile(keras.optimizers.AdamW(learning_rate, weight_decay=0.0))
    history = trainer.fit(batches, epochs=epochs or default_epochs, verbose=0)
    after = scores(model, latents_by_colour, prompts)
    return {
        "method": method,
        "learning_rate": learning_rate,
        "epochs": epochs or default_epochs,
        "loss_curve": [round(v, 4) for v in history.history["loss"]],
        "before": before,
        "after": after,
    }


def markdown(results, backend):
    """One table row per method and stage."""
    lines = [
        f"Backend: {backend}. Loss: flow-matching MSE of the red (blue) images under the red / blue caption. "
        "Distance: mean L2 from latents generated for the red (blue) caption to the mean red / blue training latent.",
        "",
        "| method | stage | red imgs: loss red / blue cap | blue imgs: loss blue / red cap | red cap: dist to red / blue | blue cap: dist to blue / red | losses prefer own caption | latents nearer own colour |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        for stage in ("before", "after"):
            s = result[stage]
            loss, distance = s["loss"], s["distance"]
            lines.append(
                f"| {result['method']} | {stage} "
                f"| {loss['red']['red']:.4f} / {loss['red']['blue']:.4f} "
                f"| {loss['blue']['blue']:.4f} / {loss['blue']['red']:.4f} "
                f"| {distance['red']['red']:.2f} / {distance['red']['blue']:.2f} "
                f"| {distance['blue']['blue']:.2f} / {distance['blue']['red']:.2f} "
                f"| {'yes' if s['losses_ok'] else 'no'} | {'yes' if s['latents_ok'] else 'no'} |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--epochs", type=int, default=None, help="override every method's epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join("benchmarks", "results", "sd3_captions"))
    args = parser.parse_args(argv)

    import keras

    from keras_diffusion import sd3
    from keras_diffusion.files import replace_atomically, write_json

    backend = keras.backend.backend()
    preset = sd3.tiny_preset_dir()
    results = []
    for method in args.methods:
        results.append(run_method(method, preset, seed=args.seed, epochs=args.epochs))
        after = results[-1]["after"]
        print(f"{method}: losses prefer own caption: {after['losses_ok']}, "
              f"latents nearer own colour: {after['latents_ok']}", flush=True)
    os.makedirs(args.out, exist_ok=True)
    write_json(os.path.join(args.out, f"{backend}.json"), results)
    table = markdown(results, backend)
    replace_atomically(os.path.join(args.out, f"{backend}.md"), lambda path: open(path, "w").write(table))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
