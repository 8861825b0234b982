"""Writing files so that a failure never leaves one half-written.

Every file this package writes (images, models, logs, adapters) goes to a
temp file beside its destination first and is renamed into place only once
complete: `os.replace` is atomic on one filesystem.

Example:
>>> import os, tempfile
>>> folder = tempfile.mkdtemp()
>>> path = write_json(os.path.join(folder, "log.json"), {"loss": 0.1})
>>> open(path).read()
'{\\n  "loss": 0.1\\n}\\n'
"""

import json
import os
import uuid


def replace_atomically(path, write):
    """Calls `write(tmp_path)` on a temp path beside `path`, then renames it to `path`.

    The temp name keeps the extension, every part of it (`.weights.h5`),
    because writers such as `Model.save` and `Model.save_weights` check it.
    A failed write leaves `path` as it was.

    Args:
        path: the destination file.
        write: a function that writes a complete file to the path it is given.

    Returns:
        `path`.
    """
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"Cannot write {path!r}: the folder {folder!r} does not exist. "
            f"Create it first (e.g. `os.makedirs({folder!r})`) or choose another path."
        )
    if os.path.isdir(path):
        raise IsADirectoryError(
            f"Cannot write {path!r}: it is an existing folder. Pass a file path instead."
        )
    stem, dot, ext = name.partition(".")
    tmp = os.path.join(folder, f".{stem}.{uuid.uuid4().hex[:12]}.tmp{dot}{ext}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def write_bytes_atomically(path, write):
    """Like `replace_atomically`, but `write(file)` gets an open binary file.

    The data is flushed and synced before the rename.
    """

    def write_path(tmp):
        # "xb" honours the umask (unlike mkstemp's 0600), so the final file
        # gets the same permissions as any other file the user creates.
        with open(tmp, "xb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())

    return replace_atomically(path, write_path)


def replace_folder_atomically(folder, write):
    """Calls `write(staging)` on a new folder beside `folder`, then renames it to `folder`.

    A failed write leaves no staging folder behind. An existing `folder` is
    removed just before the rename, so that only a kill between those two
    leaves neither (the staging folder, `.NAME.<random>`, is then beside it).

    Args:
        folder: the destination folder.
        write: a function that writes a complete folder at the path it is
            given (e.g. `StableDiffusion3.save_to_preset`).

    Returns:
        `folder`.

    Example:
    >>> import tempfile
    >>> target = os.path.join(tempfile.mkdtemp(), "preset")
    >>> def write(path):
    ...     os.makedirs(path)
    ...     open(os.path.join(path, "config.json"), "w").close()
    >>> os.listdir(replace_folder_atomically(target, write))
    ['config.json']
    """
    import shutil

    folder = os.fspath(folder)
    parent, name = os.path.split(os.path.abspath(folder))
    staging = os.path.join(parent, f".{name}.{uuid.uuid4().hex[:12]}")
    try:
        write(staging)
        if os.path.isdir(folder):
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def write_json(path, data):
    """Writes `data` as indented JSON to `path`, atomically; returns `path`."""

    def write(tmp):
        with open(tmp, "w") as file:
            json.dump(data, file, indent=2)
            file.write("\n")

    return replace_atomically(path, write)


def write_npz(path, arrays):
    """Writes a dict of numpy arrays as an `.npz` file at `path`, atomically; returns `path`.

    Example:
    >>> write_npz("/tmp/adapters.npz", {"a": np.zeros(3)})  # doctest: +SKIP
    '/tmp/adapters.npz'
    """
    import numpy as np

    def write(file):
        np.savez(file, **arrays)

    return write_bytes_atomically(path, write)


def save_model(model, path, include_optimizer=True):
    """Saves a Keras model to a `.keras` file atomically; returns `path`.

    Keras' `.keras` format always stores a compiled model's optimizer (for
    Adam with EMA, three more copies of every weight: the keras.io DDPM's
    63M parameters make a 1 GB file). `include_optimizer=False` saves an
    uncompiled copy with the same weights instead, about a quarter of the
    size: it samples identically but does not resume training.

    Args:
        model: a Keras model whose class rebuilds from `get_config()`.
        path: the `.keras` file.
        include_optimizer: keep the optimizer's state (needed to resume).

    Example:
    >>> save_model(model, "model.keras", include_optimizer=False)  # doctest: +SKIP
    'model.keras'
    """
    if not include_optimizer and getattr(model, "optimizer", None) is not None:
        copy = type(model).from_config(model.get_config())
        copy.set_weights(model.get_weights())
        model = copy
    return replace_atomically(path, model.save)


def load_model(path):
    """Loads a `.keras` file written by this package, with errors that name the problem.

    `keras.saving.load_model` works too once `keras_diffusion` is imported
    (importing it registers the classes). This also tells apart a missing
    file, a file that is not a `.keras` archive (truncated or corrupt), and
    a model whose classes are not registered.

    Args:
        path: a `.keras` file.

    Returns:
        The model, compiled with its saved optimizer if it had one.

    Example:
    >>> model = load_model("runs/mnist/model.keras")  # doctest: +SKIP
    """
    import zipfile

    import keras

    import keras_diffusion  # noqa: F401  (registers every class a saved model may name)

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Model file {path!r} does not exist.")
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path!r} exists but is not a valid .keras archive (a zip file): it is truncated "
            "or corrupt. Save the model again, or use another copy."
        )
    try:
        return keras.saving.load_model(path)
    except TypeError as error:
        if "Could not locate" not in str(error):
            raise
        raise TypeError(
            f"{path!r} names a class that is not registered: {str(error).split('. ')[0]}. It was "
            "saved with classes from another package or version; import the package that defines "
            "them before loading."
        ) from None
