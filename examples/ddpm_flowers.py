"""Reproduce keras.io's "Denoising Diffusion Probabilistic Model" (flowers), on any backend.

The hyperparameters are those of the keras.io example (A. K. Nain): 64x64
images of oxford_flowers102's "train" split with random left/right flips, the
U-Net with widths 64-128-256-512, 2 residual blocks per level, attention at
16x16 and 8x8, GroupNorm with 8 groups (`unet_from_preset("ddpm_keras_io")`);
the linear schedule (1e-4 to 0.02, T=1000), epsilon prediction with MSE,
Adam 2e-4 with EMA 0.999, batch 32, and 16 images drawn with the full
1,000-step ancestral sampler (x0 clipped to [-1, 1]) after each epoch. keras.io
trained 800 epochs on a V100.

    KERAS_BACKEND=jax python examples/ddpm_flowers.py --epochs 800
    KERAS_BACKEND=torch python examples/ddpm_flowers.py --image-folder photos/ --epochs 1 --max-images 64 --sample-steps 10

It writes OUT/epochs/epoch_XXXX.png (16 images every --grid-every epochs),
OUT/model.keras, OUT/samples.png and OUT/log.json. The flowers come from
tensorflow_datasets when it can download them; otherwise pass --image-folder DIR.
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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=800, help="keras.io: 800 (V100); use 1 for a smoke run")
    parser.add_argument("--out", default="runs/ddpm_flowers")
    parser.add_argument("--image-folder", default=None, help="train on these images instead of oxford_flowers102")
    parser.add_argument("--max-images", type=int, default=None, help="use at most this many images")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sample-steps", type=int, default=1000, help="ancestral steps per grid (keras.io: 1000)")
    parser.add_argument("--grid-every", type=int, default=1, help="write a grid every N epochs (keras.io: 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-optimizer-state", action="store_true",
        help="save model.keras without the optimizer and EMA state (a quarter of the size; samples, cannot resume)",
    )
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)

    try:
        images, source = load_flowers("train", image_folder=args.image_folder, max_images=args.max_images)
    except kd.datasets.DatasetUnavailableError as err:
        sys.exit(f"error: {err}")
    print(f"Data: {source}.")

    network = kd.networks.unet_from_preset("ddpm_keras_io")
    model = kd.DDPM(
        network, kd.DiscreteVPSchedule("linear", 1000, 1e-4, 0.02), prediction_type="epsilon",
        loss_type="mse", seed=args.seed,
    )
    model.compile(keras.optimizers.Adam(2e-4, use_ema=True, ema_momentum=0.999))
    batches = RepeatedBatches(images, args.batch_size, flip=True, seed=args.seed)
    timer = EpochTimer()
    grids = kd.callbacks.SampleGrid(
        os.path.join(args.out, "epochs"), every_n_epochs=args.grid_every, num_images=16, sampler="ddpm",
        num_steps=args.sample_steps, clip_sample=True, verbose=False,
    )
    print(
        f"Training the keras.io DDPM ({network.count_params():,} parameters) on "
        f"{keras.backend.backend()} for {args.epochs} epoch(s) of {len(batches)} batches of {args.batch_size}."
    )
    # The timer comes first, so that its epoch time leaves out the sample grid.
    history = model.fit(batches, epochs=args.epochs, callbacks=[timer, grids], verbose=2)
    seconds = save_run(
        args.out, model, timer, history, include_optimizer=not args.no_optimizer_state, data=source, epochs=args.epochs,
        train_images_per_epoch=len(batches) * args.batch_size, sample_steps=args.sample_steps,
    )
    samples = model.generate(16, sampler="ddpm", num_steps=args.sample_steps, seed=args.seed)
    grid = kd.images.save_grid(os.path.join(args.out, "samples.png"), samples, rows=2)
    print(f"Epoch training times (s): {seconds}")
    print(f"Wrote {grid}, {os.path.join(args.out, 'model.keras')} and grids under {args.out}/epochs")


if __name__ == "__main__":
    main()
