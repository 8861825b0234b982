"""Time to quality: FID against CPU minutes of training at 32x32 MNIST, our README recipe against diffusers'.

    python -m benchmarks.time_to_quality                  # the README table: 2, 5, 10, 20 CPU minutes
    python -m benchmarks.time_to_quality --contestants keras-torch,keras-torch:no-ema-warmup --budgets 2,5
    python -m benchmarks.time_to_quality --budgets 0.1,0.2 --num-images 50 --final-num-images 50   # a smoke run

Contestants, one at a time, each in its own process:

- `keras-<backend>`: our README recipe (`README_COMMAND`: `train edm` with
  the command line's defaults) on that Keras backend, built by the command
  line's own code, so the benchmark measures exactly what the README runs.
  `keras-<backend>:<ablation>` changes one thing (`ABLATIONS`), to measure
  what each part of the recipe is worth.
- `diffusers`: diffusers' reference recipe, in plain PyTorch: a
  `UNet2DModel` of the same layout and size as `benchmarks.compare`'s
  (`mnist_small`, `benchmarks.diffusers_unet`), `DDPMScheduler` with the
  cosine schedule (`squaredcos_cap_v2`, epsilon prediction), AdamW 1e-3
  (weight decay 1e-4), diffusers' `EMAModel(decay=0.995)` (its default
  warm-up), batch 64, and DDIM-50 sampling (`eta` 0, `clip_sample` on).

Every contestant trains on the 4,000 bundled digits that the held-out split
leaves (`metrics.mnist_training_split`, at 32x32), with one intra-op thread
(`--threads`), until its process has used each budget of CPU time
(`time.process_time()`; the first, compiling batch of each budget's `fit()`
is not counted). After each budget it samples `--num-images` digits with its
own default sampler and scores FID and KID with the bundled MNIST features
against the 1,000 held-out digits; sampling is not counted in the budget.
After the last budget it also samples `--final-num-images` digits at 10 and
50 model evaluations (NFE) with deterministic samplers, and writes a grid.

The report gives, for the target FID (`--target-fid`, default diffusers'
FID at its largest budget), the first budget at which each contestant
reaches it: an upper bound on the CPU time it needs, so the ratio to
diffusers' time is a lower bound on the speed-up. It also gives an estimate,
log FID interpolated linearly in log minutes between the two budgets around
the target (`interpolated_reach`).

A rerun of the same command resumes: every finished budget is kept in
`--work` (`runs/time_to_quality/<contestant>`), with the model at that
budget. A later budget continues from the earlier one's model and optimizer,
on the next epoch's data order.

Writes `benchmarks/results/time_to_quality/results.{md,json}`, `fid.png` (FID
against CPU minutes) and `<contestant>.png` grids, atomically.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

README_COMMAND = "python -m keras_diffusion train edm --dataset mnist --epochs 15 --out runs/edm32"
# The README command's model and training flags, without the run length and the folder.
RECIPE = ("edm",)
ABLATIONS = {
    "ddpm": ("ddpm",),
    "no-ema-warmup": ("edm", "--ema", "0.99", "--ema-warmup-power", "0"),
}
BACKENDS = ("jax", "tensorflow", "torch")
CONTESTANTS = tuple(f"keras-{backend}" for backend in BACKENDS) + ("diffusers",)
IMAGE_SIZE = 32
# Deterministic samplers at the NFE budgets of the final evaluation: (name, steps) per family.
DETERMINISTIC = {
    "edm": {10: [("dpmpp_2m", 10), ("heun", 5)], 50: [("dpmpp_2m", 50), ("heun", 25)]},
    "ddpm": {10: [("dpmpp_2m", 10), ("ddim", 10)], 50: [("dpmpp_2m", 50), ("ddim", 50)]},
}
DIFFUSERS = {"batch_size": 64, "learning_rate": 1e-3, "ema": 0.995, "sample_steps": 50, "network": "mnist_small"}


def parse_contestant(name):
    """`"keras-torch:ddpm"` -> `("keras", "torch", "ddpm")`; `"diffusers"` -> `("diffusers", None, None)`."""
    base, _, ablation = name.partition(":")
    if base == "diffusers" and not ablation:
        return "diffusers", None, None
    backend = base[len("keras-"):] if base.startswith("keras-") else None
    if backend not in BACKENDS or (ablation and ablation not in ABLATIONS):
        raise ValueError(
            f"Unknown contestant {name!r}: use diffusers or keras-BACKEND (BACKEND one of {', '.join(BACKENDS)}), "
            f"optionally followed by :ABLATION (one of {', '.join(ABLATIONS)})."
        )
    return "keras", backend, ablation or None


class Scorer:
    """FID and KID of uint8 digits against the 1,000 held-out ones, with the bundled MNIST features."""

    def __init__(self):
        import keras

        from keras_diffusion import metrics

        self.metrics = metrics
        self.features = metrics.get_feature_extractor("mnist", output="features")
        real, _ = metrics.mnist_held_out(image_size=IMAGE_SIZE, num_images=1000)
        self.real = keras.ops.convert_to_numpy(self.features(real))

    def __call__(self, images):
        import keras

        fake = keras.ops.convert_to_numpy(self.features(images))
        kid = self.metrics.KID(feature_extractor=None)
        kid.update_state(self.real, fake)
        return {"fid": float(self.metrics.fid_from_features(self.real, fake)), "kid": float(kid.result())}


def _timed_samples(draw, num_images, batch_size=250):
    start = time.perf_counter()
    images = np.concatenate([draw(min(batch_size, num_images - i), i) for i in range(0, num_images, batch_size)])
    return images, round(time.perf_counter() - start, 1)


# ------------------------------------------------------------------- Keras
def keras_worker(name, budgets, num_images, final_num_images, work, seed, threads):
    """Trains and scores one `keras-<backend>[:ablation]` contestant; returns its results."""
    import keras

    from benchmarks import compare
    from benchmarks.budget import CPUBudget
    from benchmarks.partial import PartialResults
    from keras_diffusion import load_model
    from keras_diffusion import resume
    from keras_diffusion.cli import build_parser
    from keras_diffusion.cli import train as train_command
    from keras_diffusion.cli.args import generate_kwargs
    from keras_diffusion.files import save_model
    from keras_diffusion.samplers import num_model_evaluations

    _, backend, ablation = parse_contestant(name)
    thread_text = compare._set_threads(backend, threads)
    recipe = ABLATIONS[ablation] if ablation else RECIPE
    args = build_parser().parse_args(
        ["train", *recipe, "--dataset", "mnist", "--exclude-held-out", "--image-size", str(IMAGE_SIZE),
         "--seed", str(seed), "--out", work]
    )
    family = train_command.FAMILIES[args.model]
    process = family.process(args)
    images = train_command.load_images(args, family.presets[args.network]["image_shape"])
    keras.utils.set_random_seed(seed)
    model = train_command.build_model(args, family, process, images)
    sampling = generate_kwargs(args, model)
    scorer = Scorer()
    config = {"contestant": name, "recipe": list(recipe), "budgets": budgets, "num_images": num_images,
              "final_num_images": final_num_images, "seed": seed, "threads": threads}
    stages = PartialResults(os.path.join(work, "stages.partial.json"), config)
    data = resume.ResumableBatches(images, args.batch_size, seed=seed)
    results = {"name": name, "recipe": " ".join(recipe), "threads": thread_text,
               "params": model.network.count_params(), "batch_size": args.batch_size, "budgets": []}
    run_config = {key: value for key, value in vars(args).items() if key not in ("out", "epochs")}
    current = {"model": model, "minutes": 0.0}

    def model_at(minutes):
        if current["minutes"] != minutes:
            current["model"] = load_model(os.path.join(work, f"model_{minutes:g}.keras"))
            current["minutes"] = minutes
        return current["model"]

    for minutes in budgets:
        path = os.path.join(work, f"model_{minutes:g}.keras")

        def train_stage():
            trained = model_at(results["budgets"][-1]["minutes"]) if results["budgets"] else model
            budget = CPUBudget(60.0 * minutes)
            backup = resume.ExactBackupAndRestore(os.path.join(work, "backup"), data, save_freq="epoch",
                                                  run_config=run_config, delete_checkpoint=False, extra_state=budget)
            print(f"{name}: training to {minutes:g} CPU minute(s) ...", flush=True)
            resume.fit(trained, backup, epochs=100_000, callbacks=[budget], verbose=0)
            save_model(trained, path)
            current.update(model=trained, minutes=minutes)
            steps = int(keras.ops.convert_to_numpy(trained.optimizer.iterations))
            return {"cpu_seconds": round(budget.spent(), 1), "steps": steps,
                    "last_epoch_loss": float(backup.log[-1]["loss"])}

        training = stages.stage(f"{minutes:g}/train", train_stage, outputs=[path])

        def score_stage():
            trained = model_at(minutes)
            generated, seconds = _timed_samples(
                lambda n, i: trained.generate(n, seed=seed + i, verbose=False, **sampling), num_images)
            np.save(os.path.join(work, "grid.npy"), generated[:64])
            return dict(scorer(generated), sample_seconds=seconds)

        score = stages.stage(f"{minutes:g}/score", score_stage)
        row = {"minutes": minutes, **training, **score,
               "sampler": f"{sampling['sampler']} {sampling['num_steps']} steps"}
        results["budgets"].append(row)
        print(f"  {name} {minutes:g} min: FID {score['fid']:.2f} ({row['steps']} steps)", flush=True)
    final = model_at(budgets[-1])
    results["deterministic"] = []
    for nfe, choices in DETERMINISTIC[args.model].items():
        for sampler, steps in choices:
            def nfe_stage():
                generated, seconds = _timed_samples(
                    lambda n, i: final.generate(n, sampler=sampler, num_steps=steps, seed=seed + i, verbose=False),
                    final_num_images)
                return dict(scorer(generated), sample_seconds=seconds)

            scored = stages.stage(f"final/{sampler}/{steps}", nfe_stage)
            results["deterministic"].append({"sampler": sampler, "steps": steps,
                                             "nfe": num_model_evaluations(sampler, steps), **scored})
    return results


# --------------------------------------------------------------- diffusers
def diffusers_worker(budgets, num_images, final_num_images, work, seed, threads):
    """Trains and scores diffusers' reference recipe in plain PyTorch; returns its results."""
    import torch
    from diffusers import DDIMScheduler
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

    from benchmarks.compare import NETWORKS
    from benchmarks.diffusers_unet import build_diffusers_unet
    from benchmarks.partial import PartialResults
    from keras_diffusion import metrics
    from keras_diffusion.files import write_bytes_atomically

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    net_cfg = dict(NETWORKS[DIFFUSERS["network"]], image_shape=(IMAGE_SIZE, IMAGE_SIZE, 1))
    unet = build_diffusers_unet(net_cfg)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=DIFFUSERS["learning_rate"], weight_decay=1e-4)
    ema = EMAModel(unet.parameters(), decay=DIFFUSERS["ema"])
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    train_images, _ = metrics.mnist_training_split(image_size=IMAGE_SIZE)
    train = torch.from_numpy(np.ascontiguousarray((train_images * 2.0 - 1.0).transpose(0, 3, 1, 2)))
    scorer = Scorer()
    config = {"contestant": "diffusers", "recipe": DIFFUSERS, "budgets": budgets, "num_images": num_images,
              "final_num_images": final_num_images, "seed": seed, "threads": threads}
    stages = PartialResults(os.path.join(work, "stages.partial.json"), config)
    state = {"step": 0, "cpu_seconds": 0.0, "epoch": 0, "position": 0}
    generator = torch.Generator().manual_seed(seed)
    batch = DIFFUSERS["batch_size"]
    steps_per_epoch = len(train) // batch

    def save(path):
        blob = {"unet": unet.state_dict(), "optimizer": optimizer.state_dict(), "ema": ema.state_dict(),
                "state": dict(state), "generator": generator.get_state()}
        write_bytes_atomically(path, lambda file: torch.save(blob, file))

    def load(path):
        blob = torch.load(path, weights_only=False)
        unet.load_state_dict(blob["unet"])
        optimizer.load_state_dict(blob["optimizer"])
        ema.load_state_dict(blob["ema"])
        state.update(blob["state"])
        generator.set_state(blob["generator"])

    def train_to(seconds):
        unet.train()
        first = True
        while True:
            order = np.random.default_rng([seed, state["epoch"]]).permutation(len(train))
            while state["position"] < steps_per_epoch:
                start = time.process_time()
                x0 = train[order[state["position"] * batch:(state["position"] + 1) * batch]]
                noise = torch.randn(x0.shape, generator=generator)
                t = torch.randint(0, 1000, (x0.shape[0],), generator=generator)
                loss = torch.nn.functional.mse_loss(unet(scheduler.add_noise(x0, noise, t), t).sample, noise)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                ema.step(unet.parameters())
                state["step"] += 1
                state["position"] += 1
                state["loss"] = float(loss.detach())
                if not first:  # the first step of a process warms up its kernels, as Keras' compiling one
                    state["cpu_seconds"] += time.process_time() - start
                first = False
                if state["cpu_seconds"] >= seconds:
                    return
            state["epoch"], state["position"] = state["epoch"] + 1, 0

    @torch.no_grad()
    def sample(count, index, steps):
        ddim = DDIMScheduler.from_config(scheduler.config)
        ddim.set_timesteps(steps)
        noise_generator = torch.Generator().manual_seed(seed + index)
        x = torch.randn((count, 1, IMAGE_SIZE, IMAGE_SIZE), generator=noise_generator)
        for t in ddim.timesteps:
            x = ddim.step(unet(x, t).sample, t, x, eta=0.0).prev_sample
        x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return x.permute(0, 2, 3, 1).numpy()

    def with_ema(draw):
        unet.eval()
        ema.store(unet.parameters())
        ema.copy_to(unet.parameters())
        try:
            return draw()
        finally:
            ema.restore(unet.parameters())

    results = {"name": "diffusers", "recipe": "UNet2DModel, DDPMScheduler cosine, AdamW 1e-3, EMA 0.995, batch 64",
               "threads": f"torch {torch.get_num_threads()}", "params": int(sum(p.numel() for p in unet.parameters())),
               "batch_size": batch, "budgets": []}
    for minutes in budgets:
        path = os.path.join(work, f"checkpoint_{minutes:g}.pt")

        def train_stage():  # continues from the state of the last budget, loaded below
            print(f"diffusers: training to {minutes:g} CPU minute(s) ...", flush=True)
            train_to(60.0 * minutes)
            save(path)
            return {"cpu_seconds": round(state["cpu_seconds"], 1), "steps": state["step"],
                    "last_loss": state["loss"]}

        training = stages.stage(f"{minutes:g}/train", train_stage, outputs=[path])
        load(path)  # this budget's state, also when the stage was finished by an earlier run

        def score_stage():
            generated, seconds = _timed_samples(
                lambda n, i: with_ema(lambda: sample(n, i, DIFFUSERS["sample_steps"])), num_images)
            np.save(os.path.join(work, "grid.npy"), generated[:64])
            return dict(scorer(generated), sample_seconds=seconds)

        score = stages.stage(f"{minutes:g}/score", score_stage)
        results["budgets"].append({"minutes": minutes, **training, **score, "sampler": "ddim 50 steps"})
        print(f"  diffusers {minutes:g} min: FID {score['fid']:.2f} ({training['steps']} steps)", flush=True)
    results["deterministic"] = []
    for steps in (10, 50):
        def nfe_stage():
            generated, seconds = _timed_samples(lambda n, i: with_ema(lambda: sample(n, i, steps)), final_num_images)
            return dict(scorer(generated), sample_seconds=seconds)

        scored = stages.stage(f"final/ddim/{steps}", nfe_stage)
        results["deterministic"].append({"sampler": "ddim", "steps": steps, "nfe": steps, **scored})
    return results


# ------------------------------------------------------------------ report
def reach(result, target):
    """The first budget (CPU minutes) at which `result` reaches FID <= `target`, or None."""
    return next((row["minutes"] for row in result["budgets"] if row["fid"] <= target), None)


def interpolated_reach(result, target):
    """An estimate of the CPU minutes to FID `target`: log FID linear in log minutes between two budgets.

    None unless a budget reaches the target; the first budget itself if it
    already does (no earlier point to interpolate from).
    """
    rows = result["budgets"]
    for before, after in zip(rows, rows[1:]):
        if before["fid"] > target >= after["fid"]:
            fraction = np.log(before["fid"] / target) / np.log(before["fid"] / after["fid"])
            return float(np.exp(np.log(before["minutes"]) + fraction * np.log(after["minutes"] / before["minutes"])))
    return rows[0]["minutes"] if rows and rows[0]["fid"] <= target else None


def markdown(results, target, real_fid):
    """The results as markdown: FID per budget, the time to the target FID, and 10 against 50 NFE."""
    budgets = results["config"]["budgets"]
    contestants = results["contestants"]
    lines = [
        f"FID (KID in brackets) of {results['config']['num_images']} samples against the 1,000 held-out digits "
        "(bundled MNIST classifier features; lower is better) after each budget of CPU minutes of training on "
        f"the 4,000 other digits at {IMAGE_SIZE}x{IMAGE_SIZE}, one thread each. For scale: 1,000 real training "
        f"digits give {real_fid:.2f}.",
        "",
        "| contestant | sampler | " + " | ".join(f"{m:g} min" for m in budgets) + f" | reaches FID {target:.2f} |",
        "|---|---|" + "---|" * (len(budgets) + 1),
    ]
    reference = reach(contestants["diffusers"], target) if "diffusers" in contestants else None
    for name, result in contestants.items():
        cells = [f"{row['fid']:.2f} ({row['kid']:.3f})" for row in result["budgets"]]
        cells += [""] * (len(budgets) - len(cells))
        minutes, estimate = reach(result, target), interpolated_reach(result, target)
        reached = "not within the budgets" if minutes is None else f"by {minutes:g} min"
        if minutes is not None and reference is not None and name != "diffusers":
            reached += f" (at least {reference / minutes:.1f}x sooner"
            reached += f"; about {estimate:.1f} min interpolated, {reference / estimate:.1f}x)" if estimate < minutes else ")"
        lines.append(f"| {name} | {result['budgets'][0]['sampler']} | " + " | ".join(cells) + f" | {reached} |")
    lines += ["", "Training steps and CPU seconds at each budget:", "",
              "| contestant | parameters | batch | " + " | ".join(f"{m:g} min" for m in budgets) + " |",
              "|---|---|---|" + "---|" * len(budgets)]
    for name, result in contestants.items():
        cells = [f"{row['steps']} steps, {row['cpu_seconds']:.0f} s" for row in result["budgets"]]
        lines.append(f"| {name} | {result['params']:,} | {result['batch_size']} | " + " | ".join(cells) + " |")
    lines += ["", f"Deterministic samplers after the last budget ({results['config']['final_num_images']} samples): "
              "FID at about 10 and 50 model evaluations (NFE), and 10 against the best 50.", "",
              "| contestant | sampler | steps | NFE | FID | KID |", "|---|---|---|---|---|---|"]
    for name, result in contestants.items():
        for row in result["deterministic"]:
            lines.append(f"| {name} | {row['sampler']} | {row['steps']} | {row['nfe']} | {row['fid']:.2f} | "
                         f"{row['kid']:.3f} |")
        best10 = min(r["fid"] for r in result["deterministic"] if r["nfe"] <= 10)
        best50 = min(r["fid"] for r in result["deterministic"] if r["nfe"] > 10)
        lines.append(f"| {name} | best at 10 NFE / best at 50 | | | {best10 / best50:.2f}x | |")
    machine = results["machine"]
    lines += ["", f"Machine: {machine['cpu']}, {machine['cores_available']} cores; load average "
              f"{machine['load_average']:.2f} at start. Versions: "
              + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()) + "."]
    return "\n".join(lines) + "\n"


def plot(results, path):
    """FID against CPU minutes, one line per contestant, as a PNG (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from keras_diffusion.files import replace_atomically

    figure, axes = plt.subplots(figsize=(6, 4))
    for name, result in results["contestants"].items():
        rows = result["budgets"]
        axes.plot([r["minutes"] for r in rows], [r["fid"] for r in rows], marker="o", label=name)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("CPU minutes of training (one thread)")
    axes.set_ylabel("FID (MNIST features, 1,000 held-out digits)")
    axes.set_title(f"Time to quality, MNIST {IMAGE_SIZE}x{IMAGE_SIZE}")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    replace_atomically(path, lambda temp: figure.savefig(temp, format="png", dpi=120))
    plt.close(figure)


def _worker_command(name, args, result_path):
    command = [sys.executable, "-m", "benchmarks.time_to_quality", "--worker", name, "--result", result_path,
               "--budgets", ",".join(f"{m:g}" for m in args.budgets), "--num-images", str(args.num_images),
               "--final-num-images", str(args.final_num_images), "--work", args.work, "--seed", str(args.seed),
               "--threads", str(args.threads)]
    _, backend, _ = parse_contestant(name)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND=backend or "torch")
    if backend == "jax":  # one XLA thread, as the others
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_cpu_multi_thread_eigen=false".strip()
    return command, env


def run(args):
    """Runs every contestant in its own process, one at a time; returns the merged results."""
    from benchmarks import compare

    results = {"config": {"budgets": args.budgets, "num_images": args.num_images,
                          "final_num_images": args.final_num_images, "seed": args.seed, "threads": args.threads},
               "readme_command": README_COMMAND, "machine": compare.machine_info(compare.Config()),
               "contestants": {}}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name in args.contestants:
        folder = os.path.join(args.work, name.replace(":", "_"))
        os.makedirs(folder, exist_ok=True)
        result_path = os.path.join(folder, "result.json")
        command, env = _worker_command(name, dict_args(args, work=folder), result_path)
        print(f"=== {name}", flush=True)
        completed = subprocess.run(command, env=env, cwd=root)
        if completed.returncode:
            raise RuntimeError(f"The {name} contestant failed (exit code {completed.returncode}); its output is "
                               f"above. Rerun the same command to resume from its last finished budget.")
        with open(result_path) as file:
            results["contestants"][name] = json.load(file)
    return results


def dict_args(args, **changes):
    """A copy of `args` with `changes`."""
    return argparse.Namespace(**{**vars(args), **changes})


def _budgets(text):
    values = [float(v) for v in text.split(",") if v.strip()]
    if not values or any(v <= 0 for v in values) or values != sorted(set(values)):
        raise argparse.ArgumentTypeError(f"budgets must be increasing positive minutes, e.g. 2,5,10,20; got {text!r}")
    return values


def _contestants(text):
    names = [v.strip() for v in text.split(",") if v.strip()]
    try:
        for name in names:
            parse_contestant(name)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if not names:
        raise argparse.ArgumentTypeError("name at least one contestant")
    return names


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contestants", type=_contestants, default=list(CONTESTANTS),
                        help="comma-separated: " + ", ".join(CONTESTANTS) + "; keras-BACKEND:ABLATION for one of "
                        + ", ".join(ABLATIONS))
    parser.add_argument("--budgets", type=_budgets, default=[2.0, 5.0, 10.0, 20.0], help="CPU minutes, increasing")
    parser.add_argument("--num-images", type=int, default=1000, help="samples scored after each budget")
    parser.add_argument("--final-num-images", type=int, default=1000,
                        help="samples per deterministic sampler after the last budget")
    parser.add_argument("--target-fid", type=float, default=None,
                        help="the FID whose CPU time is compared (default: diffusers' at its largest budget)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of every contestant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default=os.path.join("runs", "time_to_quality"),
                        help="each contestant's finished budgets and models, to resume")
    parser.add_argument("--out", default=os.path.join("benchmarks", "results", "time_to_quality"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.num_images < 2 or args.final_num_images < 2:
        parser.error("--num-images and --final-num-images must be at least 2")
    from keras_diffusion.files import replace_atomically
    from keras_diffusion.files import write_json

    if args.worker:
        kind, _, _ = parse_contestant(args.worker)
        common = (args.budgets, args.num_images, args.final_num_images, args.work, args.seed, args.threads)
        result = (diffusers_worker(*common) if kind == "diffusers" else keras_worker(args.worker, *common))
        write_json(args.result, result)
        return 0
    results = run(args)
    contestants = results["contestants"]
    target = args.target_fid
    if target is None:
        if "diffusers" not in contestants:
            parser.error("without the diffusers contestant, give --target-fid")
        target = contestants["diffusers"]["budgets"][-1]["fid"]
    from keras_diffusion import metrics

    real_train, _ = metrics.mnist_training_split(image_size=IMAGE_SIZE)
    real_fid = Scorer()(np.round(real_train[:1000] * 255).astype("uint8"))["fid"]
    results.update(target_fid=target, real_training_digits_fid=real_fid)
    os.makedirs(args.out, exist_ok=True)
    from keras_diffusion.images import save_grid

    for name in contestants:
        grid = os.path.join(args.work, name.replace(":", "_"), "grid.npy")
        if os.path.isfile(grid):
            save_grid(os.path.join(args.out, name.replace(":", "_") + ".png"), np.load(grid))
    write_json(os.path.join(args.out, "results.json"), results)
    table = markdown(results, target, real_fid)

    def write(path):
        with open(path, "w") as file:
            file.write(table)

    replace_atomically(os.path.join(args.out, "results.md"), write)
    plot(results, os.path.join(args.out, "fid.png"))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
