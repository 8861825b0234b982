"""DDPM, EDM and flow matching on MNIST for the same CPU budget, then FID at 10, 20 and 50 model evaluations.

    KERAS_BACKEND=torch python -m benchmarks.families --minutes 10     # the README table
    KERAS_BACKEND=torch python -m benchmarks.families --minutes 0.3 --num-images 64   # a smoke run

Each family trains the same network (the `mnist_small` U-Net at 16x16, from the
same seed) on the 5,000 bundled MNIST digits with AdamW (lr 1e-3, EMA 0.995)
and batch 64, until its process has used `--minutes` of CPU time
(`time.process_time()`, all threads together, so other load on the machine
costs less than in wall time); the budget is checked after every batch and
starts after the first one, which also traces and compiles the train step
(its CPU time is reported apart).

- DDPM: `DiscreteVPSchedule("cosine")`, epsilon prediction.
- EDM: `EDMProcess()` with Karras et al.'s preconditioning and loss weight.
- flow: `RectifiedFlow(time_scale=1000.0)`, logit-normal times, velocity
  prediction (the U-Net's time embedding sees `1000 * t`).

Then each family's samplers (`SAMPLERS` below) draw `--num-images` digits at
10, 20 and 50 model evaluations (NFE): the largest number of steps whose
`samplers.num_model_evaluations` fits, so Heun (2 per step, 1 for the last)
runs 5, 10 and 25 steps (9, 19 and 49 NFE). Samplers run with the model's own
noise levels and defaults (`generate()`); the same seeds for every run. FID
is measured as `python -m keras_diffusion evaluate` does: features of the
bundled MNIST classifier, against 1,000 held-out digits resized to 16x16.

It writes `benchmarks/results/families/<backend>.{md,json}` (atomically).
"""

import argparse
import os
import sys
import time

import numpy as np

from benchmarks import compare

# Each family's samplers: the ones it is meant to run with, and the best few-step ones.
SAMPLERS = {
    "ddpm": ("dpmpp_2m", "unipc", "ddim"),
    "edm": ("heun", "dpmpp_2m"),
    "flow": ("euler", "heun"),
}
NFES = (10, 20, 50)
IMAGE_SIZE = 16


def build_model(family, seed=0):
    """The family's model on the `mnist_small` U-Net at 16x16, built from `seed`."""
    import keras

    import keras_diffusion as kd

    keras.utils.set_random_seed(seed)
    network = kd.networks.unet_from_preset("mnist_small", image_shape=(IMAGE_SIZE, IMAGE_SIZE, 1))
    if family == "ddpm":
        return kd.DDPM(network, kd.DiscreteVPSchedule("cosine"), prediction_type="epsilon", seed=seed)
    if family == "edm":
        return kd.EDM(network, kd.EDMProcess(), seed=seed)
    return kd.FlowMatching(network, kd.RectifiedFlow(time_scale=1000.0), seed=seed)


def steps_for(sampler, nfe):
    """The most steps of `sampler` with at most `nfe` model evaluations, and their evaluations."""
    from keras_diffusion.samplers import num_model_evaluations

    steps = max(n for n in range(1, nfe + 1) if num_model_evaluations(sampler, n) <= nfe)
    return steps, num_model_evaluations(sampler, steps)


def train(model, images, minutes, batch_size=64, lr=1e-3, ema=0.995):
    """Fits `model` until `minutes` of this process's CPU time are used; returns what it did."""
    import keras

    class CPUBudget(keras.callbacks.Callback):
        # The budget starts after the first batch, which also traces and compiles the step.
        def on_train_begin(self, logs=None):
            self.start, self.batches = time.process_time(), 0

        def on_train_batch_end(self, batch, logs=None):
            self.batches += 1
            if self.batches == 1:
                self.first_batch = time.process_time() - self.start
                self.start = time.process_time()
            elif time.process_time() - self.start >= 60.0 * minutes:
                self.model.stop_training = True

    model.compile(keras.optimizers.AdamW(lr, weight_decay=1e-4, use_ema=True, ema_momentum=ema))
    budget = CPUBudget()
    wall = time.perf_counter()
    history = model.fit(images, epochs=10_000, batch_size=batch_size, shuffle=True, callbacks=[budget], verbose=0)
    return {
        "first_batch_cpu_seconds": round(budget.first_batch, 1),
        "cpu_seconds": round(time.process_time() - budget.start, 1),
        "wall_seconds": round(time.perf_counter() - wall, 1),
        "steps": budget.batches,
        "images_seen": budget.batches * batch_size,
        "last_epoch_loss": float(history.history["loss"][-1]),
    }


def fid_of(model, sampler, num_steps, num_images, features, real_features, batch_size=250, seed=0):
    """FID of `num_images` samples drawn with `sampler` for `num_steps` steps, in full batches."""
    import keras

    from keras_diffusion import metrics

    batch_size = min(batch_size, num_images)
    images = np.concatenate([
        model.generate(batch_size, sampler=sampler, num_steps=num_steps, seed=seed + i, verbose=False)
        for i in range(0, num_images, batch_size)
    ])[:num_images]
    generated = keras.ops.convert_to_numpy(features(images))
    return float(metrics.fid_from_features(real_features, generated))


def run(minutes, num_images, families=tuple(SAMPLERS), seed=0):
    """Trains and measures every family; returns the results dict."""
    import keras

    import keras_diffusion as kd
    from keras_diffusion import metrics

    images, _ = kd.datasets.load_mnist(image_size=IMAGE_SIZE, seed=seed)
    features = metrics.get_feature_extractor("mnist", output="features")
    real, _ = metrics.mnist_held_out(image_size=IMAGE_SIZE, num_images=1000)
    real_features = keras.ops.convert_to_numpy(features(real))
    results = {
        "config": {"minutes": minutes, "num_images": num_images, "image_size": IMAGE_SIZE, "network": "mnist_small",
                   "batch_size": 64, "nfes": list(NFES), "seed": seed, "backend": keras.backend.backend()},
        "machine": compare.machine_info(compare.Config()),
        "families": {},
    }
    for family in families:
        model = build_model(family, seed)
        print(f"{family}: training for {minutes} CPU minute(s) ...", flush=True)
        trained = train(model, images, minutes)
        rows = []
        for sampler in SAMPLERS[family]:
            for nfe in NFES:
                steps, evaluations = steps_for(sampler, nfe)
                start = time.perf_counter()
                fid = fid_of(model, sampler, steps, num_images, features, real_features, seed=seed)
                rows.append({"sampler": sampler, "nfe_budget": nfe, "steps": steps, "nfe": evaluations, "fid": fid,
                             "sample_seconds": round(time.perf_counter() - start, 1)})
                print(f"  {sampler:9s} {steps:3d} steps, {evaluations:2d} NFE: FID {fid:.2f}", flush=True)
        results["families"][family] = {"training": trained, "samples": rows, "params": model.network.count_params()}
    results["machine"]["load_average_end"] = os.getloadavg()[0]
    return results


def markdown(results):
    """The results as a markdown table, with the training budget and the machine."""
    cfg, machine = results["config"], results["machine"]
    lines = [
        f"DDPM, EDM and flow matching on bundled MNIST ({cfg['image_size']}x{cfg['image_size']}, `mnist_small` "
        f"U-Net, batch {cfg['batch_size']}), each trained for {cfg['minutes']} CPU minute(s) on {cfg['backend']}. "
        f"FID of {cfg['num_images']} samples against 1,000 held-out digits (bundled MNIST classifier features); "
        "lower is better. Columns: the model-evaluation budget; a cell gives the FID and, in brackets, the steps "
        "and evaluations used.",
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
    lines += ["", "| family | first batch CPU s | then CPU s | wall s | training steps | images seen | last epoch loss |",
              "|---|---|---|---|---|---|---|"]
    for family, result in results["families"].items():
        t = result["training"]
        lines.append(f"| {family} | {t['first_batch_cpu_seconds']} | {t['cpu_seconds']} | {t['wall_seconds']} | "
                     f"{t['steps']} | {t['images_seen']} | {t['last_epoch_loss']:.4f} |")
    lines += [
        "",
        f"Machine: {machine['cpu']}, {machine['cores_available']} cores; load average {machine['load_average']:.2f} "
        f"at start, {machine.get('load_average_end', 0):.2f} at end. Versions: "
        + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()) + ".",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="CPU minutes of training per family")
    parser.add_argument("--num-images", type=int, default=1000, help="samples per FID")
    parser.add_argument("--families", default=",".join(SAMPLERS), help="comma-separated: ddpm,edm,flow")
    parser.add_argument("--out", default=os.path.join("benchmarks", "results", "families"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    families = tuple(f.strip() for f in args.families.split(",") if f.strip())
    unknown = set(families) - set(SAMPLERS)
    if unknown or not families:
        parser.error(f"--families takes {', '.join(SAMPLERS)}; got {sorted(unknown) or 'none'}")
    if not args.minutes > 0 or args.num_images < 2:
        parser.error(f"--minutes must be positive and --num-images at least 2; got {args.minutes}, {args.num_images}")
    import keras

    from keras_diffusion.files import replace_atomically
    from keras_diffusion.files import write_json

    results = run(args.minutes, args.num_images, families, args.seed)
    os.makedirs(args.out, exist_ok=True)
    backend = keras.backend.backend()
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
