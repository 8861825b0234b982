"""Keras callbacks for diffusion training.

`SampleGrid` writes a grid of generated samples every few epochs, so
training progress can be watched as PNG files. `InterruptAtBatchEnd` makes
Ctrl+C stop training at a batch boundary.

Checkpointing and resuming an interrupted run exactly (inside an epoch too,
with the data order and the random generators) is `keras_diffusion.resume`.
"""

import os
import signal
import threading

import keras

from .images import save_grid


class SampleGrid(keras.callbacks.Callback):
    """Saves a PNG grid of `model.generate(...)` samples during training.

    Every `every_n_epochs` epochs, and always after the last epoch, calls
    `model.generate(num_images, sampler=sampler, num_steps=num_steps,
    seed=seed, **generate_kwargs)` (which must return uint8 (N, H, W, C))
    and writes `directory/epoch_{epoch:04d}.png` (1-based epoch number).
    The same seed is used each time, so successive grids show the same noise
    being denoised by a better and better model.

    Args:
        directory: folder for the PNGs; created when training begins.
        every_n_epochs: save every this many epochs.
        num_images: samples per grid.
        seed: sampling seed.
        sampler: sampler name passed to `generate`.
        num_steps: sampling steps passed to `generate`.
        **generate_kwargs: any other arguments for `generate`.

    Attributes:
        paths: list of the PNG files written so far.

    Example:
        >>> model.fit(images, epochs=20,
        ...           callbacks=[SampleGrid("samples/", every_n_epochs=5)])
    """

    def __init__(
        self,
        directory,
        every_n_epochs=1,
        num_images=16,
        seed=0,
        sampler="ddim",
        num_steps=50,
        **generate_kwargs,
    ):
        super().__init__()
        for name, value in (
            ("every_n_epochs", every_n_epochs),
            ("num_images", num_images),
            ("num_steps", num_steps),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        self.directory = os.fspath(directory)
        self.every_n_epochs = every_n_epochs
        self.num_images = num_images
        self.seed = seed
        self.sampler = sampler
        self.num_steps = num_steps
        self.generate_kwargs = generate_kwargs
        self.paths = []

    def on_train_begin(self, logs=None):
        if not callable(getattr(self.model, "generate", None)):
            raise TypeError(
                f"SampleGrid needs a model with a `generate()` method, but "
                f"{type(self.model).__name__} has none. Use it with a "
                "keras-diffusion model, or remove the callback."
            )
        os.makedirs(self.directory, exist_ok=True)

    def on_epoch_end(self, epoch, logs=None):
        number = epoch + 1
        last = (self.params or {}).get("epochs")
        if number % self.every_n_epochs and number != last:
            return
        images = self.model.generate(
            self.num_images,
            sampler=self.sampler,
            num_steps=self.num_steps,
            seed=self.seed,
            **self.generate_kwargs,
        )
        path = os.path.join(self.directory, f"epoch_{number:04d}.png")
        self.paths.append(save_grid(path, images))


class InterruptAtBatchEnd(keras.callbacks.Callback):
    """Turns Ctrl+C during `fit()` into a `KeyboardInterrupt` at the next batch end.

    Python raises `KeyboardInterrupt` wherever the main thread happens to be,
    which can be inside a backend's native code: a TensorFlow run interrupted
    there aborted with "free(): invalid next size". This callback replaces the
    SIGINT handler while training: the first Ctrl+C only sets a flag, and the
    interrupt is raised from `on_train_batch_end`, in plain Python, where the
    model holds a finished step. A Ctrl+C during the last batch of an epoch
    is raised at that epoch's end instead, so that the epoch-end work of the
    callbacks listed before this one (a checkpoint, a log entry) is done. A
    second Ctrl+C interrupts at once. A process that ignores SIGINT (started
    in the background by a shell) keeps ignoring it. List it last, so that
    the other callbacks see the batch end first.

    Args:
        before_interrupt: optional `f()`, called at the batch end where the
            interrupt is raised, just before: the moment to save the
            finished step (`cli.train.fit_with_backup` passes
            `ExactBackupAndRestore.save_now`, so a rerun loses no step). Not
            called when the interrupt waits for an epoch's end.

    Example:
    >>> model.fit(images, epochs=5, callbacks=[InterruptAtBatchEnd()])  # doctest: +SKIP
    """

    def __init__(self, before_interrupt=None):
        super().__init__()
        self.before_interrupt = before_interrupt
        self.requested = False
        self._previous = None

    def _request(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)

    def _restore(self):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def on_train_begin(self, logs=None):
        self.requested = False
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGINT)
            if previous is not signal.SIG_IGN:
                self._previous = signal.signal(signal.SIGINT, self._request)

    def on_train_batch_end(self, batch, logs=None):
        if not self.requested or batch + 1 == (self.params or {}).get("steps"):
            return
        if self.before_interrupt is not None:
            self.before_interrupt()
        self._restore()
        raise KeyboardInterrupt

    def on_epoch_end(self, epoch, logs=None):
        if self.requested:
            self._restore()
            raise KeyboardInterrupt

    def on_train_end(self, logs=None):
        self._restore()
