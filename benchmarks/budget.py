"""Training for a budget of CPU time: the `fit()` callback that equal-time benchmarks share.

`benchmarks.families` and `benchmarks.time_to_quality` give each contestant
the same CPU time, `time.process_time()` of its process (all its threads
together), so that other load on a shared machine costs far less than it
would in wall time.
"""

import time

import keras


class CPUBudget(keras.callbacks.Callback):
    """Stops `fit()` once `seconds` of CPU time are spent, counted over every process of a resumed run.

    Each process's first batch (which traces and compiles the train step) is
    not counted. As the `extra_state` of an `ExactBackupAndRestore`, the
    seconds spent travel with every checkpoint.

    Args:
        seconds: the budget.
        clock: the CPU clock (injectable for tests).

    Example:
    >>> budget = CPUBudget(60.0)
    >>> budget.get_state()
    {'cpu_seconds': 0.0}
    """

    def __init__(self, seconds, clock=time.process_time):
        super().__init__()
        self.seconds, self.clock = float(seconds), clock
        self.spent_before, self.first_batch = 0.0, None
        self._begin = self._start = None

    def spent(self):
        """CPU seconds counted so far."""
        return self.spent_before + (self.clock() - self._start if self._start is not None else 0.0)

    def get_state(self):
        return {"cpu_seconds": self.spent()}

    def set_state(self, state):
        self.spent_before = float(state.get("cpu_seconds", 0.0))
        if self._start is not None:
            self._start = self.clock()

    def on_train_begin(self, logs=None):
        if self._begin is None:
            self._begin = self.clock()

    def on_train_batch_end(self, batch, logs=None):
        if self._start is None:
            self.first_batch = self.clock() - self._begin
            self._start = self.clock()
        if self.spent() >= self.seconds:
            self.model.stop_training = True
