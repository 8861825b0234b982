"""FID of a trained MNIST model for each sampler at several model-evaluation budgets.

For each sampler and each budget of model evaluations (NFE) it generates
`--num-images` digits with one seed, measures FID and KID against the
bundled held-out real digits with the bundled MNIST classifier's features
(`keras_diffusion.metrics`), and writes:

- `OUT.md`: a markdown table (rows: samplers; columns: NFE), with the
  command, machine and a real-vs-real reference FID;
- `OUT.json`: every number, plus the settings;
- `OUT.png`: FID against NFE, one line per sampler (log-scaled axes).

Heun evaluates the model `2 * steps - 1` times, so it gets the largest
step count that fits the budget and the table shows its actual NFE.

Usage (the README's quality table; run from the repository root):
    python -m keras_diffusion train ddpm --dataset mnist --exclude-held-out \\
        --image-size 16 --epochs 15 --out runs/quality16
    python -m tools.sampler_quality --model runs/quality16/model.keras \\
        --out docs/sampler_quality --budgets 10,20,50
    python -m tools.sampler_quality --model runs/quality16/model.keras \\
        --out docs/sampler_quality --budgets 10,20,50,1000 --samplers ddpm --reuse
"""

import argparse
import json
import os
import platform
import sys
import time

SAMPLERS = ("ddpm", "ddim", "euler", "heun", "dpmpp_2m")


def steps_for_budget(sampler, budget):
    """The largest step count whose model evaluations fit `budget`."""
    from keras_diffusion.samplers import num_model_evaluations

    steps = budget
    while steps > 1 and num_model_evaluations(sampler, steps) > budget:
        steps -= 1
    return steps


def _machine():
    import keras

    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    devices = []
    if keras.backend.backend() == "jax":
        import jax

        devices = [str(d.device_kind) for d in jax.devices()]
    return {"cpu": cpu, "cores": os.cpu_count(), "backend": keras.backend.backend(), "devices": devices}


def _fid_and_kid(real, generated):
    from keras_diffusion.metrics import FID
    from keras_diffusion.metrics import KID

    fid, kid = FID(feature_extractor="mnist"), KID(feature_extractor="mnist")
    fid.update_state(real, generated)
    kid.update_state(real, generated)
    return float(fid.result()), float(kid.result())


def _plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from keras_diffusion.files import replace_atomically

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for sampler in SAMPLERS:
        rows = sorted((r for r in results if r["sampler"] == sampler), key=lambda r: r["nfe"])
        if not rows:
            continue
        ax.plot([r["nfe"] for r in rows], [r["fid"] for r in rows], marker="o", label=sampler)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("model evaluations (NFE)")
    ax.set_ylabel("FID (MNIST-classifier features)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    replace_atomically(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def _table(results, settings, reference_fid):
    budgets = settings["budgets"]
    lines = [
        f"FID (lower is better) of {settings['num_images']} samples against {settings['num_real']} "
        "held-out real digits, MNIST-classifier features. Columns are model-evaluation budgets; "
        "a cell shows FID, and the evaluations actually used where they differ; "
        "\"-\" marks a cell not measured.",
        "",
        "| sampler | " + " | ".join(f"NFE {b}" for b in budgets) + " |",
        "|---|" + "---|" * len(budgets),
    ]
    for sampler in SAMPLERS:
        cells = []
        for budget in budgets:
            row = next((r for r in results if r["sampler"] == sampler and r["budget"] == budget), None)
            if row is None:
                cells.append("-")
                continue
            note = f" ({row['nfe']})" if row["nfe"] != budget else ""
            cells.append(f"{row['fid']:.2f}{note}")
        lines.append(f"| {sampler} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Reference: FID of {settings['num_real']} real training digits against the held-out ones: "
        f"{reference_fid:.2f}.",
        f"Settings: sigma schedule `{settings['sigma_schedule']}`, seed {settings['seed']}, "
        f"clip_sample on, EMA weights; model `{settings['model']}`.",
        f"Machine: {settings['machine']['cpu']} ({settings['machine']['cores']} cores), backend "
        f"{settings['machine']['backend']}, devices {settings['machine']['devices']}. "
        f"Total time {settings['seconds']:.0f} s.",
        "Commands, in order: " + "; ".join(f"`{c}`" for c in settings["commands"]),
    ]
    return "\n".join(lines) + "\n"


def _reusable_results(args):
    """Rows of an earlier run to OUT.json with the same settings, and its total time."""
    path = args.out + ".json"
    if not os.path.exists(path):
        return [], 0.0, []
    with open(path) as file:
        earlier = json.load(file)
    settings = earlier["settings"]
    same = {
        "model": args.model, "seed": args.seed, "num_images": args.num_images,
        "sigma_schedule": args.sigma_schedule,
    }
    differing = {k: settings[k] for k in same if settings[k] != same[k]}
    if differing:
        raise SystemExit(f"--reuse: {path} was measured with other settings {differing}; drop --reuse.")
    return earlier["results"], settings["seconds"], settings["commands"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a trained MNIST .keras model")
    parser.add_argument("--out", required=True, help="output path prefix (writes .md, .json, .png)")
    parser.add_argument("--num-images", type=int, default=1000, help="samples per cell")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (the same for every cell)")
    parser.add_argument("--sigma-schedule", default="model", help="model | karras | exponential")
    parser.add_argument("--batch-size", type=int, default=1000, help="images generated per call")
    parser.add_argument(
        "--budgets", default="10,20,50,1000", help="comma-separated model-evaluation budgets (columns)"
    )
    parser.add_argument(
        "--samplers", default=",".join(SAMPLERS), help="comma-separated samplers to measure (rows)"
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep the cells already in OUT.json (same model, seed, images and schedule) "
        "and measure only the missing ones",
    )
    args = parser.parse_args(argv)
    budgets = tuple(int(b) for b in args.budgets.split(","))
    samplers = tuple(args.samplers.split(","))
    unknown = sorted(set(samplers) - set(SAMPLERS))
    if unknown:
        parser.error(f"unknown sampler(s) {unknown}; choose from {list(SAMPLERS)}")

    import keras
    import numpy as np

    import keras_diffusion  # noqa: F401  (registers the classes load_model needs)
    from keras_diffusion.files import write_json
    from keras_diffusion.files import replace_atomically
    from keras_diffusion.metrics import mnist_held_out
    from keras_diffusion.metrics import mnist_training_split
    from keras_diffusion.samplers import num_model_evaluations

    start = time.time()
    model = keras.saving.load_model(args.model)
    size = model.image_shape[0]
    real, _ = mnist_held_out(image_size=size)
    train_real, _ = mnist_training_split(image_size=size)
    reference_fid, _ = _fid_and_kid(real, train_real[: len(real)])
    print(f"real-vs-real reference FID: {reference_fid:.3f}", flush=True)

    results, previous_seconds, commands = _reusable_results(args) if args.reuse else ([], 0.0, [])
    # Cheapest column first: an interrupted run still has whole columns.
    for budget in sorted(budgets):
        for sampler in samplers:
            if any(r["sampler"] == sampler and r["budget"] == budget for r in results):
                continue
            steps = steps_for_budget(sampler, budget)
            t0 = time.time()
            parts = []
            for i in range(0, args.num_images, args.batch_size):
                n = min(args.batch_size, args.num_images - i)
                images = model.generate(
                    n, sampler=sampler, num_steps=steps, seed=args.seed + i,
                    sigma_schedule=args.sigma_schedule, verbose=False, return_float=True,
                )
                parts.append((images + 1.0) / 2.0)
            generated = np.clip(np.concatenate(parts), 0.0, 1.0)
            fid, kid = _fid_and_kid(real, generated)
            row = {
                "sampler": sampler, "budget": budget, "steps": steps,
                "nfe": num_model_evaluations(sampler, steps), "fid": fid, "kid": kid,
                "seconds": time.time() - t0,
            }
            results.append(row)
            print(json.dumps(row), flush=True)

    budgets = tuple(sorted({r["budget"] for r in results}))
    settings = {
        "model": args.model, "budgets": budgets, "num_images": args.num_images, "num_real": len(real), "seed": args.seed,
        "sigma_schedule": args.sigma_schedule, "machine": _machine(), "seconds": previous_seconds + time.time() - start,
        "commands": commands
        + ["python -m tools.sampler_quality " + " ".join(sys.argv[1:] if argv is None else argv)],
    }
    write_json(args.out + ".json", {"settings": settings, "reference_fid": reference_fid, "results": results})
    table = _table(results, settings, reference_fid)
    replace_atomically(args.out + ".md", lambda tmp: open(tmp, "w").write(table))
    _plot(results, args.out + ".png")
    print(table)


if __name__ == "__main__":
    main()
