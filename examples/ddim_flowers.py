"""Reproduce keras.io's "Denoising Diffusion Implicit Models" (flowers), on any backend.

The hyperparameters are those of András Béres' keras.io example: 64x64 images,
the residual U-Net with widths 32-64-96-128 and block depth 2, a 32-dim noise
variance embedding (max frequency 1000), signal rates 0.02 to 0.95, MAE on the
noise, AdamW (1e-3, weight decay 1e-4) with EMA 0.999, batch 64, the data
repeated 5 times per epoch, an 80/20 split, KID on the validation split with 5
DDIM steps (InceptionV3 at 75x75, EMA weights) and 20 steps for the images
shown each epoch. keras.io trains 50 epochs.

    KERAS_BACKEND=jax python examples/ddim_flowers.py --epochs 50
    KERAS_BACKEND=torch python examples/ddim_flowers.py --image-folder photos/ --epochs 1 --max-images 64

It writes OUT/epochs/epoch_XXXX.png (18 images each epoch, like keras.io's
plot), OUT/best_kid.keras (the model with the best validation KID, as
keras.io's checkpoint), OUT/model.keras, OUT/samples.png and OUT/log.json.
The flowers come from tensorflow_datasets when it can download them;
otherwise pass --image-folder DIR.
"""

import argparse
import os
import sys

import keras

import keras_diffusion as kd
from example_utils import EpochTimer
from example_utils import save_run
from example_utils import RepeatedBatches
from example_utils import load_flowers
from example_utils import split_train_validation

TRAIN_SPLIT = "train[:80%]+validation[:80%]+test[:80%]"
VALIDATION_SPLIT = "train[80%:]+validation[80%:]+test[80%:]"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=50, help="keras.io: 50; use 1 for a smoke run")
    parser.add_argument("--out", default="runs/ddim_flowers")
    parser.add_argument("--image-folder", default=None, help="train on these images instead of oxford_flowers102")
    parser.add_argument("--max-images", type=int, default=None, help="use at most this many images per split")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dataset-repetitions", type=int, default=5)
    parser.add_argument(
        "--kid-feature-extractor", default="inception", choices=("inception", "mnist", "none"),
        help="'inception' as keras.io (downloads InceptionV3 weights once); 'none' skips KID",
    )
    parser.add_argument("--kid-steps", type=int, default=5, help="DDIM steps of the KID images (keras.io: 5)")
    parser.add_argument("--plot-steps", type=int, default=20, help="DDIM steps of the shown images (keras.io: 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-optimizer-state", action="store_true",
        help="save model.keras without the optimizer and EMA state (a quarter of the size; samples, cannot resume)",
    )
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)

    try:
        if args.image_folder:
            images, source = load_flowers(None, image_folder=args.image_folder, max_images=args.max_images)
            train, validation = split_train_validation(images, seed=args.seed)
        else:
            train, source = load_flowers(TRAIN_SPLIT, max_images=args.max_images)
            validation, _ = load_flowers(VALIDATION_SPLIT, max_images=args.max_images)
    except kd.datasets.DatasetUnavailableError as err:
        sys.exit(f"error: {err}")
    print(f"Data: {source}; {len(train)} for training, {len(validation)} for validation.")

    extractor = None if args.kid_feature_extractor == "none" else args.kid_feature_extractor
    network = kd.networks.unet_from_preset("ddim_keras_io")
    try:
        model = kd.DDIM(
            network, kid_feature_extractor=extractor, kid_diffusion_steps=args.kid_steps,
            num_steps=args.plot_steps, seed=args.seed,
        )
    except ConnectionError as err:
        sys.exit(f"error: {err}\nOr run with --kid-feature-extractor none to train without KID.")
    model.adapt(train)  # keras.io: normalizer.adapt(train_dataset)
    model.compile(keras.optimizers.AdamW(1e-3, weight_decay=1e-4, use_ema=True, ema_momentum=0.999))

    batch_size = min(args.batch_size, len(validation))
    train_batches = RepeatedBatches(train, args.batch_size, args.dataset_repetitions, seed=args.seed)
    validation_batches = RepeatedBatches(validation, batch_size, args.dataset_repetitions, seed=args.seed + 1)
    timer = EpochTimer()
    callbacks = [
        # First, so that the epoch time covers training and validation but not the grid.
        timer,
        # Validation (and so KID) with the EMA weights, as keras.io's ema_network.
        keras.callbacks.SwapEMAWeights(),
        kd.callbacks.SampleGrid(
            os.path.join(args.out, "epochs"), num_images=18, num_steps=args.plot_steps, verbose=False
        ),
    ]
    if extractor is not None:
        callbacks.append(
            keras.callbacks.ModelCheckpoint(
                os.path.join(args.out, "best_kid.keras"), monitor="val_kid", mode="min", save_best_only=True
            )
        )
    print(
        f"Training the keras.io DDIM ({network.count_params():,} parameters) on "
        f"{keras.backend.backend()} for {args.epochs} epoch(s): {len(train_batches)} batches of "
        f"{args.batch_size} per epoch, KID with {extractor or 'no'} features."
    )
    history = model.fit(
        train_batches, epochs=args.epochs, validation_data=validation_batches, callbacks=callbacks, verbose=2
    )
    seconds = save_run(
        args.out, model, timer, history, include_optimizer=not args.no_optimizer_state, data=source, epochs=args.epochs,
        train_images_per_epoch=len(train_batches) * args.batch_size,
    )
    samples = model.generate(18, num_steps=args.plot_steps, seed=args.seed)
    grid = kd.images.save_grid(os.path.join(args.out, "samples.png"), samples, rows=3)
    print(f"Epoch times (s, training + validation): {seconds}")
    print(f"Wrote {grid}, {os.path.join(args.out, 'model.keras')} and per-epoch grids under {args.out}/epochs")


if __name__ == "__main__":
    main()
