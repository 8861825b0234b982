"""Backend comparison: keras_diffusion on JAX, TensorFlow and PyTorch vs diffusers.

    python -m benchmarks.compare                 # the README table (~5-10 min on 2 cores)
    python -m benchmarks.compare --smoke         # a couple of steps, tiny network

For one network config and seed, each backend runs in its own subprocess
(Keras reads `KERAS_BACKEND` once, at import) and measures:

- training: `fit()` on bundled MNIST, AdamW without EMA. The first `fit()`
  call runs `--warmup-steps` steps and includes tracing and compilation;
  the second runs `--train-steps` steps and gives the steady throughput.
  "compile s" is the first call's time minus its steps at the steady rate.
- the loss: Keras' mean training loss over the timed steps, and an "eval
  loss" of the trained network on one fixed batch with fixed noise and
  timesteps (identical inputs on every backend and for diffusers);
- sampling: `generate(sampler="ddim")`, whole loop, second call (the first
  compiles); images x steps / s;
- peak memory: the worker process's peak resident set size
  (`ru_maxrss`: process RSS, including the framework itself);
- parameters and forward FLOPs per image: counted analytically from the
  Keras layers (2 x multiply-adds of convs, dense layers and attention
  matmuls), and for diffusers with `torch.utils.flop_counter` (same
  convention; the counter skips PyTorch's CPU attention kernel, so the
  attention matmuls are added from the layout). On the torch backend the
  counter also runs on the Keras network, as a cross-check (it excludes
  the attention matmuls there too).

The diffusers reference is a `UNet2DModel` with the same layout
(`benchmarks.diffusers_unet`), trained with the same data, optimizer and
loss in a plain PyTorch loop, sampled with its `DDIMScheduler`.

Parity: the first backend writes its initial weights to `.npz`; every
backend loads them (`set_weights`: the same functional model has the same
weight order everywhere), so all train from the same start. For the parity
check the zero-initialised output conv is replaced by random values, and
each backend computes the network output on fixed inputs and a DDIM sample
(eta=0) from fixed initial noise. The report gives the largest difference
between backends.

Outputs (written atomically): `OUT/compare.md` (markdown table, machine,
versions), `OUT/compare.json` (every number) and `OUT/compare.png` (bar
chart).
"""

import argparse
import dataclasses
import importlib.metadata
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks import report

NETWORKS = {
    # The project's MNIST network (keras_diffusion's `mnist_small` preset).
    "mnist_small": {
        "image_shape": (32, 32, 1),
        "widths": (16, 32, 64, 96),
        "num_res_blocks": 1,
        "attention_resolutions": (8,),
        "norm_groups": 8,
    },
    # The network of the naive-port measurement (widths 32/64/64,
    # attention at the two lower levels; ~0.76 GFLOP per image).
    "mnist_issue": {
        "image_shape": (32, 32, 1),
        "widths": (32, 64, 64),
        "num_res_blocks": 2,
        "attention_resolutions": (16, 8),
        "norm_groups": 8,
    },
    # For smoke tests.
    "tiny": {
        "image_shape": (16, 16, 1),
        "widths": (8, 16),
        "num_res_blocks": 1,
        "attention_resolutions": (8,),
        "norm_groups": 4,
    },
}
KERAS_BACKENDS = ("jax", "tensorflow", "torch")
# Largest allowed |difference| between backends given the same weights and
# inputs (float32; outputs and samples are O(1)). A DDIM loop compounds the
# network's rounding differences over its steps, hence the looser bound.
PARITY_TOLERANCE = {"network": 1e-4, "ddim": 1e-3}


@dataclasses.dataclass
class Config:
    """What one benchmark run measures; shared by every worker.

    Args:
        network: a key of `NETWORKS`.
        batch_size: training batch size.
        warmup_steps: steps of the first (compiling) `fit()` call.
        train_steps: steps of the timed `fit()` call.
        sample_images: images per `generate()` call.
        sample_steps: DDIM steps per `generate()` call.
        parity_images: images in the parity check.
        parity_steps: DDIM steps in the parity check.
        learning_rate: AdamW learning rate (weight decay 1e-4, no EMA).
        schedule: beta schedule of the DDPM.
        seed: seed of data order, initial weights and noise.
        threads: intra-op threads for torch and TensorFlow; 0 means one per
            available core. JAX (XLA) uses every core.
        jit_compile: `"auto"`, `"true"` or `"false"`, passed to Keras' `compile()`.
        dtype_policy: Keras dtype policy, e.g. `"mixed_bfloat16"`; diffusers
            then trains and samples under `torch.autocast(bfloat16)`.
        xla_flags: added to `XLA_FLAGS` of the JAX worker subprocess, e.g.
            `"--xla_cpu_use_onednn=true"` (oneDNN convolutions in XLA:CPU).
        data_format: the U-Net's inner layout, `"channels_last"` or
            `"channels_first"` (same weights and math; see `build_unet`).
        init: the Keras network's starting weights. `"pytorch"` (default)
            redraws every kernel and bias with PyTorch's default rule,
            the one diffusers' `UNet2DModel` starts from, so that the losses
            after a fixed number of steps compare like with like
            (`pytorch_default_weights`). `"keras"` keeps the network's own
            initialisers (Glorot-uniform kernels, zero biases, a
            zero-initialised last convolution).
    """

    network: str = "mnist_small"
    batch_size: int = 64
    warmup_steps: int = 3
    train_steps: int = 15
    sample_images: int = 64
    sample_steps: int = 10
    parity_images: int = 4
    parity_steps: int = 10
    learning_rate: float = 1e-3
    schedule: str = "cosine"
    seed: int = 0
    threads: int = 0
    jit_compile: str = "auto"
    dtype_policy: str = "float32"
    xla_flags: str = ""
    data_format: str = "channels_last"
    init: str = "pytorch"

    @classmethod
    def smoke(cls, **overrides):
        """A config that runs in seconds: tiny network, a couple of steps."""
        values = dict(
            network="tiny", batch_size=8, warmup_steps=1, train_steps=2, sample_images=4,
            sample_steps=3, parity_images=2, parity_steps=3,
        )
        values.update(overrides)
        return cls(**values)

    def resolved_threads(self):
        return self.threads or len(os.sched_getaffinity(0))


# ------------------------------------------------------------------ inputs
def _shared_inputs(cfg, workdir):
    """Data, eval and parity inputs, the same for every worker (written once)."""
    path = os.path.join(workdir, "inputs.npz")
    if os.path.exists(path):
        return dict(np.load(path))
    from keras_diffusion.datasets import load_mnist

    net = NETWORKS[cfg.network]
    size, _, channels = net["image_shape"]
    train_count = (cfg.warmup_steps + cfg.train_steps) * cfg.batch_size
    images, _ = load_mnist(image_size=size, seed=cfg.seed)
    images = np.repeat(images, channels, axis=-1) if channels > 1 else images
    rng = np.random.default_rng(cfg.seed)
    eval_count = min(cfg.batch_size, 64)
    eval_images = images[-eval_count:]
    train = np.resize(images[:-eval_count], (train_count,) + images.shape[1:])
    shape = lambda n: (n,) + tuple(net["image_shape"])  # noqa: E731
    inputs = {
        "train": train.astype("float32"),
        "eval_images": eval_images.astype("float32"),
        "eval_noise": rng.standard_normal(shape(eval_count)).astype("float32"),
        "eval_t": rng.integers(0, 1000, eval_count).astype("int32"),
        "parity_x": rng.standard_normal(shape(cfg.parity_images)).astype("float32"),
        "parity_t": rng.integers(0, 1000, cfg.parity_images).astype("float32"),
        "parity_noise": rng.standard_normal(shape(cfg.parity_images)).astype("float32"),
        "sample_noise": rng.standard_normal(shape(cfg.sample_images)).astype("float32"),
    }
    report.write_atomically(path, lambda tmp: np.savez(tmp, **inputs))
    return inputs


def _noisy(alphas_cumprod, images, noise, t):
    a = np.sqrt(alphas_cumprod[t]).astype("float32")[:, None, None, None]
    s = np.sqrt(1.0 - alphas_cumprod[t]).astype("float32")[:, None, None, None]
    return a * images + s * noise


def _save_weights(path, weights):
    report.write_atomically(
        path, lambda tmp: np.savez(tmp, **{f"w{i:04d}": w for i, w in enumerate(weights)})
    )


def _load_weights(path):
    with np.load(path) as data:
        return [data[k] for k in sorted(data.files)]


def _peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# -------------------------------------------------------------- keras worker
def keras_flops(network):
    """Forward FLOPs per image of a `build_unet` network, counted from its layers.

    Counts 2 x multiply-adds of Conv2D and Dense layers and of the four
    projections and two attention matmuls of `SpatialSelfAttention`; norms,
    activations and additions are left out, as `torch.utils.flop_counter` does.

    Args:
        network: a functional Keras model.

    Returns:
        An int.
    """
    import keras

    from keras_diffusion.networks.attention import SpatialSelfAttention

    total = 0
    for layer in network.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw = layer.kernel_size
            kernel_in = layer.kernel.shape[2]  # the same in either data_format
            pixels = int(np.prod(layer.output.shape[1:])) // layer.filters
            total += 2 * pixels * kh * kw * kernel_in * layer.filters
        elif isinstance(layer, keras.layers.Dense):
            tokens = int(np.prod(layer.input.shape[1:-1] or (1,)))
            total += 2 * tokens * layer.input.shape[-1] * layer.units
        elif isinstance(layer, SpatialSelfAttention):
            channels = layer.query.units
            n = int(np.prod(layer.input.shape[1:])) // channels
            total += 4 * 2 * n * channels * channels + 2 * 2 * n * n * channels
    return total


def pytorch_default_weights(network, seed):
    """`network`'s weights, with kernels and biases drawn as PyTorch initialises them.

    PyTorch's `Conv2d` and `Linear` draw weights and biases uniformly in
    `[-1/sqrt(fan_in), 1/sqrt(fan_in)]` (Kaiming-uniform with `a=sqrt(5)`),
    where `fan_in` is the kernel's input size times its receptive field.
    Keras kernels are `(..., fan_in_channels, units)`, so `fan_in` is the
    product of every kernel dimension but the last. Norm scales and shifts
    keep their ones and zeros, as in PyTorch.

    Args:
        network: a built Keras model.
        seed: seed of the draws.

    Returns:
        A list of NumPy arrays in `network.get_weights()` order.
    """
    rng = np.random.default_rng(seed)
    fan_in = {v.path.rsplit("/", 1)[0]: int(np.prod(v.shape[:-1]))
              for v in network.weights if v.path.endswith("/kernel")}
    weights = []
    for variable, value in zip(network.weights, network.get_weights()):
        owner, name = variable.path.rsplit("/", 1)
        if name in ("kernel", "bias") and owner in fan_in:
            bound = 1.0 / np.sqrt(fan_in[owner])
            value = rng.uniform(-bound, bound, value.shape).astype(value.dtype)
        weights.append(value)
    return weights


def _set_threads(backend, threads):
    if backend == "torch":
        import torch

        torch.set_num_threads(threads)
        return f"torch {torch.get_num_threads()}"
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        return f"tf intra-op {threads}"
    return "XLA default (all cores)"


def run_keras(cfg, workdir, parity_only=False):
    """Measures keras_diffusion on the current Keras backend.

    Args:
        cfg: a `Config`.
        workdir: folder shared by the workers of one run (inputs, weights).
        parity_only: only compute the parity outputs (no training, no timing).

    Returns:
        A dict of results; the parity outputs go to `workdir/parity_<backend>.npz`.
    """
    import keras

    backend = keras.backend.backend()
    threads = _set_threads(backend, cfg.resolved_threads())
    import keras_diffusion as kd

    keras.config.set_dtype_policy(cfg.dtype_policy)
    inputs = _shared_inputs(cfg, workdir)
    keras.utils.set_random_seed(cfg.seed)
    network = kd.networks.build_unet(**NETWORKS[cfg.network], data_format=cfg.data_format)
    init_path = os.path.join(workdir, "init_weights.npz")
    parity_path = os.path.join(workdir, "parity_weights.npz")
    if not os.path.exists(init_path):
        initial = pytorch_default_weights(network, cfg.seed) if cfg.init == "pytorch" else network.get_weights()
        rng = np.random.default_rng(cfg.seed + 1)
        # With Keras' initialisers the head conv starts at zero; random values keep the outputs informative.
        parity = [
            rng.normal(0.0, 0.05, w.shape).astype(w.dtype) if v.path.startswith("out_conv") else w
            for v, w in zip(network.weights, initial)
        ]
        _save_weights(parity_path, parity)
        _save_weights(init_path, initial)
    model = kd.DDPM(network, kd.DiscreteVPSchedule(cfg.schedule), seed=cfg.seed)

    network.set_weights(_load_weights(parity_path))
    # predict_on_batch: one compiled forward pass (eager JAX compiles op by op).
    out = network.predict_on_batch([inputs["parity_x"], inputs["parity_t"]])
    samples = model.generate(
        cfg.parity_images, sampler="ddim", num_steps=cfg.parity_steps, eta=0.0,
        initial_noise=inputs["parity_noise"], use_ema=False, verbose=False, return_float=True,
    )
    parity_file = os.path.join(workdir, f"parity_{backend}.npz")
    np.savez(parity_file, network=np.asarray(out, "float32"), ddim=samples)
    result = {"name": backend, "kind": "keras", "threads": threads}
    if parity_only:
        return result

    network.set_weights(_load_weights(init_path))
    result["params"] = int(network.count_params())
    result["flops"] = keras_flops(network)
    if backend == "torch":
        result["flops_counter"] = _torch_counted_flops(
            lambda x, t: network([x, t], training=False), NETWORKS[cfg.network]["image_shape"], channels_last=True
        )
    model.compile(
        optimizer=keras.optimizers.AdamW(cfg.learning_rate, weight_decay=1e-4),
        jit_compile={"auto": "auto", "true": True, "false": False}[cfg.jit_compile],
    )
    warm = cfg.warmup_steps * cfg.batch_size
    fit = dict(batch_size=cfg.batch_size, epochs=1, shuffle=False, verbose=0)
    start = time.perf_counter()
    model.fit(inputs["train"][:warm], **fit)
    first = time.perf_counter() - start
    start = time.perf_counter()
    history = model.fit(inputs["train"][warm:], **fit)
    steady = time.perf_counter() - start
    step_time = steady / cfg.train_steps
    result.update(
        train_images_per_s=cfg.train_steps * cfg.batch_size / steady,
        train_step_s=step_time,
        compile_s=max(first - cfg.warmup_steps * step_time, 0.0),
        train_loss=float(history.history["loss"][-1]),
    )

    alphas_cumprod = model.schedule.alphas_cumprod
    noisy = _noisy(alphas_cumprod, inputs["eval_images"], inputs["eval_noise"], inputs["eval_t"])
    pred = np.asarray(network.predict_on_batch([noisy, inputs["eval_t"].astype("float32")]), "float32")
    result["eval_loss"] = float(np.mean((pred - inputs["eval_noise"]) ** 2))

    generate = dict(
        sampler="ddim", num_steps=cfg.sample_steps, eta=0.0, initial_noise=inputs["sample_noise"],
        use_ema=False, verbose=False,
    )
    result.update(_time_sampling(lambda: model.generate(cfg.sample_images, **generate), cfg))
    return result


def _time_sampling(sample, cfg):
    """Times `sample()` twice: the second call gives the throughput, the first minus it the compile time."""
    start = time.perf_counter()
    sample()
    first = time.perf_counter() - start
    start = time.perf_counter()
    sample()
    sampling = time.perf_counter() - start
    return dict(
        sample_image_steps_per_s=cfg.sample_images * cfg.sample_steps / sampling,
        sample_compile_s=max(first - sampling, 0.0),
        peak_rss_mb=_peak_rss_mb(),
    )


# ---------------------------------------------------------- diffusers worker
def _torch_counted_flops(forward, image_shape, channels_last):
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    shape = (1,) + tuple(image_shape) if channels_last else (1, image_shape[-1]) + tuple(image_shape[:2])
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        forward(torch.zeros(shape), torch.full((1,), 10.0))
    return int(counter.get_total_flops())


def run_diffusers(cfg, workdir):
    """Measures the matched diffusers `UNet2DModel`, trained and sampled in plain PyTorch.

    Args:
        cfg: a `Config`.
        workdir: the folder in which a Keras worker wrote `inputs.npz`.

    Returns:
        A dict of results.
    """
    import contextlib

    import torch
    from diffusers import DDIMScheduler
    from diffusers import DDPMScheduler

    from benchmarks.diffusers_unet import attention_matmul_flops
    from benchmarks.diffusers_unet import build_diffusers_unet

    threads = cfg.resolved_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    path = os.path.join(workdir, "inputs.npz")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} is missing: run a Keras backend first (it writes the shared inputs)."
        )
    inputs = dict(np.load(path))
    net_cfg = NETWORKS[cfg.network]
    model = build_diffusers_unet(net_cfg)
    beta_schedule = {"cosine": "squaredcos_cap_v2", "linear": "linear"}[cfg.schedule]
    train_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule)
    nchw = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))  # noqa: E731
    bf16 = cfg.dtype_policy == "mixed_bfloat16"

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    result = {
        "name": "diffusers",
        "kind": "diffusers UNet2DModel (PyTorch eager)",
        "threads": f"torch {torch.get_num_threads()}",
        "params": int(sum(p.numel() for p in model.parameters())),
        "flops": _torch_counted_flops(lambda x, t: model(x, t).sample, net_cfg["image_shape"], False)
        + attention_matmul_flops(net_cfg),
    }
    # Keras' AdamW defaults: epsilon 1e-7; weight decay as given to Keras.
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=1e-4, eps=1e-7)
    generator = torch.Generator().manual_seed(cfg.seed)
    train = nchw(inputs["train"])

    def steps(first, count):
        losses = []
        for i in range(first, first + count):
            x0 = train[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            noise = torch.randn(x0.shape, generator=generator)
            t = torch.randint(0, 1000, (x0.shape[0],), generator=generator)
            with autocast():
                pred = model(train_scheduler.add_noise(x0, noise, t), t).sample
            loss = torch.nn.functional.mse_loss(pred.float(), noise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        return losses

    model.train()
    start = time.perf_counter()
    steps(0, cfg.warmup_steps)
    first = time.perf_counter() - start
    start = time.perf_counter()
    losses = steps(cfg.warmup_steps, cfg.train_steps)
    steady = time.perf_counter() - start
    step_time = steady / cfg.train_steps
    model.eval()
    alphas_cumprod = train_scheduler.alphas_cumprod.numpy().astype("float64")
    noisy = _noisy(alphas_cumprod, inputs["eval_images"], inputs["eval_noise"], inputs["eval_t"])
    with torch.no_grad():
        pred = model(nchw(noisy), torch.from_numpy(inputs["eval_t"]).long()).sample
    eval_noise = inputs["eval_noise"].transpose(0, 3, 1, 2)
    result.update(
        train_images_per_s=cfg.train_steps * cfg.batch_size / steady,
        train_step_s=step_time,
        compile_s=max(first - cfg.warmup_steps * step_time, 0.0),
        train_loss=float(np.mean(losses)),
        eval_loss=float(np.mean((pred.numpy() - eval_noise) ** 2)),
    )

    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule, clip_sample=True)

    @torch.no_grad()
    def sample():
        scheduler.set_timesteps(cfg.sample_steps)
        x = nchw(inputs["sample_noise"])
        for t in scheduler.timesteps:
            with autocast():
                eps = model(x, t).sample
            x = scheduler.step(eps.float(), t, x, eta=0.0).prev_sample
        return x

    result.update(_time_sampling(sample, cfg))
    return result


# ---------------------------------------------------------------- machine
def machine_info(cfg):
    """The CPU, core count, load and package versions, for the report."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = {}
    for package in ("keras", "tensorflow", "jax", "jaxlib", "torch", "diffusers", "numpy"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return {
        "cpu": cpu,
        "cores_available": len(os.sched_getaffinity(0)),
        "cores_total": os.cpu_count(),
        "threads": cfg.resolved_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "load_average": os.getloadavg()[0],
    }


# ------------------------------------------------------------ orchestration
def parity_differences(workdir, backends):
    """Largest |difference| of each backend's parity outputs from the first's.

    Returns:
        A list of dicts `{"pair", "network", "ddim"}` (max abs differences).
    """
    loaded = {}
    for backend in backends:
        path = os.path.join(workdir, f"parity_{backend}.npz")
        with np.load(path) as data:
            loaded[backend] = {k: data[k] for k in data.files}
    reference = backends[0]
    rows = []
    for backend in backends[1:]:
        rows.append({
            "pair": f"{reference} vs {backend}",
            **{key: float(np.max(np.abs(loaded[backend][key] - loaded[reference][key])))
               for key in ("network", "ddim")},
        })
    return rows


def _run_subprocess(worker, cfg, workdir, backend=None, parity_only=False, timeout=900):
    config_path = os.path.join(workdir, "config.json")
    out_path = os.path.join(workdir, f"result_{worker}_{backend}.json")
    command = [sys.executable, "-m", "benchmarks.compare", "--worker", worker, "--workdir", workdir,
               "--config", config_path, "--result", out_path]
    if parity_only:
        command.append("--parity-only")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    if backend:
        env["KERAS_BACKEND"] = backend
    if backend == "jax" and cfg.xla_flags:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {cfg.xla_flags}".strip()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    completed = subprocess.run(command, env=env, cwd=root, capture_output=True, text=True, timeout=timeout)
    if completed.returncode:
        raise RuntimeError(
            f"The {worker} worker ({backend or 'torch'}) failed with exit code "
            f"{completed.returncode}:\n{completed.stderr[-4000:]}"
        )
    with open(out_path) as f:
        return json.load(f)


def run(cfg, backends=KERAS_BACKENDS, diffusers=True, out=None, in_process=(), parity_backends=None,
        workdir=None, timeout=900):
    """Runs the benchmark and writes the report.

    Args:
        cfg: a `Config`.
        backends: Keras backends to measure.
        diffusers: also measure the diffusers reference.
        out: folder of `compare.md/json/png`; None writes nothing.
        in_process: the backends (the current Keras backend, `"diffusers"`)
            to run in this process instead of a subprocess (tests).
        parity_backends: backends in the parity check; defaults to `backends`.
            Those not in `backends` only compute parity outputs.
        workdir: scratch folder; a temporary one by default.
        timeout: seconds per worker subprocess.

    Returns:
        `(results, markdown)`: the dict written to `compare.json` and the table.
    """
    if cfg.init not in ("pytorch", "keras"):
        raise ValueError(f"`init` must be 'pytorch' or 'keras', got {cfg.init!r}.")
    unknown = [b for b in list(backends) + list(parity_backends or []) if b not in KERAS_BACKENDS]
    if unknown or not backends:
        raise ValueError(
            f"Backends must be a non-empty subset of {KERAS_BACKENDS}; got {list(backends)}"
            f" (unknown: {unknown})."
        )
    parity_backends = list(parity_backends or backends)
    with tempfile.TemporaryDirectory(dir=workdir) as scratch:
        with open(os.path.join(scratch, "config.json"), "w") as f:
            json.dump(dataclasses.asdict(cfg), f)
        machine = machine_info(cfg)
        rows = []
        order = list(backends) + [b for b in parity_backends if b not in backends]
        for backend in order:
            parity_only = backend not in backends
            if backend in in_process:
                rows.append(run_keras(cfg, scratch, parity_only=parity_only))
            else:
                rows.append(_run_subprocess("keras", cfg, scratch, backend, parity_only, timeout))
        rows = [r for r in rows if r["name"] in backends]
        if diffusers:
            if "diffusers" in in_process:
                rows.append(run_diffusers(cfg, scratch))
            else:
                rows.append(_run_subprocess("diffusers", cfg, scratch, timeout=timeout))
        parity = parity_differences(scratch, parity_backends) if len(parity_backends) > 1 else []
    machine["load_average_end"] = os.getloadavg()[0]
    results = {
        "config": dataclasses.asdict(cfg),
        "network_config": NETWORKS[cfg.network],
        "machine": machine,
        "rows": rows,
        "parity": parity,
        "parity_tolerance": PARITY_TOLERANCE,
    }
    markdown = report.markdown(results)
    if out:
        os.makedirs(out, exist_ok=True)
        report.write_atomically(os.path.join(out, "compare.md"), lambda p: _write_text(p, markdown))
        report.write_atomically(
            os.path.join(out, "compare.json"), lambda p: _write_text(p, json.dumps(results, indent=2) + "\n")
        )
        report.bar_chart(os.path.join(out, "compare.png"), results)
    return results, markdown


def _write_text(path, text):
    with open(path, "w") as f:
        f.write(text)


def _parse(argv):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.compare",
        description="Compare keras_diffusion on JAX/TensorFlow/PyTorch with a matched diffusers UNet2DModel.",
    )
    defaults = Config()
    parser.add_argument("--smoke", action="store_true", help="tiny network, a couple of steps (CI)")
    parser.add_argument("--network", choices=sorted(NETWORKS), default=None,
                        help=f"network config (default {defaults.network}; tiny with --smoke)")
    for field in dataclasses.fields(Config):
        if field.name == "network":
            continue
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default), default=None,
                            help=f"default {field.default}")
    parser.add_argument("--backends", default=",".join(KERAS_BACKENDS), help="comma-separated Keras backends")
    parser.add_argument("--no-diffusers", action="store_true", help="skip the diffusers reference")
    parser.add_argument("--out", default="benchmarks/results", help="folder of compare.md/json/png")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per worker")
    # Internal: one worker in this process.
    parser.add_argument("--worker", choices=("keras", "diffusers"), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--parity-only", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None):
    """Command-line entry point; see the module docstring."""
    args = _parse(argv)
    if args.worker:
        with open(args.config) as f:
            cfg = Config(**json.load(f))
        if args.worker == "keras":
            result = run_keras(cfg, args.workdir, parity_only=args.parity_only)
        else:
            result = run_diffusers(cfg, args.workdir)
        report.write_atomically(args.result, lambda p: _write_text(p, json.dumps(result)))
        return 0
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)
                 if getattr(args, f.name, None) is not None}
    cfg = Config.smoke(**overrides) if args.smoke else Config(**overrides)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    _, markdown = run(cfg, backends, diffusers=not args.no_diffusers, out=args.out, timeout=args.timeout)
    print(markdown)
    print(f"Wrote {args.out}/compare.md, compare.json and compare.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
