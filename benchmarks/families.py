"""DDPM, EDM, flow matching and a score SDE on MNIST for the same CPU budget: FID at 10, 20 and 50 model evaluations, and bits/dim.

    KERAS_BACKEND=torch python -m benchmarks.families --minutes 10     # the README tables
    KERAS_BACKEND=torch python -m benchmarks.families --minutes 0.3 --num-images 64 --bpd-images 8   # a smoke run

Each family trains the same network (the `mnist_small` U-Net at 16x16, from the
same seed) on the 4,000 bundled MNIST digits that the held-out split leaves
(`metrics.mnist_training_split`), with AdamW (lr 1e-3, EMA 0.995) and batch 64,
until its process has used `--minutes` of CPU time (`time.process_time()`, all
threads together, so other load on the machine costs less than in wall
time); the budget is checked after every batch and starts after the first
one, which also traces and compiles the train step (its CPU time is reported
apart).

- DDPM: `DiscreteVPSchedule("cosine")`, epsilon prediction.
- EDM: `EDMProcess()` with Karras et al.'s preconditioning and loss weight.
- flow: `RectifiedFlow(time_scale=1000.0)`, logit-normal times, velocity
  prediction (the U-Net's time embedding sees `1000 * t`).
- score: `ScoreModel` on score_sde's `VPSDE` (beta 0.1 to 20, `t ~ U[1e-5, 1]`,
  the U-Net sees `999 t`), denoising score matching with the `sigma2` weighting.

Then each family's samplers (`SAMPLERS` below) draw `--num-images` digits at
10, 20 and 50 model evaluations (NFE): the largest number of steps whose
`samplers.num_model_evaluations` fits, so Heun (2 per step, 1 for the last)
runs 5, 10 and 25 steps (9, 19 and 49 NFE). Samplers run with the model's own
noise levels and defaults (`generate()`); the same seeds for every run. FID
is measured as `python -m keras_diffusion evaluate` does: features of the
bundled MNIST classifier, against the 1,000 held-out digits resized to 16x16.
Each family also writes a grid of 64 samples from its first sampler at 50 NFE.

Bits/dim: `log_likelihood` (the probability-flow ODE with adaptive RK45 at
rtol = atol = 1e-5, one Rademacher probe, uniform dequantization, score_sde's
`+7`) of the first `--bpd-images` held-out digits, with the mean, its
standard error and the solver's mean NFE per batch (`log_likelihood`'s
batches, padded to one compiled shape).

A rerun of the same command resumes (`benchmarks.partial`): each family's
trained model and every finished measurement are kept in `--work`
(`runs/families/<backend>`); training itself checkpoints every 100 steps
through `keras_diffusion.resume`, with the CPU seconds already spent, so a
kill costs at most 100 steps. Other arguments against an existing run are
refused, except `--bpd-images`: a rerun with another number adds bits/dim
to the trained families. Delete the folder to start fresh.

It writes `benchmarks/results/families/<backend>.{md,json}` and
`<backend>_<family>.png` (atomically).
"""

import argparse
import os
import sys
import time

import keras
import numpy as np

from benchmarks import compare
from benchmarks.budget import CPUBudget

# Each family's samplers: the ones it is meant to run with, and the best few-step ones.
SAMPLERS = {
    "ddpm": ("dpmpp_2m", "unipc", "ddim"),
    "edm": ("heun", "dpmpp_2m"),
    "flow": ("euler", "heun"),
    "score": ("pc", "dpmpp_2m"),
}
NFES = (10, 20, 50)
IMAGE_SIZE = 16
BATCH_SIZE = 64
CHECKPOINT_EVERY = 100


def build_model(family, seed=0):
    """The family's model on the `mnist_small` U-Net at 16x16, built from `seed`."""
    import keras_diffusion as kd

    keras.utils.set_random_seed(seed)
    network = kd.networks.unet_from_preset("mnist_small", image_shape=(IMAGE_SIZE, IMAGE_SIZE, 1))
    if family == "ddpm":
        return kd.DDPM(network, kd.DiscreteVPSchedule("cosine"), prediction_type="epsilon", seed=seed)
    if family == "edm":
        return kd.EDM(network, kd.EDMProcess(), seed=seed)
    if family == "score":
        return kd.ScoreModel(network, sde="vp", seed=seed)
    return kd.FlowMatching(network, kd.RectifiedFlow(time_scale=1000.0), seed=seed)


def steps_for(sampler, nfe):
    """The most steps of `sampler` with at most `nfe` model evaluations, and their evaluations."""
    from keras_diffusion.samplers import num_model_evaluations

    steps = max(n for n in range(1, nfe + 1) if num_model_evaluations(sampler, n) <= nfe)
    return steps, num_model_evaluations(sampler, steps)


def train(model, images, minutes, folder, seed=0, lr=1e-3, ema=0.995):
    """Fits `model` until `minutes` of CPU time are used, resumably; returns what it did."""
    from keras_diffusion import resume

    model.compile(keras.optimizers.AdamW(lr, weight_decay=1e-4, use_ema=True, ema_momentum=ema))
    data = resume.ResumableBatches(images, BATCH_SIZE, seed=seed)
    budget = CPUBudget(60.0 * minutes)
    backup = resume.ExactBackupAndRestore(
        os.path.join(folder, "backup"), data, save_freq=CHECKPOINT_EVERY, run_config={"minutes": minutes},
        delete_checkpoint=False, extra_state=budget,
    )
    wall = time.perf_counter()
    resume.fit(model, backup, epochs=10_000, callbacks=[budget], verbose=0)
    return backup, {
        "first_batch_cpu_seconds": round(budget.first_batch or 0.0, 1),
        "cpu_seconds": round(budget.spent(), 1),
        "wall_seconds_this_process": round(time.perf_counter() - wall, 1),
        "steps": backup.global_step,
        "images_seen": backup.global_step * BATCH_SIZE,
        "last_epoch_loss": float(backup.log[-1]["loss"]),
        "resumes": len(backup.resumes),
    }


def sample(model, sampler, num_steps, num_images, batch_size=250, seed=0):
    """`num_images` uint8 samples drawn with `sampler` for `num_steps` steps, in full batches."""
    batch_size = min(batch_size, num_images)
    return np.concatenate([
        model.generate(batch_size, sampler=sampler, num_steps=num_steps, seed=seed + i, verbose=False)
        for i in range(0, num_images, batch_size)
    ])[:num_images]


def bits_per_dim(model, images, batch_size=250, seed=0):
    """Mean bits/dim of `images` (uint8), its standard error, and the solver's mean NFE per batch."""
    values, nfe = model.log_likelihood(images, seed=seed, batch_size=batch_size, return_nfe=True)
    return {"bpd": float(values.mean()), "bpd_stderr": float(values.std(ddof=1) / np.sqrt(len(values))),
            "num_images": len(values), "nfe": float(nfe)}


def run(minutes, num_images, families=tuple(SAMPLERS), seed=0, bpd_images=1000, work=None):
    """Trains and measures every family, resuming from `work`; returns the results dict."""
    import keras_diffusion as kd
    from benchmarks.partial import PartialResults
    from keras_diffusion import metrics
    from keras_diffusion.files import save_model

    backend = keras.backend.backend()
    work = work or os.path.join("runs", "families", backend)
    os.makedirs(work, exist_ok=True)
    train_images, _ = metrics.mnist_training_split(image_size=IMAGE_SIZE)
    train_images = train_images * 2.0 - 1.0
    features = metrics.get_feature_extractor("mnist", output="features")
    real, _ = metrics.mnist_held_out(image_size=IMAGE_SIZE, num_images=1000)
    real_features = keras.ops.convert_to_numpy(features(real))
    real_uint8 = np.round(real * 255.0).astype("uint8")
    config = {"minutes": minutes, "num_images": num_images, "image_size": IMAGE_SIZE, "network": "mnist_small",
              "batch_size": BATCH_SIZE, "nfes": list(NFES), "seed": seed, "backend": backend,
              "train_images": len(train_images)}
    stages = PartialResults(os.path.join(work, "families.partial.json"), config)
    results = {"config": config, "machine": compare.machine_info(compare.Config()), "families": {}}
    for family in families:
        model_path = os.path.join(work, f"{family}.keras")
        trained = []

        def train_stage():
            model = build_model(family, seed)
            print(f"{family}: training for {minutes} CPU minute(s) ...", flush=True)
            backup, training = train(model, train_images, minutes, os.path.join(work, family), seed)
            save_model(model, model_path)
            backup.delete()
            trained.append(model)
            return {"training": training, "params": model.network.count_params()}

        record = dict(stages.stage(f"{family}/training", train_stage, outputs=[model_path]))
        model = trained[0] if trained else kd.load_model(model_path)
        record["samples"] = []
        for sampler in SAMPLERS[family]:
            for nfe in NFES:
                steps, evaluations = steps_for(sampler, nfe)

                def fid_stage():
                    start = time.perf_counter()
                    generated = sample(model, sampler, steps, num_images, seed=seed)
                    fid = metrics.fid_from_features(real_features, keras.ops.convert_to_numpy(features(generated)))
                    if sampler == SAMPLERS[family][0] and nfe == NFES[-1]:
                        np.save(os.path.join(work, f"{family}_grid.npy"), generated[:64])
                    return {"sampler": sampler, "nfe_budget": nfe, "steps": steps, "nfe": evaluations,
                            "fid": float(fid), "sample_seconds": round(time.perf_counter() - start, 1)}

                row = stages.stage(f"{family}/{sampler}/{nfe}", fid_stage)
                record["samples"].append(row)
                print(f"  {family} {sampler:9s} {steps:3d} steps, {evaluations:2d} NFE: FID {row['fid']:.2f}", flush=True)
        if bpd_images:
            def bpd_stage():
                start = time.perf_counter()
                bpd = bits_per_dim(model, real_uint8[:bpd_images], seed=seed)
                return dict(bpd, seconds=round(time.perf_counter() - start, 1))

            record["likelihood"] = stages.stage(f"{family}/bits_per_dim/{bpd_images}", bpd_stage)
            print(f"  {family} bits/dim {record['likelihood']['bpd']:.3f}", flush=True)
        results["families"][family] = record
    results["machine"]["load_average_end"] = os.getloadavg()[0]
    return results


def markdown(results):
    """The results as markdown tables, with the training budget and the machine."""
    cfg, machine = results["config"], results["machine"]
    lines = [
        f"{', '.join(results['families'])} on bundled MNIST ({cfg['image_size']}x{cfg['image_size']}, "
        f"`mnist_small` U-Net, batch {cfg['batch_size']}, {cfg['train_images']:,} training digits), each trained "
        f"for {cfg['minutes']} CPU minute(s) on {cfg['backend']}. FID of {cfg['num_images']} samples against the "
        "1,000 held-out digits (bundled MNIST classifier features); lower is better. Columns: the "
        "model-evaluation budget; a cell gives the FID and, in brackets, the steps and evaluations used.",
        "",
        "| family | sampler | " + " | ".join(f"{n} NFE" for n in cfg["nfes"]) + " |",
        "|---|---|" + "---|" * len(cfg["nfes"]),
    ]
    for family, result in results["families"].items():
        by_sampler = {}
        for row in result["samples"]:
            by_sampler.setdefault(row["sampler"], []).append(f"{row['fid']:.2f} ({row['steps']} st, {row['nfe']})")
        for sampler, cells in by_sampler.items():
            lines.append(f"| {family} | {sampler} | " + " | ".join(cells) + " |")
    with_bpd = {family: r["likelihood"] for family, r in results["families"].items() if "likelihood" in r}
    if with_bpd:
        sizes = sorted({bpd["num_images"] for bpd in with_bpd.values()})
        lines += ["", f"Bits/dim of the first {'/'.join(map(str, sizes))} held-out digits through each model's "
                  "probability-flow ODE (RK45, rtol = atol = 1e-5, one Rademacher probe, dequantized); lower is "
                  "better.", "", "| family | bits/dim | std. error | mean NFE per batch of 250 | seconds |",
                  "|---|---|---|---|---|"]
        for family, bpd in with_bpd.items():
            lines.append(f"| {family} | {bpd['bpd']:.3f} | {bpd['bpd_stderr']:.3f} | {bpd['nfe']:.0f} | "
                         f"{bpd['seconds']} |")
    lines += ["", "| family | first batch CPU s | then CPU s | training steps | images seen | last epoch loss "
              "| resumes |", "|---|---|---|---|---|---|---|"]
    for family, result in results["families"].items():
        t = result["training"]
        lines.append(f"| {family} | {t['first_batch_cpu_seconds']} | {t['cpu_seconds']} | "
                     f"{t['steps']} | {t['images_seen']} | {t['last_epoch_loss']:.4f} | {t['resumes']} |")
    lines += [
        "",
        f"Machine: {machine['cpu']}, {machine['cores_available']} cores, {machine['threads']} threads; load average {machine['load_average']:.2f} "
        f"at start, {machine.get('load_average_end', 0):.2f} at end. Versions: "
        + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()) + ".",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="CPU minutes of training per family")
    parser.add_argument("--num-images", type=int, default=1000, help="samples per FID")
    parser.add_argument("--bpd-images", type=int, default=0,
                        help="held-out digits for bits/dim (0: skip; slow: hundreds of ODE steps, each a jvp)")
    parser.add_argument("--families", default=",".join(SAMPLERS), help="comma-separated: " + ",".join(SAMPLERS))
    parser.add_argument("--out", default=os.path.join("benchmarks", "results", "families"),
                        help="where the tables and grids go")
    parser.add_argument("--work", default=None,
                        help="trained models, checkpoints and finished stages (default: runs/families/BACKEND)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0,
                        help="intra-op threads for torch and TensorFlow (0: one per core); 1 keeps torch from "
                        "collapsing when other jobs share the cores")
    args = parser.parse_args(argv)
    families = tuple(f.strip() for f in args.families.split(",") if f.strip())
    unknown = set(families) - set(SAMPLERS)
    if unknown or not families:
        parser.error(f"--families takes {', '.join(SAMPLERS)}; got {sorted(unknown) or 'none'}")
    if not args.minutes > 0 or args.num_images < 2 or not 0 <= args.bpd_images <= 1000 or args.bpd_images == 1:
        parser.error(f"--minutes must be positive, --num-images at least 2 and --bpd-images 0 or 2 to 1000; got "
                     f"{args.minutes}, {args.num_images}, {args.bpd_images}")
    from keras_diffusion.files import replace_atomically
    from keras_diffusion.files import write_json

    from keras_diffusion.images import save_grid

    backend = keras.backend.backend()
    threads = compare._set_threads(backend, args.threads or len(os.sched_getaffinity(0)))
    work = args.work or os.path.join("runs", "families", backend)
    results = run(args.minutes, args.num_images, families, args.seed, args.bpd_images, work)
    results["machine"]["threads"] = threads
    os.makedirs(args.out, exist_ok=True)
    for family in families:
        grid = os.path.join(work, f"{family}_grid.npy")
        if os.path.isfile(grid):
            save_grid(os.path.join(args.out, f"{backend}_{family}.png"), np.load(grid))
    write_json(os.path.join(args.out, f"{backend}.json"), results)
    table = markdown(results)

    def write(path):
        with open(path, "w") as file:
            file.write(table)

    replace_atomically(os.path.join(args.out, f"{backend}.md"), write)
    print(table)
    print(f"Wrote {args.out}/{backend}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
