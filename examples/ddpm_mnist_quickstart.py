"""Train a small DDPM on the bundled MNIST digits with plain compile() + fit().

The same script runs on every Keras backend:

    KERAS_BACKEND=jax python examples/ddpm_mnist_quickstart.py --epochs 2
    KERAS_BACKEND=torch python examples/ddpm_mnist_quickstart.py --epochs 2

It writes `quickstart/model.keras` and `quickstart/samples.png`, and a grid
per epoch under `quickstart/epochs/`.
"""

import argparse
import os

import keras

import keras_diffusion as kd


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", default="quickstart")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)

    images, _ = kd.datasets.load_mnist(image_size=32)  # float32 in [-1, 1], (5000, 32, 32, 1)
    network = kd.networks.unet_from_preset("mnist_small")
    model = kd.DDPM(network, kd.DiscreteVPSchedule("cosine"), seed=0)
    model.compile(keras.optimizers.AdamW(1e-3, weight_decay=1e-4, use_ema=True, ema_momentum=0.999))
    model.fit(
        images,
        epochs=args.epochs,
        batch_size=64,
        callbacks=[
            kd.callbacks.SampleGrid(os.path.join(args.out, "epochs"), num_images=16, num_steps=25),
            keras.callbacks.BackupAndRestore(os.path.join(args.out, "backup")),
        ],
    )
    model.save(os.path.join(args.out, "model.keras"))
    samples = model.generate(64, sampler="ddim", num_steps=50, seed=0)
    path = kd.images.save_grid(os.path.join(args.out, "samples.png"), samples)
    print(f"Saved {path} and {os.path.join(args.out, 'model.keras')}")


if __name__ == "__main__":
    main()
