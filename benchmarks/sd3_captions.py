"""Does fine-tuning teach SD3 its captions? Red and blue squares on the tiny preset.

    KERAS_BACKEND=tensorflow python -m benchmarks.sd3_captions      # ~5-10 min per backend

The tiny preset has random weights: it has never learned to read a caption,
and an adapter or a new token has nothing to steer. So a base model comes
first: the tiny preset fully fine-tuned on squares of six other colours
(green, yellow, cyan, magenta, white, black), captioned by colour; the
script checks that it prefers its own captions (green against cyan). Then,
from that base, it trains on flat red and flat blue squares captioned by
their colour (colours the base never saw) with each fine-tuning method:
full fine-tuning, LoRA (rank 8 on the blocks' attention), DreamBooth (the
same LoRA with prior preservation on "a square" images from the frozen
base) and textual inversion (two placeholders, `<red>` and `<blue>`, the
only trained weights). Before and
after training it measures two things:

- the flow-matching loss of the red images under the red caption and under
  the blue one (and of the blue images under both), with the same draws of
  sigma (the trainer's density) and noise: a model that learned the
  captions has the lower loss under the right caption;
- the latents generated for each caption (no guidance, fixed seeds): their
  mean distance to the mean encoded training latent of that caption's
  colour against the other colour's.

It writes `benchmarks/results/sd3_captions/<backend>.{json,md}`.

A rerun of an interrupted command resumes per finished stage (the base
model, then each method): each stage's result is saved when it ends, to
`<out>/<backend>.partial.json`, with the base model's preset in
`<out>/<backend>.base_preset/`, and read back instead of rerun; a stage cut
short is rerun from its start. Both are deleted once the results are
written.
"""

import argparse
import os
import shutil
import sys

import numpy as np

METHODS = ("full", "lora", "dreambooth", "textual-inversion")
COLOURS = ("red", "blue")
# Per method: (learning rate, epochs over 8 images in batches of 4).
SETTINGS = {
    "full": (1e-3, 30),
    "lora": (1e-2, 60),
    "dreambooth": (1e-2, 60),
    "textual-inversion": (1e-1, 150),
}
LORA_RANK = 8
BASE_EPOCHS = 100


COLOUR_VALUES = {
    "red": (220, 0, 0),
    "blue": (0, 0, 220),
    # The base model's colours: it learns that captions name colours, but
    # never sees red or blue.
    "green": (0, 200, 0),
    "yellow": (220, 220, 0),
    "cyan": (0, 220, 220),
    "magenta": (220, 0, 220),
    "white": (230, 230, 230),
    "black": (10, 10, 10),
}
BASE_COLOURS = ("green", "yellow", "cyan", "magenta", "white", "black")


def colour_squares(colours=COLOURS, per_colour=4, size=32, seed=0):
    """Flat squares of `colours` with a little noise, captioned "a <colour> square"."""
    from keras_diffusion.sd3 import data

    rng = np.random.default_rng(seed)
    images, captions = [], []
    for colour in colours:
        flat = np.broadcast_to(np.array(COLOUR_VALUES[colour]), (per_colour, size, size, 3))
        images.append(np.clip(flat + rng.integers(0, 30, flat.shape), 0, 255).astype(np.uint8))
        captions += [f"a {colour} square"] * per_colour
    images = np.concatenate(images)
    return data.CaptionedImages(images, captions, [f"{i}.png" for i in range(len(images))])


def base_model(preset, folder, seed=0, epochs=BASE_EPOCHS):
    """The tiny preset fully fine-tuned on BASE_COLOURS, saved as a preset.

    The `tiny` preset's weights are random: its MMDiT has never learned to
    read a caption, so an adapter or a new token has nothing to steer
    (textual inversion and LoRA assume a pretrained model). This short
    stage stands in for pretraining.
    """
    import keras

    from keras_diffusion import sd3
    from keras_diffusion.files import replace_folder_atomically
    from keras_diffusion.sd3 import data
    from keras_diffusion.sd3.finetune import FlowMatchingTrainer

    model = sd3.from_preset(preset)
    squares = colour_squares(BASE_COLOURS, seed=seed + 1)
    cached = data.cache_examples(model, squares, batch_size=8, random_flip=False, seed=seed)
    trainer = FlowMatchingTrainer(model.backbone, seed=seed)
    trainer.compile(keras.optimizers.AdamW(1e-3, weight_decay=0.0))
    history = trainer.fit(data.TrainingBatches(cached, 8, random_flip=False, seed=seed), epochs=epochs, verbose=0)
    replace_folder_atomically(folder, model.save_to_preset)
    # Does the base read its own captions? The same two measures, green vs cyan.
    own = colour_squares(("green", "cyan"), size=model.image_size[0], seed=seed + 1)
    latents = data.cache_examples(model, own, batch_size=8, random_flip=False, seed=seed)["latents"]
    check = scores(
        model,
        {"red": latents[:4], "blue": latents[4:]},
        {"red": "a green square", "blue": "a cyan square"},
    )
    return {
        "loss_curve": [round(v, 4) for v in history.history["loss"]],
        "green_vs_cyan": {"losses_ok": check["losses_ok"], "latents_ok": check["latents_ok"]},
    }


def caption_loss(model, latents, prompt, seed=0, repeats=16):
    """The flow-matching loss of `latents` under `prompt`, as training draws it.

    Sigmas come from the trainer's default density (logit-normal `t`, the
    backbone's time shift), `repeats` draws per latent, with fixed noise:
    the same draws for every prompt, so that differences are paired.
    """
    from keras import ops

    from keras_diffusion.processes import RectifiedFlow
    from keras_diffusion.sd3 import data
    from keras_diffusion.sd3.finetune import encode_text

    backbone = model.backbone
    context, pooled = encode_text(backbone, data.tokenize(model, [prompt] * len(latents)))
    rng = np.random.default_rng(seed)
    errors = []
    for _ in range(repeats):
        t = 1 / (1 + np.exp(-rng.standard_normal(len(latents))))
        sigma = RectifiedFlow(shift=backbone.shift).shift_time(t).astype("float32").reshape(-1, 1, 1, 1)
        noise = rng.standard_normal(latents.shape).astype("float32")
        noisy = (1 - sigma) * latents + sigma * noise
        timestep = sigma.reshape(-1, 1) * backbone.num_train_timesteps
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
    first, last = (squares.captions.index(f"a {c} square") for c in COLOURS)
    prompts = {colour: f"a {colour} square" for colour in COLOURS}
    trainable_layers = ()
    if method == "textual-inversion":
        inversion = textual_inversion.add_placeholder_token(model, ["<red>", "<blue>"], ["r", "b"])
        trainable_layers = inversion.layers
        prompts = {colour: f"a <{colour}> square" for colour in COLOURS}
        squares.captions = [f"a <{c.split()[1]}> square" for c in squares.captions]
    # Textual inversion trains the text encoders' input: keep the token ids.
    cached = data.cache_examples(
        model, squares, batch_size=8, random_flip=False, seed=seed,
        cache_text=method != "textual-inversion",
    )
    latents_by_colour = {"red": cached["latents"][first:last], "blue": cached["latents"][last:]}
    before = scores(model, latents_by_colour, prompts)
    prior = None
    if method == "dreambooth":
        prior = dreambooth.class_images(model, "a square", 4, num_steps=4, seed=seed)
    if method in ("lora", "dreambooth"):
        lora.enable_lora(model, rank=LORA_RANK, seed=seed)
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


def markdown(results, backend, base):
    """One table row per method and stage."""
    curve, own = base["loss_curve"], base["green_vs_cyan"]
    lines = [
        f"Base model ({len(curve)} epochs on {', '.join(BASE_COLOURS)} squares): loss {curve[0]:.3f} -> "
        f"{curve[-1]:.3f}; on green vs cyan, losses prefer own caption: {'yes' if own['losses_ok'] else 'no'}, "
        f"latents nearer own colour: {'yes' if own['latents_ok'] else 'no'}.",
        "",
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


def run_one(method, preset, args):
    result = run_method(method, preset, seed=args.seed, epochs=args.epochs)
    after = result["after"]
    print(f"{method}: losses prefer own caption: {after['losses_ok']}, "
          f"latents nearer own colour: {after['latents_ok']}", flush=True)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--epochs", type=int, default=None, help="override every method's epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join("benchmarks", "results", "sd3_captions"))
    args = parser.parse_args(argv)

    import keras

    from benchmarks.partial import PartialResults
    from keras_diffusion import sd3
    from keras_diffusion.files import replace_atomically, write_json

    os.makedirs(args.out, exist_ok=True)

    backend = keras.backend.backend()
    stages = PartialResults(
        os.path.join(args.out, f"{backend}.partial.json"),
        {"epochs": args.epochs, "seed": args.seed, "backend": backend},
    )
    preset = os.path.join(args.out, f"{backend}.base_preset")
    base = stages.stage(
        "base", lambda: base_model(sd3.tiny_preset_dir(), preset, seed=args.seed), outputs=[preset]
    )
    curve = base["loss_curve"]
    print(f"base model: loss {curve[0]} -> {curve[-1]}; own captions: {base['green_vs_cyan']}", flush=True)
    results = [stages.stage(method, lambda method=method: run_one(method, preset, args)) for method in args.methods]
    write_json(os.path.join(args.out, f"{backend}.json"), {"base": base, "methods": results})
    table = markdown(results, backend, base)
    replace_atomically(os.path.join(args.out, f"{backend}.md"), lambda path: open(path, "w").write(table))
    print(table)
    stages.delete()
    shutil.rmtree(preset)
    return 0


if __name__ == "__main__":
    sys.exit(main())
