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
