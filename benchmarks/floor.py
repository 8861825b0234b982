"""Kernel floor: how much of a step is spent in the kernels the model's math requires.

    python -m benchmarks.floor            # mnist_small, ~2 min -> benchmarks/results/floor.{md,json}
    python -m benchmarks.floor --network mnist_issue --out benchmarks/results/mnist_issue

`benchmarks.compare` says how fast each run is; this says how fast any run
could be. For the diffusers reference (PyTorch eager) and for
keras_diffusion on the torch and TensorFlow backends, it profiles
`--steps` training steps and `--steps` forward passes (batch
`--batch-size`) and splits the time into:

- convolution: the convolution kernels, forward and backward;
- attention + matmul: PyTorch's fused attention kernel and every matrix
  product (TensorFlow has no fused attention kernel on CPU: its einsums
  and matmuls count here, its softmax under "other ops");
- other ops: every other op (normalization, activations, additions,
  copies, the optimizer update, random draws).

The first two make the floor: a run that keeps the same kernels and makes
everything else free still takes that long. The report gives two bounds on
the speed-up over diffusers' measured wall time:

- the smallest floor of the PyTorch runs (diffusers, keras_diffusion on
  torch), with everything else free;
- that floor plus diffusers' own "other ops" time, i.e. everything else
  done as fast as PyTorch's fused native kernels (`native_group_norm`,
  `silu`, ...) do it.

Wall times are measured without the profiler; kernel times with it
(PyTorch's `torch.profiler`, TensorFlow's `tf.profiler`), summed per step.
The profiler adds a few microseconds per op, which matters for small ops,
not for the millisecond-scale kernels of the floor. TensorFlow runs its
graph's ops on two executor threads at once, so its op times can add up to
more than its wall time; its rows show where its time goes but do not enter
the bounds.

Outputs (written atomically): `OUT/floor.md` and `OUT/floor.json`.
"""

import argparse
import collections
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks import compare
from benchmarks import report

CATEGORIES = ("convolution", "attention + matmul", "other ops")
_TORCH_MATMULS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear"}
_TF_CONTAINERS = re.compile(r"PartitionedCall|While|If|Case|_Send|_Recv")
_TF_OP_TYPE = re.compile(r"_?[A-Z][A-Za-z0-9]*")  # "scope/name:OpType" events name an op


def classify_torch(name):
    """The category of a `torch.profiler` event name, or None if it is not an op."""
    if not name.startswith("aten::"):
        return None
    if "convolution" in name:
        return "convolution"
    if "scaled_dot_product" in name or name in _TORCH_MATMULS:
        return "attention + matmul"
    return "other ops"


def classify_tensorflow(op_type):
    """The category of a TensorFlow op type (`_MklNativeFusedConv2D`, `AddV2`, ...), or None."""
    if _TF_CONTAINERS.search(op_type):
        return None
    if "Conv2D" in op_type:
        return "convolution"
    if "MatMul" in op_type or "Einsum" in op_type:
        return "attention + matmul"
    return "other ops"


def _torch_profile(fn):
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    totals = collections.Counter()
    for event in prof.key_averages():
        category = classify_torch(event.key)
        if category:
            totals[category] += event.self_cpu_time_total / 1e3  # us -> ms
    return totals


def _tensorflow_profile(fn):
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        fn()
        tf.profiler.experimental.stop()
        (path,) = glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb"))
        space = xplane_pb2.XSpace()
        with open(path, "rb") as f:
            space.ParseFromString(f.read())
    totals = collections.Counter()
    for plane in space.planes:
        names = {key: meta.name for key, meta in plane.event_metadata.items()}
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = names.get(event.metadata_id, "")
                op_type = name.rsplit(":", 1)[-1]
                if ":" not in name or name.startswith("ExecutorState") or not _TF_OP_TYPE.fullmatch(op_type):
                    continue
                category = classify_tensorflow(op_type)
                if category:
                    totals[category] += event.duration_ps / 1e9  # ps -> ms
    return totals


def _measure(fn, steps, profiler):
    """Wall ms per step of `fn(n)`, which runs n steps (after 2 warm-up steps), and its split by category."""
    fn(2)
    start = time.perf_counter()
    fn(steps)
    wall = (time.perf_counter() - start) / steps * 1e3
    totals = profiler(lambda: fn(steps))
    row = {"wall_ms": wall}
    row.update({c: totals.get(c, 0.0) / steps for c in CATEGORIES})
    return row


def measure_diffusers(network, batch_size, steps, threads):
    """Per-step split of diffusers' training step (AdamW, epsilon MSE) and forward pass."""
    import torch
    from diffusers import DDPMScheduler

    from benchmarks.diffusers_unet import build_diffusers_unet

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net_cfg = compare.NETWORKS[network]
    model = build_diffusers_unet(net_cfg)
    size, _, channels = net_cfg["image_shape"]
    images = torch.rand(batch_size, channels, size, size) * 2 - 1
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4, eps=1e-7)

    def train(steps):
        for _ in range(steps):
            noise = torch.randn_like(images)
            t = torch.randint(0, 1000, (batch_size,))
            loss = torch.nn.functional.mse_loss(model(scheduler.add_noise(images, noise, t), t).sample, noise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    t = torch.full((batch_size,), 500)

    @torch.no_grad()
    def forward(steps):
        for _ in range(steps):
            model(images, t)

    return {"train": _measure(train, steps, _torch_profile), "forward": _measure(forward, steps, _torch_profile)}


def measure_keras(network, batch_size, steps, threads):
    """Per-step split of `DDPM.fit()` steps and of the network's forward pass, on the current backend."""
    import keras

    import keras_diffusion as kd

    backend = keras.backend.backend()
    compare._set_threads(backend, threads)
    profiler = {"torch": _torch_profile, "tensorflow": _tensorflow_profile}[backend]
    keras.utils.set_random_seed(0)
    net_cfg = compare.NETWORKS[network]
    unet = kd.networks.build_unet(**net_cfg)
    model = kd.DDPM(unet, kd.DiscreteVPSchedule("cosine"), seed=0)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=1e-4))
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (batch_size,) + tuple(net_cfg["image_shape"])).astype("float32")
    t = np.full((batch_size,), 500.0, "float32")

    def train(steps):  # one fit() call, so its per-call setup is spread over the steps
        model.fit(np.concatenate([images] * steps), batch_size=batch_size, epochs=1, shuffle=False, verbose=0)

    def forward(steps):
        for _ in range(steps):
            unet.predict_on_batch([images, t])

    return {"train": _measure(train, steps, profiler), "forward": _measure(forward, steps, profiler)}


def markdown(results):
    """The report: one row per run and pass, then the best case it implies."""
    lines = [
        "| run | pass | wall ms | convolution ms | attention + matmul ms | other ops ms | floor ms | floor / wall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, passes in results["runs"].items():
        for kind, row in passes.items():
            floor = row["convolution"] + row["attention + matmul"]
            lines.append(
                f"| {name} | {kind} | {row['wall_ms']:.0f} | {row['convolution']:.0f} | "
                f"{row['attention + matmul']:.0f} | {row['other ops']:.0f} | {floor:.0f} | "
                f"{floor / row['wall_ms']:.0%} |"
            )
    lines.append("")
    for kind, bound in results["best_case"].items():
        lines.append(
            f"- {kind}: diffusers takes {bound['diffusers_wall_ms']:.0f} ms. The smallest floor is "
            f"{bound['floor_ms']:.0f} ms ({bound['run']}): with everything else free, at most "
            f"**{bound['max_speedup']:.2f}x** diffusers. With everything else as fast as diffusers' fused "
            f"PyTorch kernels ({bound['diffusers_other_ms']:.0f} ms), at most **{bound['native_rest_speedup']:.2f}x**."
        )
    cfg = results["config"]
    lines += [
        "",
        f"Network `{cfg['network']}` {compare.NETWORKS[cfg['network']]}; batch {cfg['batch_size']}, "
        f"{cfg['steps']} profiled steps, {cfg['threads']} threads. Command: `python -m benchmarks.floor "
        f"--network {cfg['network']}`.",
        f"Machine: {results['machine']['cpu']}, {results['machine']['cores_available']} cores; load average "
        f"{results['machine']['load_average']:.2f} at start. Versions: "
        + ", ".join(f"{k} {v}" for k, v in results["machine"]["versions"].items()) + ".",
    ]
    return "\n".join(lines) + "\n"


def best_case(runs):
    """For each pass, the smallest floor and the speed-ups over diffusers it allows (module docstring).

    TensorFlow's runs are left out: its ops overlap on two executor
    threads, so their summed times are not a bound on wall time.
    """
    bounds = {}
    for kind in ("train", "forward"):
        floors = {name: p[kind]["convolution"] + p[kind]["attention + matmul"]
                  for name, p in runs.items() if name != "tensorflow"}
        run = min(floors, key=floors.get)
        wall = runs["diffusers"][kind]["wall_ms"]
        other = runs["diffusers"][kind]["other ops"]
        bounds[kind] = {"run": run, "floor_ms": floors[run], "diffusers_wall_ms": wall, "diffusers_other_ms": other,
                        "max_speedup": wall / floors[run], "native_rest_speedup": wall / (floors[run] + other)}
    return bounds


def _worker(backend, args):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        command = [sys.executable, "-m", "benchmarks.floor", "--worker", "--result", out,
                   "--network", args.network, "--batch-size", str(args.batch_size),
                   "--steps", str(args.steps), "--threads", str(args.threads)]
        done = subprocess.run(command, env=env, cwd=root, capture_output=True, text=True, timeout=1800)
        if done.returncode:
            raise RuntimeError(f"The {backend} worker failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
        with open(out) as f:
            return json.load(f)


def main(argv=None):
    """Command-line entry point; see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.floor", description=__doc__.splitlines()[0])
    parser.add_argument("--network", choices=sorted(compare.NETWORKS), default="mnist_small")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--backends", default="torch,tensorflow", help="Keras backends to profile (torch, tensorflow)")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        result = measure_keras(args.network, args.batch_size, args.steps, args.threads)
        report.write_atomically(args.result, lambda p: compare._write_text(p, json.dumps(result)))
        return 0
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(backends) - {"torch", "tensorflow"}
    if unknown:
        parser.error(f"--backends takes torch and/or tensorflow (JAX's fused XLA kernels cannot be split); got {sorted(unknown)}")
    cfg = compare.Config(network=args.network, threads=args.threads)
    machine = compare.machine_info(cfg)
    runs = {"diffusers": measure_diffusers(args.network, args.batch_size, args.steps, args.threads)}
    for backend in backends:
        runs[backend] = _worker(backend, args)
    results = {
        "config": {"network": args.network, "batch_size": args.batch_size, "steps": args.steps, "threads": args.threads},
        "machine": machine,
        "runs": runs,
        "best_case": best_case(runs),
    }
    text = markdown(results)
    os.makedirs(args.out, exist_ok=True)
    report.write_atomically(os.path.join(args.out, "floor.md"), lambda p: compare._write_text(p, text))
    report.write_atomically(
        os.path.join(args.out, "floor.json"), lambda p: compare._write_text(p, json.dumps(results, indent=2) + "\n")
    )
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
