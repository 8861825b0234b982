"""Does the starting point matter? Keras' initialisers against PyTorch's rule, over epochs.

    KERAS_BACKEND=tensorflow python -m benchmarks.init_effect --epochs 8    # ~7 min on 2 cores

Trains the same network twice on bundled MNIST with the same data, seed and
optimizer: once from `build_unet`'s own initialisers (Glorot-uniform
kernels, zero biases, zero head) and once from PyTorch's default rule
(`benchmarks.compare.pytorch_default_weights`, the start of diffusers'
network). After every epoch it prints the held-out noise-prediction MSE on
`--held-out` digits that training never sees, with fixed noise and
timesteps, and at the end a markdown table.

A rerun of an interrupted command resumes per finished stage: each
initialisation's curve is saved when its training ends, to
`benchmarks/results/init_effect.<backend>.partial.json` (`--partial`), and
read back instead of retrained; a stage cut short is rerun from its start.
Each stage seeds everything itself, so a rerun gives the uninterrupted run's
table.
"""

import argparse
import os
import sys

import numpy as np


def held_out_curve(init, network, epochs, held_out, batch_size=64, seed=0, train_images=None):
    """Held-out noise MSE after each epoch, starting from `init` ("keras" or "pytorch").

    `train_images` caps the training set (default: every digit not held out).
    """
    import keras

    import keras_diffusion as kd
    from benchmarks import compare
    from keras_diffusion.datasets import load_mnist

    size = compare.NETWORKS[network]["image_shape"][0]
    images, _ = load_mnist(image_size=size, seed=seed)
    train, held = images[:-held_out][:train_images], images[-held_out:]
    rng = np.random.default_rng(seed + 123)
    noise = rng.standard_normal(held.shape).astype("float32")
    t = rng.integers(0, 1000, len(held))
    keras.utils.set_random_seed(seed)
    unet = kd.networks.build_unet(**compare.NETWORKS[network])
    if init == "pytorch":
        unet.set_weights(compare.pytorch_default_weights(unet, seed))
    model = kd.DDPM(unet, kd.DiscreteVPSchedule("cosine"), seed=seed)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=1e-4))
    noisy = compare._noisy(model.schedule.alphas_cumprod, held, noise, t)
    curve = []

    class HeldOut(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            pred = np.asarray(unet.predict_on_batch([noisy, t.astype("float32")]), "float32")
            curve.append(float(np.mean((pred - noise) ** 2)))
            print(f"{init}: epoch {epoch + 1}, held-out MSE {curve[-1]:.4f}", flush=True)

    model.fit(train, batch_size=batch_size, epochs=epochs, verbose=0, callbacks=[HeldOut()])
    return curve


def main(argv=None):
    """Command-line entry point; see the module docstring."""
    import keras

    from benchmarks import compare
    from benchmarks.partial import PartialResults

    parser = argparse.ArgumentParser(prog="python -m benchmarks.init_effect", description=__doc__.splitlines()[0])
    parser.add_argument("--network", choices=sorted(compare.NETWORKS), default="mnist_small")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--held-out", type=int, default=256)
    parser.add_argument(
        "--partial", default=None,
        help="the finished stages, for a rerun to skip (default: "
        "benchmarks/results/init_effect.<backend>.partial.json); deleted at the end",
    )
    args = parser.parse_args(argv)
    backend = keras.backend.backend()
    stages = PartialResults(
        args.partial or os.path.join("benchmarks", "results", f"init_effect.{backend}.partial.json"),
        {"network": args.network, "epochs": args.epochs, "held_out": args.held_out, "backend": backend},
    )
    curves = {
        init: stages.stage(init, lambda init=init: held_out_curve(init, args.network, args.epochs, args.held_out))
        for init in ("keras", "pytorch")
    }
    print("| epoch | " + " | ".join(str(e + 1) for e in range(args.epochs)) + " |")
    print("|---|" + "---|" * args.epochs)
    for init, curve in curves.items():
        print(f"| {init} | " + " | ".join(f"{v:.3f}" for v in curve) + " |")
    stages.delete()
    return 0


if __name__ == "__main__":
    sys.exit(main())
