"""Runs a model uninterrupted, then interrupted and resumed, and checks that both end equal.

Shared by tests/test_resume.py (every model family) and tests/test_sd3_finetune.py (SD3
fine-tuning). One model object (one compiled train step) runs both: it is put back to its
initial state before each, and the resumed run starts from whatever the interrupted run left,
which the restore must overwrite entirely (a state it missed would still hold the value of
the interrupted run's last step, not the checkpoint's). A resume in a fresh process is what
`tools/kill_resume.py` checks, through the command line.
"""

import keras
import numpy as np

from keras_diffusion import resume
from keras_diffusion.callbacks import InterruptAtBatchEnd


class StopAfter(keras.callbacks.Callback):
    """Stops training after `steps` training steps: a kill (KeyboardInterrupt at once), or Ctrl+C.

    For Ctrl+C it sets the flag of an `InterruptAtBatchEnd` listed after it,
    as its SIGINT handler would during that step.
    """

    def __init__(self, steps, ctrl_c=None):
        super().__init__()
        self.steps, self.seen, self.ctrl_c = steps, 0, ctrl_c

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.steps:
            if self.ctrl_c is None:
                raise KeyboardInterrupt
            self.ctrl_c.requested = True


def train(model, data, folder, epochs, save_freq, stop_after=None):
    """One run; `stop_after`: kill after this many steps, or `("ctrl_c", steps)`. Returns the backup."""
    backup = resume.ExactBackupAndRestore(folder, data, save_freq=save_freq)
    callbacks = []
    if isinstance(stop_after, tuple):
        interrupt = InterruptAtBatchEnd(before_interrupt=backup.save_now)
        callbacks = [StopAfter(stop_after[1], ctrl_c=interrupt), interrupt]
    elif stop_after is not None:
        callbacks = [StopAfter(stop_after)]
    try:
        resume.fit(model, backup, epochs=epochs, callbacks=callbacks, verbose=0)
    except KeyboardInterrupt:
        pass
    return backup


def state_variables(model):
    """Everything a run changes: weights, optimizer (moments, EMA, step count) and generator states."""
    return model.variables + model.optimizer.variables


def assert_same_run(model, data, folder, stops, epochs=3, save_freq=2):
    """Asserts that a run stopped after each of `stops` and resumed equals the uninterrupted one.

    Every state variable and every logged loss must be equal, exactly: on CPU the three
    backends are deterministic for a given program, and the resumed run executes the same
    steps on the same inputs.

    Args:
        model: a compiled, built model.
        data: its `ResumableBatches`.
        folder: a `pathlib.Path` for the two runs' checkpoints.
        stops: each rerun's stop (see `train`); one more rerun then finishes.

    Returns:
        `(backup, reference)`: the resumed and the uninterrupted run's `ExactBackupAndRestore`.
    """
    model.optimizer.build(model.trainable_variables)
    initial = [keras.ops.convert_to_numpy(v) for v in state_variables(model)]
    reference_backup = train(model, data, folder / "a", epochs, save_freq)
    reference = [keras.ops.convert_to_numpy(v) for v in state_variables(model)]
    for variable, value in zip(state_variables(model), initial):
        variable.assign(value)
    for stop in stops:
        train(model, data, folder / "b", epochs, save_freq, stop_after=stop)
    backup = train(model, data, folder / "b", epochs, save_freq)
    for a, b in zip(reference, state_variables(model), strict=True):
        np.testing.assert_array_equal(a, keras.ops.convert_to_numpy(b))
    assert [entry["loss"] for entry in backup.log] == [entry["loss"] for entry in reference_backup.log]
    assert [entry["epoch"] for entry in backup.log] == list(range(1, epochs + 1))
    return backup, reference_backup
