"""Fault injection: SIGKILL a `train ddpm` run at random moments, rerun it, compare with an uninterrupted run.

    python tools/kill_resume.py --backend tensorflow            # 10 kills, about 5-10 minutes on 2 cores
    python tools/kill_resume.py --backend jax --kills 2 --json out.json

First one uninterrupted run (the reference). Then the same command, in another folder, is
killed with SIGKILL `--kills` times and rerun after each kill, until a rerun finishes. Odd kills
land while a checkpoint file is being written (the tool polls `OUT/backup` for the temp file of
a write in progress and kills the moment it appears); even kills at a random moment after
training starts (Keras' first "Epoch" line): 0.2 to 1 times the reference run's time for the steps
left, divided by the kills still to come, so that all of them land before the run can finish. After each kill the tool reads the checkpoint the
kill left (`state.json`'s step), and each rerun says where it resumed ("Resuming ... (step N of
the run)"): a rerun that resumes anywhere else than at the last checkpoint, or fails to start,
counts against the target. Lost work is estimated from Keras' progress output (the steps the
killed process had reached beyond its last checkpoint; at most `--checkpoint-every`).

Reports: kills, reruns that resumed at the last checkpoint, checkpointed steps repeated (target
0), steps of lost work, and whether the final model's weights and every epoch's loss equal the
reference run's.
"""

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train_args(args, out):
    return [
        "train", "ddpm", "--dataset", "mnist", "--image-size", "16", "--num-train-images", str(args.num_images),
        "--widths", "8,16", "--num-res-blocks", "1", "--attention-resolutions", "", "--norm-groups", "4",
        "--batch-size", str(args.batch_size), "--epochs", str(args.epochs), "--checkpoint-every",
        str(args.checkpoint_every), "--steps", "3", "--num-samples", "4", "--seed", str(args.seed),
        "--backend", args.backend, "--out", out,
    ]


class _Run:
    """One `python -m keras_diffusion train ...` process, its output read as it comes."""

    def __init__(self, args, out):
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "keras_diffusion", *_train_args(args, out)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )
        self.start = time.perf_counter()
        self.output = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

        self.training_since = None

    def _read(self):
        for line in self.process.stdout:
            if self.training_since is None and re.match(r"Epoch \d+/", line):
                self.training_since = time.perf_counter()
            self.output.append(line)

    def text(self):
        return "".join(self.output)

    def wait(self):
        code = self.process.wait()
        self.reader.join()
        return code


def _save_output(folder, index, run):
    with open(os.path.join(folder, f"process_{index:02d}.txt"), "w") as file:
        file.write(run.text())


def _checkpoint_step(out):
    try:
        with open(os.path.join(out, "backup", "state.json")) as file:
            return json.load(file)["global_step"]
    except FileNotFoundError:
        return None


def _writing(out):
    folder = os.path.join(out, "backup")
    try:
        return any(name.startswith(".checkpoint-") for name in os.listdir(folder))
    except FileNotFoundError:
        return False


def _resumed_at(text):
    match = re.search(r"Resuming from .* \(step (\d+) of the run\)", text)
    return int(match.group(1)) if match else None


def _reached(text, steps_per_epoch, resumed_at):
    """The last global step Keras' progress output shows (a lower bound of the steps done)."""
    reached = resumed_at or 0
    offset = resumed_at or 0
    epoch = None
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # the progress bar's colours
    for token in re.split(r"[\r\n]", text):
        found = re.match(r"Epoch (\d+)/\d+", token)
        if found:
            new = int(found.group(1)) - 1
            # The first epoch of a resumed process starts at the checkpoint's step.
            offset = (resumed_at if resumed_at is not None and epoch is None else new * steps_per_epoch)
            epoch = new
            continue
        progress = re.match(r"\s*(\d+)/(\d+) ", token)
        if progress and epoch is not None:
            reached = max(reached, offset + int(progress.group(1)))
    return reached


def _weights(path, backend):
    code = (
        "import sys, numpy as np, keras, keras_diffusion.models, keras_diffusion.networks\n"
        "m = keras.saving.load_model(sys.argv[1])\n"
        "np.savez(sys.argv[2], *[keras.ops.convert_to_numpy(v) for v in m.weights])\n"
    )
    target = path + ".npz"
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    subprocess.run([sys.executable, "-c", code, path, target], cwd=ROOT, env=env, check=True)
    with np.load(target) as arrays:
        return [arrays[name] for name in arrays.files]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "tensorflow"))
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--num-images", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--checkpoint-every", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="seed of the run and of the kill times")
    parser.add_argument("--folder", default=None, help="working folder (default: a temp folder)")
    parser.add_argument("--json", default=None, help="also write the report here")
    args = parser.parse_args(argv)
    folder = args.folder or tempfile.mkdtemp(prefix="kill_resume_")
    rng = random.Random(args.seed)
    steps_per_epoch = -(-args.num_images // args.batch_size)

    reference_out = os.path.join(folder, "reference")
    reference = _Run(args, reference_out)
    if reference.wait() != 0:
        raise SystemExit("The reference run failed:\n" + reference.text())
    reference_seconds = time.perf_counter() - reference.start
    training_seconds = time.perf_counter() - reference.training_since
    print(f"Reference run: {reference_seconds:.1f} s ({training_seconds:.1f} s from the first epoch on), "
          f"{steps_per_epoch * args.epochs} steps.", flush=True)

    out = os.path.join(folder, "killed")
    kills, reruns = [], []
    last_checkpoint = None
    while True:
        run = _Run(args, out)
        if kills:  # this process reruns the previous kill
            reruns.append({"checkpoint": last_checkpoint, "resumed_at": None, "process": run})
        if len(kills) < args.kills:
            mode = "write" if len(kills) % 2 else "random"
            # A share of the time the steps left would take (in the reference run), shared among the
            # kills still to come, so that every kill lands before the run can finish.
            left = 1.0 - (last_checkpoint or 0) / (steps_per_epoch * args.epochs)
            share = max(left, 0.05) * training_seconds / (args.kills - len(kills))
            delay = rng.uniform(0.2, 1.0) * share
            while run.process.poll() is None:
                now = time.perf_counter()
                due = run.training_since is not None and now >= run.training_since + delay
                if (mode == "write" and _writing(out)) or (mode != "write" and due):
                    run.process.send_signal(signal.SIGKILL)
                    break
                if mode == "write" and now > run.start + 2 * reference_seconds:
                    mode, delay = "random (no write seen)", 0.0
                time.sleep(0.001)
            code = run.wait()
            _save_output(folder, len(reruns), run)
            if code == -signal.SIGKILL:
                text = run.text()
                resumed = _resumed_at(text)
                last_checkpoint = _checkpoint_step(out)
                reached = _reached(text, steps_per_epoch, resumed)
                kills.append({
                    "mode": mode, "after_s": round(time.perf_counter() - run.start, 2),
                    "checkpoint": last_checkpoint, "reached": reached,
                    "lost_steps": max(0, reached - (last_checkpoint or 0)),
                })
                print(f"kill {len(kills)} ({mode}) after {kills[-1]['after_s']} s: reached step {reached}, "
                      f"checkpoint at step {last_checkpoint}", flush=True)
                continue
        else:
            code = run.wait()
            _save_output(folder, len(reruns), run)
        if code != 0:
            raise SystemExit(f"A rerun failed with exit code {code}:\n{run.text()}")
        break

    for rerun in reruns:
        rerun["resumed_at"] = _resumed_at(rerun.pop("process").text())
    said = [r for r in reruns if r["resumed_at"] is not None or r["checkpoint"] is None]
    correct = [r for r in said if r["resumed_at"] == r["checkpoint"]]
    repeated = sum(max(0, (r["checkpoint"] or 0) - (r["resumed_at"] or 0)) for r in said)
    with open(os.path.join(reference_out, "train_log.json")) as file:
        reference_log = json.load(file)
    with open(os.path.join(out, "train_log.json")) as file:
        final_log = json.load(file)
    same_losses = [e["loss"] for e in reference_log["epochs"]] == [e["loss"] for e in final_log["epochs"]]
    a = _weights(os.path.join(reference_out, "model.keras"), args.backend)
    b = _weights(os.path.join(out, "model.keras"), args.backend)
    max_difference = max(float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True))
    report = {
        "backend": args.backend,
        "steps": steps_per_epoch * args.epochs,
        "checkpoint_every": args.checkpoint_every,
        "kills": len(kills),
        "kills_during_checkpoint_writes": sum(k["mode"] == "write" for k in kills),
        "reruns": len(reruns),
        "reruns_resumed_at_the_last_checkpoint": len(correct),
        "reruns_killed_before_saying_where": len(reruns) - len(said),
        "checkpointed_steps_repeated": repeated,
        "lost_steps": sum(k["lost_steps"] for k in kills),
        "final_epochs_logged": [e["epoch"] for e in final_log["epochs"]],
        "resume_marks": final_log["resumed"],
        "same_losses": same_losses,
        "weights_max_abs_difference": max_difference,
        "kill_details": kills,
        "folder": folder,
    }
    print(
        f"\n{len(kills)} kills ({report['kills_during_checkpoint_writes']} during checkpoint writes); "
        f"{len(correct)} of {len(said)} reruns that said where resumed at the last checkpoint "
        f"({report['reruns_killed_before_saying_where']} were killed before saying); "
        f"checkpointed steps repeated: {repeated}; lost work: {report['lost_steps']} steps "
        f"(at most {args.checkpoint_every} a kill).\n"
        f"Final model vs uninterrupted: {'equal' if max_difference == 0 else 'DIFFERENT'} "
        f"(max |difference| {max_difference:.3g}); epoch losses {'equal' if same_losses else 'DIFFERENT'}; "
        f"log epochs {report['final_epochs_logged']}; resume marks kept: {len(final_log['resumed'])} "
        f"(reruns that resumed from a checkpoint: {sum(r['checkpoint'] is not None for r in reruns)}; a "
        "rerun killed between reading the checkpoint and writing its mark leaves none)."
    )
    if args.json:
        with open(args.json, "w") as file:
            json.dump(report, file, indent=2)
    ok = len(correct) == len(said) and repeated == 0 and max_difference == 0 and same_losses
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
