"""Data-parallel training through `keras.distribution` (JAX backend).

`data_parallel()` replicates the model on every device and splits each
batch across them; `fit()` then runs unchanged and gives the loss of the
whole global batch, as on one device. See `docs/scaling.md` for multi-GPU
and TPU hosts and for a `ModelParallel` layout of SD3-sized models.

Example:
>>> import keras_diffusion as kd
>>> kd.distribution.data_parallel(batch_size=64)  # doctest: +SKIP
>>> model.fit(images, batch_size=64)  # doctest: +SKIP
"""

import keras


def data_parallel(devices=None, batch_size=None):
    """Sets a global `keras.distribution.DataParallel` over `devices`.

    Call it before building the model, so that its variables are created
    replicated on every device.

    Args:
        devices: device names such as `["gpu:0", "gpu:1"]`; all devices of
            the default type (`keras.distribution.list_devices()`) if None.
        batch_size: the global batch size you will pass to `fit()`; checked
            to split evenly across the devices.

    Returns:
        The `keras.distribution.DataParallel` now in effect.

    Example:
    >>> # XLA_FLAGS=--xla_force_host_platform_device_count=2 KERAS_BACKEND=jax
    >>> dist = data_parallel(batch_size=8)  # doctest: +SKIP
    >>> dist.device_mesh.shape  # doctest: +SKIP
    (2,)
    """
    backend = keras.backend.backend()
    if backend != "jax":
        raise RuntimeError(
            f"keras.distribution.DataParallel is implemented for the JAX backend only in "
            f"Keras {keras.__version__}; the current backend is {backend!r}. Run with "
            "KERAS_BACKEND=jax (the same model and fit() code work unchanged), or train on one device."
        )
    devices = list(devices) if devices is not None else keras.distribution.list_devices()
    if not devices:
        raise ValueError("No devices to distribute over: `devices` is empty.")
    if batch_size is not None and (batch_size < 1 or batch_size % len(devices)):
        raise ValueError(
            f"The global batch size {batch_size} does not split evenly across {len(devices)} "
            f"devices {devices}. Use a multiple of {len(devices)}, e.g. "
            f"{max(1, round(batch_size / len(devices))) * len(devices)}."
        )
    distribution = keras.distribution.DataParallel(devices=devices)
    keras.distribution.set_distribution(distribution)
    return distribution
