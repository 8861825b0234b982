"""Exact resume: an interrupted and resumed `fit()` ends where the uninterrupted one does.

Three pieces:

- `ResumableBatches`, a `keras.utils.PyDataset` whose batches are a pure
  function of `(seed, epoch, step)`: epoch `e` visits the examples in the
  order `np.random.default_rng([seed, e]).permutation(N)`. It can start an
  epoch at any step.
- `ExactBackupAndRestore`, a `keras.callbacks.BackupAndRestore` that also
  saves what Keras' own does not.
- `fit(model, backup, epochs)`, `model.fit` on the backup's data that also
  resumes inside an epoch.

What a checkpoint holds, and why each part is needed for the resumed run to
equal the uninterrupted one:

| part | where it lives |
|---|---|
| weights (LoRA factors too), optimizer state (moments, EMA, `iterations`, so the learning-rate schedule's step) | `checkpoint-<step>.npz` (every variable's value) |
| every `SeedGenerator` state (the model's noise, timesteps and label dropout; a network's Dropout) | `checkpoint-<step>.npz` |
| the metric accumulators of the current epoch (so the epoch's mean loss is the uninterrupted one) | `state.json` |
| the epoch, the step within it (the data position) | `state.json` |
| the logs of the finished epochs and where the run resumed | `state.json` |
| the model's variable shapes and the run's arguments, to refuse a checkpoint of another run | `state.json` |

Why the generator states are carried rather than recomputed from the step:
Keras' `SeedGenerator` is already counter-based, its state is `(seed,
number of draws)`, so with a fixed number of draws per step it *is* a
function of the seed and the position, and restoring it is exact. Carrying
it works for every generator of any model (a network's Dropout layers have
their own, seeded at random unless `keras.utils.set_random_seed` ran) and
for models built with `seed=None`, without changing any model's `call()`.

The variables are stored by value, not with `model.save_weights`: a Dense
layer with LoRA saves its kernel with the adapter merged in and loads it
with the adapter zeroed, so a LoRA fine-tune resumed from `save_weights`
would train on from other weights (and its adapter would restart at zero).

Writes are atomic: the weights go to a new file (temp file, then rename),
and `state.json`, which names that file and its size, is renamed into place
last; only then is the previous weights file removed. A kill at any moment
leaves the previous checkpoint or the new one. A resume writes its mark
into `state.json` at once (the same way), so the run's record of its
resumes survives a rerun killed before its first checkpoint.

Inside an epoch: Keras' `fit()` has no initial step, and `BackupAndRestore`
restores whole epochs (`model._initial_epoch`). `fit` below resumes inside
one with two `model.fit` calls: the first serves the interrupted epoch's
remaining batches (the dataset's length is what is left, so Keras' epoch
ends there cleanly) with the restored metric accumulators, saves the epoch
end and stops; the second restores that checkpoint and runs the remaining
epochs. Ending the epoch by running out of data instead would cost an extra
attempted step, and on TensorFlow that attempt advances the generators and
the optimizer's iteration count. Restoring between the two calls also undoes
what the first call's end does (with `use_ema`, Keras writes the EMA into
the weights when `fit()` returns).

Example:
>>> data = ResumableBatches(images, batch_size=32, seed=0)  # doctest: +SKIP
>>> backup = ExactBackupAndRestore("runs/a/backup", data, save_freq=100)  # doctest: +SKIP
>>> fit(model, backup, epochs=10)  # doctest: +SKIP

Run the same lines again after a crash or a kill: training continues from
the last checkpoint, and `backup.log` holds every epoch of the run.
"""

import hashlib
import json
import math
import os
import shutil
import time

import keras
import numpy as np

from keras_diffusion.files import write_bytes_atomically

STATE_FILE = "state.json"
# 2: the weights file holds every variable's value (`_checkpoint_variables`).
FORMAT = 2


class ResumableBatches(keras.utils.PyDataset):
    """Batches in an order fixed by `(seed, epoch)`, that can start an epoch at any step.

    Epoch `e` visits the examples in the order
    `np.random.default_rng([seed, e]).permutation(N)` (or in order, with
    `shuffle=False`); batch `k` of it holds the examples `k * batch_size` to
    `(k + 1) * batch_size` of that order (the last batch may be smaller).
    `ExactBackupAndRestore` sets the position; without it, each time a whole
    pass has been served the next request for batch 0 starts the next epoch. Pass `shuffle=False` to `fit()`: the batches are
    shuffled here, and Keras' own shuffling (python's global `random`) would
    not be reproducible.

    Args:
        data: a numpy array `(N, ...)`, or a dict of arrays with equal first
            dimension (e.g. `{"images": ..., "labels": ...}`).
        batch_size: examples per batch.
        seed: int, the seed of the order.
        shuffle: reshuffle every epoch.
        **kwargs: `workers`, `use_multiprocessing`, `max_queue_size` of
            `keras.utils.PyDataset`.

    Attributes:
        steps_per_epoch: batches in a full epoch.
        epoch, start_step: the position the next pass serves from.

    Example:
    >>> import numpy as np
    >>> data = ResumableBatches(np.arange(10.0)[:, None], batch_size=4, seed=0)
    >>> data.steps_per_epoch
    3
    >>> data.set_position(epoch=1, step=2)
    >>> len(data), data[0].shape
    (1, (2, 1))
    """

    def __init__(self, data, batch_size, seed=0, shuffle=True, **kwargs):
        super().__init__(**kwargs)
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer. Received: batch_size={batch_size!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed must be an integer. Received: seed={seed!r}")
        arrays = data if isinstance(data, dict) else {None: data}
        sizes = {key: len(value) for key, value in arrays.items()}
        if len(set(sizes.values())) != 1 or not next(iter(sizes.values())):
            raise ValueError(
                f"data must hold at least one example, with the same number in every entry. Received sizes: {sizes}"
            )
        self.data = data
        self.num_examples = next(iter(sizes.values()))
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.steps_per_epoch = math.ceil(self.num_examples / self.batch_size)
        self.epoch, self.start_step = 0, 0
        self._next_index = 0
        self._positioned = False

    def set_position(self, epoch, step=0):
        """Makes the next pass serve epoch `epoch` from batch `step` on.

        From then on the position changes only through this method (as
        `ExactBackupAndRestore` sets it at every epoch start), not after a
        whole pass.
        """
        if not 0 <= step < self.steps_per_epoch:
            raise ValueError(f"step must be in [0, {self.steps_per_epoch}). Received: step={step}")
        self.epoch, self.start_step = int(epoch), int(step)
        self._next_index = 0
        self._positioned = True

    def config(self):
        """What fixes the batches: compared with a checkpoint's by `ExactBackupAndRestore`."""
        return {
            "data.num_examples": self.num_examples,
            "data.batch_size": self.batch_size,
            "data.seed": self.seed,
            "data.shuffle": self.shuffle,
        }

    def __len__(self):
        return self.steps_per_epoch - self.start_step

    def order(self, epoch):
        """The example indices of epoch `epoch`, in the order they are served."""
        if not self.shuffle:
            return np.arange(self.num_examples)
        return np.random.default_rng([self.seed, int(epoch)]).permutation(self.num_examples)

    def batch(self, epoch, step):
        """Batch `step` of epoch `epoch`: a pure function of the seed and the position."""
        chosen = self.order(epoch)[step * self.batch_size : (step + 1) * self.batch_size]
        if isinstance(self.data, dict):
            return {key: np.asarray(value)[chosen] for key, value in self.data.items()}
        return np.asarray(self.data)[chosen]

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"Batch {index} out of range for {len(self)} batches.")
        # Read one at a time, Keras asks for 0, 1, 2, ... unless fit() shuffles.
        if self.workers <= 1 and not self.use_multiprocessing:
            if index == 0 and self._next_index == len(self) and not self._positioned:
                # A whole pass was served: a plain fit() (no ExactBackupAndRestore
                # to set the position) starts its next epoch, in the next order.
                # Not once positioned: Keras reads batches before an epoch starts
                # (TensorFlow twice: for the specs, and for the symbolic build),
                # and moving a one-batch-long remainder on to the next epoch there
                # changed Keras' count of the epoch's steps.
                self.epoch, self.start_step = self.epoch + 1, 0
            elif index not in (0, self._next_index):
                raise ValueError(
                    f"fit() asked for batch {index} where batch {self._next_index} was due: it is "
                    "shuffling the batches. Pass shuffle=False to fit(); ResumableBatches shuffles "
                    "by (seed, epoch) itself, reproducibly."
                )
            self._next_index = index + 1
        return self.batch(self.epoch, self.start_step + index)


class ExactBackupAndRestore(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` that resumes exactly, inside an epoch too.

    Saves at the end of every epoch and, with an integer `save_freq`, also
    every `save_freq` steps (counted over the whole run, so the same steps
    are checkpointed however often the run was interrupted). When `fit()`
    starts and `backup_dir` holds a checkpoint, restores the weights, the
    optimizer (with its EMA and iteration count), every `SeedGenerator`, the
    epoch, the step within it (through `data`), the metric accumulators of
    that epoch and the logs of the finished ones; then the run continues as
    if it had never stopped. See the module docstring for the file layout.

    A plain `model.fit(data, shuffle=False, callbacks=[backup])` resumes
    from checkpoints at epoch ends; `keras_diffusion.resume.fit` also from
    those inside an epoch (a plain `fit()` refuses them with an error
    saying so).

    Args:
        backup_dir: folder of the checkpoint, used by this run only.
        data: the `ResumableBatches` given to `fit()` (with `shuffle=False`).
        save_freq: `"epoch"`, or an int: also save every this many steps.
        run_config: a dict of JSON values that fix the run (its arguments).
            A checkpoint written with other values is refused with an error
            naming the first difference. The backend and `data.config()`
            are always compared.
        delete_checkpoint: delete `backup_dir` when training ends. Pass
            False to delete it yourself (`delete()`) once the run's results
            are saved, so that a kill in between still resumes.
        extra_state: an object with `get_state()` (a dict of JSON values)
            and `set_state(dict)`: saved with every checkpoint and handed
            back when one is restored, for what a callback of the run must
            carry across a resume (e.g. a training budget already spent).

    Attributes:
        log: one dict per finished epoch of the whole run: `"epoch"`
            (1-based), the logged metrics, `"seconds"` (time spent in the
            epoch's counted steps, over every process).
        resumes: one dict per resume: `"epoch"` (1-based) and `"step"` (the
            steps of that epoch already done) where training continued;
            saved in the checkpoint as soon as the resume happens.
        global_step: steps done over the whole run.

    Example:
    >>> data = ResumableBatches(images, batch_size=32, seed=0)  # doctest: +SKIP
    >>> backup = ExactBackupAndRestore("backup", data, save_freq=50)  # doctest: +SKIP
    >>> fit(model, backup, epochs=5)  # doctest: +SKIP
    >>> [entry["loss"] for entry in backup.log]  # doctest: +SKIP
    """

    def __init__(self, backup_dir, data, save_freq="epoch", run_config=None, delete_checkpoint=True,
                 extra_state=None):
        super().__init__(os.fspath(backup_dir), save_freq=save_freq, delete_checkpoint=delete_checkpoint)
        if not isinstance(data, ResumableBatches):
            raise ValueError(
                "ExactBackupAndRestore needs the training data as a keras_diffusion.resume."
                f"ResumableBatches, whose position it restores. Received: {type(data).__name__}."
            )
        if save_freq != "epoch" and (isinstance(save_freq, bool) or save_freq < 1):
            raise ValueError(f"save_freq must be 'epoch' or a positive integer. Received: {save_freq!r}")
        self.data = data
        self.extra_state = extra_state
        run_config = dict(run_config or {})
        run_config.update(data.config())
        run_config["backend"] = keras.backend.backend()
        self.run_config = json.loads(json.dumps(run_config))
        self._state_path = os.path.join(self.backup_dir, STATE_FILE)
        self.log, self.resumes, self.global_step = [], [], 0
        # Set by `fit` around its first call, which finishes an interrupted epoch.
        self._finishing_epoch = None
        self.stopped_early = False
        self._continuing = False

    def saved_position(self):
        """`(epoch, step)` of the checkpoint in `backup_dir` (0-based), or None if there is none."""
        if not os.path.isfile(self._state_path):
            return None
        state = self._read_state()
        return state["epoch"], state["step"]

    # ------------------------------------------------------------- restoring
    def on_train_begin(self, logs=None):
        if getattr(self.model, "steps_per_execution", 1) != 1:
            raise ValueError(
                "ExactBackupAndRestore needs compile(steps_per_execution=1): it tracks the data "
                f"position step by step. Received: steps_per_execution={self.model.steps_per_execution}."
            )
        self.log, self.resumes, self.global_step = [], [], 0
        self._resume_at = self._saved_step = None
        self._load_model()

    def _load_model(self):
        model = self.model
        if not model.built:
            raise ValueError(
                "Build the model before fit() so that a checkpoint can be loaded into it "
                "(call it on a batch, or model.build(input_shape))."
            )
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        if not os.path.isfile(self._state_path):
            self._remove_stale_files(keep=None)
            return
        state = self._read_state()
        epoch, step = state["epoch"], state["step"]
        if step and (self.data.epoch, self.data.start_step) != (epoch, step):
            raise ValueError(
                f"The checkpoint in {self.backup_dir!r} is inside epoch {epoch + 1} (after step {step}); "
                "a plain fit() resumes only at epoch ends. Resume with "
                "keras_diffusion.resume.fit(model, backup, epochs=...), which finishes that epoch first."
            )
        self._check_run(state)  # first: other arguments also make another model
        self._check_model(state)
        weights = os.path.join(self.backup_dir, state["weights"])
        self._check_file(weights, state["weights_bytes"])
        variables = _checkpoint_variables(model)
        try:
            with np.load(weights) as arrays:
                values = [arrays[f"arr_{index}"] for index in range(len(variables))]
        except Exception as err:
            raise ValueError(
                f"The checkpoint file {weights!r} cannot be read ({err}). {self._fresh_hint()}"
            ) from None
        for variable, value in zip(variables, values):
            variable.assign(_from_storable(value, variable))
        if self.extra_state is not None:
            self.extra_state.set_state(state.get("extra", {}))
        self.log, self.resumes, self.global_step = state["log"], state["resumes"], state["global_step"]
        self._saved_step = self.global_step
        if not self._continuing:
            self.resumes.append({"epoch": epoch + 1, "step": step})
            # Written now, not with the next checkpoint: a rerun killed before
            # that one still leaves its mark.
            self._write_state(state)
        self._continuing = False
        self._remove_stale_files(keep=state["weights"])
        model._initial_epoch = epoch
        if step:
            # Keras resets the metrics when the epoch starts: they are put back then.
            self._resume_at = (epoch, step, state["metrics"], state["epoch_seconds"])

    def _read_state(self):
        try:
            with open(self._state_path) as file:
                state = json.load(file)
            for key in ("format", "weights", "weights_bytes", "epoch", "step", "global_step", "model", "run",
                        "metrics", "log", "resumes", "epoch_seconds"):
                state[key]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
            raise ValueError(
                f"The checkpoint state {self._state_path!r} is damaged or truncated ({err}). "
                f"{self._fresh_hint()}"
            ) from None
        if state["format"] != FORMAT:
            raise ValueError(
                f"The checkpoint in {self.backup_dir!r} has format {state['format']!r}, written by another "
                f"version of keras_diffusion; this one reads format {FORMAT}. {self._fresh_hint()}"
            )
        return state

    def _check_file(self, path, expected):
        if not os.path.isfile(path):
            raise ValueError(f"The checkpoint file {path!r} is missing. {self._fresh_hint()}")
        size = os.path.getsize(path)
        if size != expected:
            raise ValueError(
                f"The checkpoint file {path!r} is truncated or damaged: it has {size:,} bytes, "
                f"the checkpoint wrote {expected:,}. {self._fresh_hint()}"
            )

    def _check_model(self, state):
        saved, current = state["model"], _model_signature(self.model)
        if saved == current:
            return
        detail = ""
        names = [v.path for v in self.model.variables]
        for index, (a, b) in enumerate(zip(saved["shapes"], current["shapes"])):
            if a != b:
                detail = f"; variable {index} ({names[index]}) is {tuple(a[0])} {a[1]} there, {tuple(b[0])} {b[1]} here"
                break
        raise ValueError(
            f"The checkpoint in {self.backup_dir!r} was written for another model: a {saved['class']} with "
            f"{len(saved['shapes'])} variables, and this is a {current['class']} with "
            f"{len(current['shapes'])}{detail}. Resume with the model that wrote it, or "
            f"{self._fresh_hint(lower=True)}"
        )

    def _check_run(self, state):
        saved = state["run"]
        for key in sorted(set(saved) | set(self.run_config)):
            there, here = saved.get(key, "<unset>"), self.run_config.get(key, "<unset>")
            if there != here:
                raise ValueError(
                    f"The checkpoint in {self.backup_dir!r} belongs to a run with other arguments: "
                    f"{key} was {there!r} there and is {here!r} here. Rerun with the same arguments "
                    f"to resume, or {self._fresh_hint(lower=True)}"
                )

    def _fresh_hint(self, lower=False):
        text = f"Delete {self.backup_dir!r} (or write to another folder) to start fresh."
        return text[0].lower() + text[1:] if lower else text

    # -------------------------------------------------------------- training
    def on_epoch_begin(self, epoch, logs=None):
        self._epoch, self._epoch_start, self._epoch_seconds = epoch, 0, 0.0
        if self._resume_at is not None and self._resume_at[0] == epoch:
            _, self._epoch_start, metrics, self._epoch_seconds = self._resume_at
            for variable, value in zip(self.model.metrics_variables, metrics):
                variable.assign(np.asarray(value, keras.backend.standardize_dtype(variable.dtype)))
            self._resume_at = None
        self.data.set_position(epoch, self._epoch_start)
        self._step = self._epoch_start
        self._clock = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self._step = step = self._epoch_start + batch + 1
        self.global_step = self._epoch * self.data.steps_per_epoch + step
        # The last step's checkpoint is the epoch end's, which follows at once.
        if self.save_freq != "epoch" and self.global_step % self.save_freq == 0 and step < self.data.steps_per_epoch:
            self._save(self._epoch, step)

    def save_now(self):
        """Checkpoints the step that just ended (unless that step's checkpoint is written).

        For a stop between two scheduled checkpoints, such as Ctrl+C
        (`InterruptAtBatchEnd(before_interrupt=backup.save_now)`): the rerun
        then repeats no step. Call it from an `on_train_batch_end` of a
        callback listed after this one, where the model holds a finished
        step; not after an epoch's last batch, whose checkpoint is the epoch
        end's.
        """
        if self._step == self.data.steps_per_epoch:
            raise ValueError(
                "save_now() was called after the last batch of an epoch; that checkpoint is "
                "written at the epoch end. Call it after another batch, or let the epoch end."
            )
        if self._saved_step != self.global_step:
            self._save(self._epoch, self._step)

    def on_epoch_end(self, epoch, logs=None):
        entry = {"epoch": epoch + 1}
        entry.update({key: float(value) for key, value in (logs or {}).items()})
        entry["seconds"] = round(self._epoch_seconds + time.perf_counter() - self._clock, 3)
        self.log.append(entry)
        self._save(epoch + 1, 0)
        # Another callback ended the run inside the epoch (a budget, early stopping).
        self.stopped_early = bool(self.model.stop_training)
        if self._finishing_epoch == epoch:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        self.model._initial_epoch = None
        if self.delete_checkpoint and self._finishing_epoch is None:
            self.delete()

    def delete(self):
        """Deletes the checkpoint folder (once the run's results are safely saved)."""
        if os.path.isdir(self.backup_dir):
            shutil.rmtree(self.backup_dir)

    # ---------------------------------------------------------------- saving
    def _save(self, epoch, step):
        model = self.model  # on JAX, reading .model syncs the variables
        os.makedirs(self.backup_dir, exist_ok=True)
        name = f"checkpoint-{self.global_step:09d}.npz"
        path = os.path.join(self.backup_dir, name)
        values = [_to_storable(v) for v in _checkpoint_variables(model)]
        write_bytes_atomically(path, lambda file: np.savez(file, *values))
        seconds = 0.0 if step == 0 else self._epoch_seconds + time.perf_counter() - self._clock
        state = {
            "format": FORMAT,
            "weights": name,
            "weights_bytes": os.path.getsize(path),
            "epoch": epoch,
            "step": step,
            "global_step": self.global_step,
            "epoch_seconds": seconds,
            "model": _model_signature(model),
            "run": self.run_config,
            "metrics": [_to_list(v) for v in model.metrics_variables],
            "log": self.log,
            "resumes": self.resumes,
            "extra": self.extra_state.get_state() if self.extra_state is not None else {},
        }
        # The state names its weights file: renaming it into place commits the checkpoint.
        self._write_state(state)
        self._saved_step = self.global_step
        self._remove_stale_files(keep=name)

    def _write_state(self, state):
        text = json.dumps(state, indent=1).encode()
        write_bytes_atomically(self._state_path, lambda file: file.write(text))

    def _remove_stale_files(self, keep):
        """Removes weights files no state names, and temp files of interrupted writes."""
        if not os.path.isdir(self.backup_dir):
            return
        for name in os.listdir(self.backup_dir):
            stale = name.startswith("checkpoint-") and name.endswith(".npz") and name != keep
            temp = name.startswith((".checkpoint-", ".state.")) and ".tmp." in name
            if stale or temp:
                os.remove(os.path.join(self.backup_dir, name))


def fit(model, backup, epochs, callbacks=None, **kwargs):
    """`model.fit` on `backup.data` that resumes exactly, inside an epoch too.

    Without a checkpoint in `backup.backup_dir`, or with one at an epoch
    end, this is one `model.fit(backup.data, epochs=epochs, shuffle=False,
    callbacks=[backup, *callbacks])`. With one inside epoch `e`, a first
    call serves that epoch's remaining batches and stops at its end (Keras'
    progress bar shows the remaining steps); a second restores that epoch
    end and runs the rest, unless a callback stopped training during the
    first (`model.stop_training` before the epoch ended). Other callbacks
    see both calls.

    Args:
        model: a compiled, built `keras.Model`.
        backup: an `ExactBackupAndRestore`; its `data` is what is trained on.
        epochs: the run's total number of epochs.
        callbacks: further callbacks.
        **kwargs: any other `model.fit` arguments (not `x`, `shuffle`,
            `initial_epoch`, `steps_per_epoch`).

    Returns:
        The `History` of the last `model.fit` call; `backup.log` holds
        every epoch of the run.

    Example:
    >>> backup = ExactBackupAndRestore("backup", ResumableBatches(x, 32), save_freq=20)  # doctest: +SKIP
    >>> fit(model, backup, epochs=5, verbose=0)  # doctest: +SKIP
    """
    for name in ("x", "shuffle", "initial_epoch", "steps_per_epoch"):
        if name in kwargs:
            raise ValueError(f"fit() sets {name} itself (the data and its position come from `backup`); drop it.")
    callbacks = [backup, *(callbacks or [])]
    position = backup.saved_position()
    backup.data.set_position(0)
    if position is not None and position[1]:
        backup.data.set_position(*position)
        if position[0] + 1 < epochs:
            backup._finishing_epoch = position[0]
            try:
                history = model.fit(backup.data, epochs=epochs, shuffle=False, callbacks=callbacks, **kwargs)
            finally:
                backup._finishing_epoch = None
            if backup.stopped_early:
                return history
            backup._continuing = True
            backup.data.set_position(0)
    return model.fit(backup.data, epochs=epochs, shuffle=False, callbacks=callbacks, **kwargs)


def _checkpoint_variables(model):
    """What a checkpoint holds by value: every model variable, then the optimizer's.

    `model.variables` is the weights (LoRA factors included) and every
    `SeedGenerator` state. Values rather than `model.save_weights`, because
    layers may save a transformed state: a Dense layer with LoRA saves its
    kernel with the adapter merged in and loads it with the adapter zeroed,
    which would restart a LoRA fine-tune from other weights.
    """
    optimizer = getattr(model, "optimizer", None)
    return list(model.variables) + (list(optimizer.variables) if optimizer is not None else [])


def _to_storable(variable):
    value = np.asarray(keras.ops.convert_to_numpy(variable))
    # bfloat16 and float8 (ml_dtypes) are not numpy dtypes that .npz keeps: store their bits.
    return value.view(f"u{value.dtype.itemsize}") if value.dtype.kind == "V" else value


def _from_storable(value, variable):
    dtype = np.dtype(keras.backend.standardize_dtype(variable.dtype))
    if dtype.kind == "V" and value.dtype.kind == "u" and value.dtype.itemsize == dtype.itemsize:
        return value.view(dtype)
    return value


def _model_signature(model):
    shapes = [[list(v.shape), keras.backend.standardize_dtype(v.dtype)] for v in model.variables]
    optimizer = getattr(model, "optimizer", None)
    optimizer_shapes = [list(v.shape) for v in optimizer.variables] if optimizer is not None else []
    return {
        "class": type(model).__name__,
        "shapes": shapes,
        "optimizer": hashlib.sha256(json.dumps(optimizer_shapes).encode()).hexdigest()[:16],
        "metrics": len(model.metrics_variables),
    }


def _to_list(variable):
    return np.asarray(keras.ops.convert_to_numpy(variable)).tolist()
