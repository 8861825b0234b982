"""keras.io's "Fine-tuning Stable Diffusion", on Stable Diffusion 3 and any backend.

The keras.io example (Sayak Paul and Chansung Park, 2022) fine-tunes KerasCV's
Stable Diffusion 1.4 on the Pokemon BLIP captions: 833 image-caption pairs at
256x256, frozen VAE and text encoder, text embeddings computed once, center
crop and random flip, AdamW (learning rate 1e-5, weight decay 1e-2, epsilon
1e-8), gradient-norm clip 1.0, EMA 0.9999, mixed precision, batch 4; then it
renders "Yoda", "Hello Kitty" and "A pokemon with red eyes" with the
fine-tuned model. This script does the same on SD3 with the rectified-flow
loss (`keras_diffusion.sd3.FlowMatchingTrainer`), writing sample grids from
the same prompts and seeds before and after training.

    # keras.io's setting (needs a GPU, Kaggle access to the SD3 weights and
    # network access to huggingface.co for the data):
    KERAS_BACKEND=jax python examples/sd3_finetune.py --out runs/sd3_pokemon

    # Offline, to see it run: the random `tiny` SD3 on a local folder.
    python examples/sd3_finetune.py --preset tiny --data my_images/ \\
        --resolution 32 --epochs 2 --steps 4 --out runs/sd3_tiny

`--lora-rank 4` trains LoRA adapters instead of the whole MMDiT.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

KERAS_IO_PROMPTS = ["Yoda", "Hello Kitty", "A pokemon with red eyes"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--preset", default="stable_diffusion_3_medium", help="SD3 preset or folder")
    parser.add_argument("--data", default="pokemon", help="'pokemon' (download) or a captioned folder")
    parser.add_argument("--resolution", type=int, default=256, help="training image size")
    parser.add_argument("--epochs", type=int, default=1, help="keras.io trains 1 epoch in the text")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=1e-5)
    parser.add_argument("--ema", type=float, default=0.9999)
    parser.add_argument(
        "--mixed-precision", choices=("no", "bfloat16", "float16"), default="bfloat16",
        help="keras.io uses float16; bfloat16 needs no loss scaling",
    )
    parser.add_argument("--lora-rank", type=int, default=0, help="> 0: LoRA instead of full")
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--steps", type=int, default=28, help="sampling steps for the grids")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="output folder")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import keras

    from keras_diffusion import sd3
    from keras_diffusion.files import write_json
    from keras_diffusion.sd3 import data, lora
    from keras_diffusion.sd3.finetune import FlowMatchingTrainer, count_params

    dtype = None if args.mixed_precision == "no" else f"mixed_{args.mixed_precision}"
    # The library's errors say what went wrong and what to do (no network:
    # use --preset tiny and a local --data folder); print just that, as
    # `python -m keras_diffusion` does. OSError covers
    # sd3.PresetUnavailableError and the Pokemon download's ConnectionError.
    try:
        model = sd3.from_preset(args.preset, image_size=args.resolution, dtype=dtype)
        if args.data == "pokemon":
            dataset = data.load_pokemon_blip(model.image_size, max_images=args.max_images)
        else:
            dataset = data.load_captioned_folder(args.data, model.image_size, max_images=args.max_images)
    except (ValueError, OSError) as error:
        sys.exit(f"error: {error}")
    print(f"{len(dataset)} image-caption pairs at {model.image_size[0]}x{model.image_size[1]}")
    os.makedirs(args.out, exist_ok=True)

    def grid(name):
        images = sd3.text_to_image(model, KERAS_IO_PROMPTS, num_steps=args.steps, seed=args.seed)
        return sd3.save_grid(os.path.join(args.out, name), images, rows=1)

    print("Wrote", grid("before.png"))
    if args.lora_rank:
        lora.enable_lora(model, args.lora_rank, seed=args.seed)
    # keras.io encodes the captions once (the text encoder is frozen) and
    # augments the images every epoch; caching both flips of each latent
    # gives the same augmentation with a frozen VAE too.
    examples = data.cache_examples(model, dataset, batch_size=args.batch_size)
    batches = data.TrainingBatches(examples, args.batch_size, seed=args.seed)
    trainer = FlowMatchingTrainer(model.backbone, seed=args.seed)
    trainer.compile(
        keras.optimizers.AdamW(
            learning_rate=args.learning_rate,
            weight_decay=1e-2,
            beta_1=0.9,
            beta_2=0.999,
            epsilon=1e-8,
            global_clipnorm=1.0,
            use_ema=args.ema > 0,
            ema_momentum=args.ema or 0.99,
        )
    )
    print(f"Trainable parameters: {count_params(trainer.trainable_variables):,}")
    history = trainer.fit(
        batches,
        epochs=args.epochs,
        callbacks=[keras.callbacks.BackupAndRestore(os.path.join(args.out, "backup"))],
    )
    print("Wrote", grid("after.png"))
    if args.lora_rank:
        print("Wrote", lora.save_lora(model, os.path.join(args.out, "sd3.lora.npz")))
    else:
        print("Wrote", model.save_to_preset(os.path.join(args.out, "preset")))
    write_json(os.path.join(args.out, "train_log.json"), {"loss": history.history["loss"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
