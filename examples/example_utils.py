"""What the examples share: Oxford Flowers 102, repeated batches, an epoch timer, saving a run, MNIST training,
and the 2-D toys' data (a ring of Gaussians) and network.

Both keras.io examples read the dataset through `tensorflow_datasets`, centre-crop
each image to a square and resize it (with antialiasing) to 64x64. This module
does the same when `tensorflow_datasets` is installed and can download the data;
otherwise the examples take `--image-folder DIR`, a folder of images that is
centre-cropped and resized the same way (`keras_diffusion.datasets.load_image_folder`).
"""

import argparse
import os
import time

import numpy as np
from PIL import Image

import keras

from keras_diffusion.callbacks import SampleGrid
from keras_diffusion.datasets import DatasetUnavailableError
from keras_diffusion.datasets import load_image_folder
from keras_diffusion.datasets import load_mnist
from keras_diffusion.files import replace_atomically
from keras_diffusion.files import save_model
from keras_diffusion.files import write_json
from keras_diffusion.images import to_model_range
from keras_diffusion.samplers import num_model_evaluations

OFFLINE_HELP = (
    "Pass --image-folder DIR with a folder of flower images instead (any images "
    "work: they are centre-cropped and resized), or install tensorflow-datasets "
    "on a machine with network access."
)


def _crop_resize(image, image_size):
    """Centre square crop, then an antialiased resize, as keras.io's preprocessing does."""
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    crop = Image.fromarray(image[top : top + side, left : left + side])
    return np.asarray(crop.resize((image_size, image_size), Image.Resampling.BILINEAR, reducing_gap=None))


def load_flowers(split, image_size=64, image_folder=None, max_images=None):
    """Loads Oxford Flowers 102 (or a folder of images) as float32 images in [-1, 1].

    Args:
        split: a `tensorflow_datasets` split string, e.g. `"train"` (keras.io
            DDPM) or `"train[:80%]+validation[:80%]+test[:80%]"` (keras.io DDIM).
            Ignored for an image folder.
        image_size: output height and width.
        image_folder: a folder of images to use instead of the dataset.
        max_images: keep at most this many images (for smoke runs).

    Returns:
        `(images, source)`: float32 `(N, image_size, image_size, 3)` in [-1, 1],
        and a short description of where they came from.

    Raises:
        DatasetUnavailableError: if `tensorflow_datasets` is missing or the
            download fails; the message says to pass `--image-folder`.
    """
    if image_folder is not None:
        images, _ = load_image_folder(image_folder, image_size=image_size, max_images=max_images)
        return images, f"{len(images)} images from the folder {image_folder}"
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise DatasetUnavailableError(f"tensorflow_datasets is not installed. {OFFLINE_HELP}") from err
    try:
        dataset = tfds.load("oxford_flowers102", split=split, shuffle_files=False)
        images = []
        for example in tfds.as_numpy(dataset):
            images.append(_crop_resize(example["image"], image_size))
            if max_images is not None and len(images) == max_images:
                break
    except Exception as err:  # tfds raises many types for a failed download
        raise DatasetUnavailableError(
            f"Could not load oxford_flowers102 through tensorflow_datasets "
            f"({type(err).__name__}: {err}). {OFFLINE_HELP}"
        ) from err
    return to_model_range(np.stack(images)), f"{len(images)} images of oxford_flowers102[{split}]"


def split_train_validation(images, validation_fraction=0.2, seed=0):
    """Shuffles and splits an image folder 80/20, as keras.io's DDIM splits the flowers."""
    order = np.random.default_rng(seed).permutation(len(images))
    count = max(1, int(round(len(images) * validation_fraction)))
    return images[order[count:]], images[order[:count]]


class RepeatedBatches(keras.utils.PyDataset):
    """Shuffled batches that go over the images `repetitions` times per epoch.

    keras.io's DDIM repeats the dataset 5 times per epoch (so that the costly
    KID is measured less often); its DDPM flips images left/right at random.
    Only full batches are served (keras.io uses `drop_remainder=True`).

    Args:
        images: float32 `(N, H, W, C)`.
        batch_size: images per batch.
        repetitions: passes over the images per epoch.
        flip: flip each image left/right with probability 1/2.
        seed: shuffling and flipping seed.
    """

    def __init__(self, images, batch_size, repetitions=1, flip=False, seed=0):
        super().__init__()
        if len(images) * repetitions < batch_size:
            raise ValueError(
                f"{len(images)} images x {repetitions} repetitions make less than one batch of "
                f"{batch_size}. Use more images or a smaller --batch-size."
            )
        self.images = images
        self.batch_size = batch_size
        self.repetitions = repetitions
        self.flip = flip
        self.rng = np.random.default_rng(seed)
        self.on_epoch_end()

    def __len__(self):
        return len(self.images) * self.repetitions // self.batch_size

    def on_epoch_end(self):
        self.order = np.concatenate([self.rng.permutation(len(self.images)) for _ in range(self.repetitions)])

    def __getitem__(self, index):
        batch = self.images[self.order[index * self.batch_size : (index + 1) * self.batch_size]]
        if self.flip:
            flips = self.rng.random(len(batch)) < 0.5
            batch = np.where(flips[:, None, None, None], batch[:, :, ::-1], batch)
        return batch


class EpochTimer(keras.callbacks.Callback):
    """Records the wall time of each epoch, from its start to this callback's `on_epoch_end`.

    Place it before callbacks whose time should not count (sample grids).
    """

    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def save_run(out, model, timer, history, include_optimizer=True, **log):
    """Saves `OUT/model.keras` and `OUT/log.json` (backend, seconds per epoch, history, `log`).

    `include_optimizer=False` leaves the optimizer's state (Adam's moments and
    the EMA) out of `model.keras`: about a quarter of the size, enough to
    sample, not to resume (`keras_diffusion.files.save_model`).

    Returns:
        The seconds per epoch, rounded to 0.1 s, as written to the log.

    Example:
        >>> seconds = save_run(args.out, model, timer, history, epochs=args.epochs)  # doctest: +SKIP
    """
    path = save_model(model, os.path.join(out, "model.keras"), include_optimizer=include_optimizer)
    print(f"Wrote {path} ({os.path.getsize(path) / 2**20:.1f} MB" + ("" if include_optimizer else ", no optimizer state") + ")")
    seconds = [round(s, 1) for s in timer.seconds]
    write_json(
        os.path.join(out, "log.json"),
        {
            "backend": keras.backend.backend(),
            "seconds_per_epoch": seconds,
            **log,
            "history": {name: [float(v) for v in values] for name, values in history.history.items()},
        },
    )
    return seconds


def mnist_parser(description, out, epochs, sampler, num_steps):
    """The command line the MNIST examples of each model family share."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--out", default=out)
    parser.add_argument("--image-size", type=int, default=16, help="16 trains about 4x faster than 32 on a CPU")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ema", type=float, default=0.995, help="EMA momentum of the weights sampled from")
    parser.add_argument("--sampler", default=sampler, help="any name of keras_diffusion.samplers.SAMPLERS")
    parser.add_argument("--sample-steps", type=int, default=num_steps)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def train_mnist(model, args, name):
    """Trains `model` on the bundled MNIST digits with `args` from `mnist_parser`, saving a grid each epoch.

    Writes OUT/epochs/epoch_XXXX.png (36 digits, the same noise each epoch),
    OUT/model.keras and OUT/log.json; returns the last grid's path.
    """
    os.makedirs(args.out, exist_ok=True)
    images, _ = load_mnist(image_size=args.image_size, seed=args.seed)
    model.compile(keras.optimizers.AdamW(args.lr, weight_decay=1e-4, use_ema=True, ema_momentum=args.ema))
    timer = EpochTimer()
    grids = SampleGrid(
        os.path.join(args.out, "epochs"), num_images=36, sampler=args.sampler, num_steps=args.sample_steps,
        verbose=False,
    )
    evaluations = num_model_evaluations(args.sampler, args.sample_steps)
    print(
        f"Training {name} ({model.network.count_params():,} parameters) on {keras.backend.backend()} for "
        f"{args.epochs} epoch(s) of {len(images)} {args.image_size}x{args.image_size} digits; grids with "
        f"{args.sampler}, {args.sample_steps} steps ({evaluations} model evaluations)."
    )
    start = time.process_time()
    history = model.fit(images, epochs=args.epochs, batch_size=args.batch_size, shuffle=True,
                        callbacks=[timer, grids], verbose=2)
    cpu_seconds = time.process_time() - start
    seconds = save_run(args.out, model, timer, history, images=len(images), epochs=args.epochs,
                       sampler=args.sampler, sample_steps=args.sample_steps, cpu_seconds=round(cpu_seconds, 1))
    print(f"Epoch training times (s, without the grid): {seconds}; {cpu_seconds:.0f} s of CPU time in all.")
    print(f"Wrote {len(grids.paths)} grid(s) under {args.out}/epochs, last {grids.paths[-1]}, and {args.out}/model.keras")
    return grids.paths[-1]


def gaussian_ring(n, num_modes=6, radius=2.0, std=0.15, seed=0):
    """`n` points from `num_modes` equal Gaussians on a circle: float32 `(n, 2)`."""
    rng = np.random.default_rng(seed)
    angles = 2 * np.pi * rng.integers(0, num_modes, n) / num_modes
    centers = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return (centers + std * rng.normal(size=(n, 2))).astype("float32")


def mlp_2d(width=128):
    """`[x, t] -> 2 outputs`: an MLP on a 2-D point and the network time (a velocity, or a score model's noise)."""
    x, t = keras.Input((2,)), keras.Input(())
    h = keras.layers.Concatenate()([x, keras.layers.Reshape((1,))(t)])
    for _ in range(3):
        h = keras.layers.Dense(width, activation="silu")(h)
    return keras.Model([x, t], keras.layers.Dense(2)(h))


def square_panels(axes, lim=3.2):
    """The 2-D toys' panels: `[-lim, lim]^2`, equal aspect, no ticks."""
    for ax in axes:
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])


def save_figure(fig, out, start):
    """Writes a matplotlib figure to `out` as PNG (atomically, making its folder); prints the CPU time since `start`."""
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    replace_atomically(out, lambda path: fig.savefig(path, dpi=80, format="png"))
    print(f"Wrote {out} in {time.process_time() - start:.0f} s of CPU time.")
