"""A benchmark's finished stages, kept in a file so that a rerun skips them.

A long benchmark (`benchmarks.init_effect`, `benchmarks.sd3_captions`) is a
few stages of minutes each. Each finished stage's result is written, with
the ones before it, to a partial-results JSON file, atomically (temp file,
then rename): a kill at any moment leaves the file of the last finished
stage. Rerun the same command and the finished stages are read back
instead of run; the file is deleted once the final results are written.
A stage that a kill interrupts is run again from its start.

Example:
>>> import os, tempfile
>>> path = os.path.join(tempfile.mkdtemp(), "bench.partial.json")
>>> stages = PartialResults(path, {"epochs": 8})
>>> stages.stage("keras", lambda: [0.5, 0.25])
[0.5, 0.25]
>>> PartialResults(path, {"epochs": 8}).stage("keras", lambda: 1 / 0)  # finished: not run again
[0.5, 0.25]
>>> stages.delete()
"""

import json
import os

from keras_diffusion.files import write_json


class PartialResults:
    """The finished stages of one benchmark run, in a JSON file beside its results.

    Args:
        path: the partial-results file (`<name>.partial.json`).
        config: a dict of JSON values that fix the results (the arguments,
            the backend). A file written with other values is refused, with
            the keys that differ, so that no rerun mixes two runs' stages.

    Attributes:
        results: `{name: result}` of the finished stages, in order.
    """

    def __init__(self, path, config):
        self.path = os.fspath(path)
        self.config = json.loads(json.dumps(config))
        self.results = {}
        if not os.path.isfile(self.path):
            return
        try:
            with open(self.path) as file:
                saved = json.load(file)
            saved_config, results = saved["config"], saved["stages"]
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(
                f"The partial results {self.path!r} are damaged ({err}). Delete the file to start over."
            ) from None
        if saved_config != self.config:
            differing = sorted(k for k in set(saved_config) | set(self.config) if saved_config.get(k) != self.config.get(k))
            raise ValueError(
                f"{self.path!r} holds the finished stages of a run with other arguments "
                f"({', '.join(f'{k}: {saved_config.get(k)!r} there, {self.config.get(k)!r} here' for k in differing)}). "
                "Rerun with the same arguments to resume it, or delete the file to start over."
            )
        self.results = results

    def stage(self, name, compute, outputs=()):
        """Returns stage `name`'s result: the saved one, or `compute()`'s, saved at once.

        Args:
            name: the stage's name, unique in the run.
            compute: a function with no arguments returning the result (JSON
                values).
            outputs: paths that the stage writes besides its result (e.g. a
                model folder); the stage counts as finished only if they all
                exist. Write each atomically, before `compute` returns.

        Returns:
            The stage's result.
        """
        if name in self.results and all(os.path.exists(path) for path in outputs):
            print(f"{name}: finished in an earlier run, read from {self.path}", flush=True)
            return self.results[name]
        result = json.loads(json.dumps(compute()))
        self.results[name] = result
        write_json(self.path, {"config": self.config, "stages": self.results})
        return result

    def delete(self):
        """Deletes the file, once the run's final results are written."""
        if os.path.isfile(self.path):
            os.remove(self.path)
