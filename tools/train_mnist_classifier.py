"""Trains the MNIST classifier whose weights ship with keras-diffusion.

It trains `keras_diffusion.metrics.build_mnist_classifier()` on the 4,000
bundled MNIST digits of `mnist_training_split()` (32x32, zero-padded), with
random shifts of up to 2 pixels and zooms of up to 10%, so that it also
handles digits slightly smaller or larger than MNIST's (for example 28x28
samples resized to 32x32). It then reports the accuracy on the 1,000
held-out digits of `mnist_held_out()`, writes the weights, atomically, to
`keras_diffusion/metrics/mnist_classifier.weights.h5` (or `--out`), and prints
the scale of the features (`MNIST_FEATURE_SCALE`, to be copied into
`keras_diffusion/metrics/features.py`; a test checks that it fits the weights).

Example:
    KERAS_BACKEND=tensorflow python -m tools.train_mnist_classifier
"""

import argparse
import os
import time
import uuid


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="weights file (must end in .weights.h5)")
    args = parser.parse_args()

    import keras
    import numpy as np

    from keras_diffusion import metrics

    out = args.out or metrics.features.MNIST_CLASSIFIER_WEIGHTS
    if not out.endswith(".weights.h5"):
        parser.error(f"--out must end in .weights.h5, got {out!r}")
    keras.utils.set_random_seed(args.seed)
    train_images, train_labels = metrics.mnist_training_split()
    test_images, test_labels = metrics.mnist_held_out()

    classifier = metrics.build_mnist_classifier()
    augment = keras.Sequential(
        [
            keras.layers.RandomTranslation(2 / 32, 2 / 32, fill_mode="constant", seed=args.seed),
            keras.layers.RandomZoom(0.1, fill_mode="constant", seed=args.seed + 1),
        ]
    )
    trainer = keras.Sequential([keras.Input((32, 32, 1)), augment, classifier])
    steps = args.epochs * int(np.ceil(len(train_images) / args.batch_size))
    trainer.compile(
        optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(args.learning_rate, steps)),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    trainer.fit(
        train_images, train_labels, batch_size=args.batch_size, epochs=args.epochs, verbose=2
    )
    seconds = time.perf_counter() - start
    predicted = classifier.predict(test_images, verbose=0).argmax(-1)
    accuracy = float((predicted == test_labels).mean())

    tmp = f"{out[: -len('.weights.h5')]}.{uuid.uuid4().hex[:12]}.tmp.weights.h5"
    try:
        classifier.save_weights(tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    # The features' scale; keras_diffusion.metrics.features.MNIST_FEATURE_SCALE holds it.
    features = keras.Model(classifier.inputs, classifier.get_layer("features").output)
    train_features = features.predict(train_images, batch_size=500, verbose=0)
    feature_scale = float(np.sqrt(np.mean(np.sum(train_features**2, axis=1)) / train_features.shape[1]))
    print(
        f"Trained {classifier.count_params():,} parameters for {args.epochs} epochs in "
        f"{seconds:.0f} s ({keras.backend.backend()} backend). Held-out accuracy: "
        f"{accuracy:.4f} on {len(test_labels)} digits. Weights: {out} "
        f"({os.path.getsize(out) / 1024:.0f} KB)\nFeature scale: {feature_scale:.4g} "
        "(set MNIST_FEATURE_SCALE in keras_diffusion/metrics/features.py to it)"
    )


if __name__ == "__main__":
    main()
