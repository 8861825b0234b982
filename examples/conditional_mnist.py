"""A class-conditional DDPM on MNIST with classifier-free guidance: row k of the grid is digit k.

The network takes the digit as a third input; during training each label is
replaced by the "no label" token with probability --label-dropout (Ho &
Salimans 2022), so one network learns both the conditional and the
unconditional model. Generation mixes the two with --guidance-scale.

    KERAS_BACKEND=jax python examples/conditional_mnist.py --epochs 20
    KERAS_BACKEND=torch python examples/conditional_mnist.py --epochs 1 --steps 20

It writes OUT/digits.png (10 rows: row k holds --per-row samples of digit k),
OUT/model.keras and OUT/log.json, and prints how often the bundled MNIST
classifier reads each row as the digit it was asked for.
"""

import argparse
import os

import keras
import numpy as np

import keras_diffusion as kd
from keras_diffusion.metrics import mnist_classifier_probabilities
from example_utils import EpochTimer
from example_utils import save_run


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--out", default="runs/conditional_mnist")
    parser.add_argument("--image-size", type=int, default=32, help="16 trains about 4x faster on a CPU")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--label-dropout", type=float, default=0.1)
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--per-row", type=int, default=10, help="samples of each digit")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps")
    parser.add_argument(
        "--eta", type=float, default=1.0,
        help="DDIM stochasticity; 1 (fresh noise each step) forgives a briefly trained model's errors",
    )
    parser.add_argument("--ema", type=float, default=0.99, help="EMA momentum of the weights sampled from")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)

    images, labels = kd.datasets.load_mnist(image_size=args.image_size, seed=args.seed)
    print(f"Data: {len(images)} bundled MNIST digits ({args.image_size}x{args.image_size}) with their labels.")
    network = kd.networks.unet_from_preset(
        "mnist_small", num_classes=10, image_shape=(args.image_size, args.image_size, 1)
    )
    model = kd.DDPM(
        network, kd.DiscreteVPSchedule("cosine"), num_classes=10, label_dropout=args.label_dropout, seed=args.seed
    )
    # EMA over about the last 100 steps: with 0.999, a 20-epoch run (1,580 steps) would still
    # carry a fifth of the initial, zero-output network into the samples.
    model.compile(keras.optimizers.AdamW(1e-3, weight_decay=1e-4, use_ema=True, ema_momentum=args.ema))
    timer = EpochTimer()
    print(
        f"Training a class-conditional DDPM ({network.count_params():,} parameters) on "
        f"{keras.backend.backend()} for {args.epochs} epoch(s), label dropout {args.label_dropout}."
    )
    history = model.fit(
        {"images": images, "labels": labels}, epochs=args.epochs, batch_size=args.batch_size, callbacks=[timer],
        verbose=2,
    )

    wanted = np.repeat(np.arange(10), args.per_row)
    digits = model.generate(
        len(wanted), sampler="ddim", num_steps=args.steps, eta=args.eta, labels=wanted,
        guidance_scale=args.guidance_scale, seed=args.seed,
    )
    grid = kd.images.save_grid(os.path.join(args.out, "digits.png"), digits, rows=10)
    read = keras.ops.convert_to_numpy(mnist_classifier_probabilities()(digits)).argmax(-1)
    per_digit = [float((read[wanted == k] == k).mean()) for k in range(10)]
    seconds = save_run(
        args.out, model, timer, history, epochs=args.epochs, image_size=args.image_size,
        guidance_scale=args.guidance_scale, classifier_agreement_per_digit=per_digit,
    )
    print(f"Epoch training times (s): {seconds}")
    print(
        "The bundled classifier reads row k as digit k for "
        + ", ".join(f"{k}: {p:.0%}" for k, p in enumerate(per_digit))
        + f" (overall {float((read == wanted).mean()):.0%})."
    )
    print(f"Wrote {grid} (row k = digit k) and {os.path.join(args.out, 'model.keras')}")


if __name__ == "__main__":
    main()
