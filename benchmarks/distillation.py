"""One- and few-step students against their teachers on MNIST: FID at 1, 2, 4 and 8 model evaluations.

    KERAS_BACKEND=torch python -m benchmarks.distillation                  # the README table
    KERAS_BACKEND=torch python -m benchmarks.distillation --teacher-minutes 0.2 --student-steps 4 \\
        --num-images 64                                                    # a smoke run

Teachers: an EDM and a flow-matching model (`RectifiedFlow()`, the command
line's), each on the `mnist_small` U-Net at 16x16, trained for
`--teacher-minutes` of CPU time as `benchmarks.families` trains (4,000
bundled digits without the held-out ones, AdamW 1e-3, EMA 0.995, batch 64).

Students (`keras_diffusion.distill`), each trained for `--student-steps`
optimizer steps (batch 64, AdamW with EMA 0.995; the CPU minutes they take are
reported):

- `progressive`: progressive distillation of the EDM teacher's 8 DDIM steps,
  three rounds of `--student-steps` each (4, 2, 1 steps; lr 2e-4); its 8-NFE
  column is the teacher's own DDIM;
- `ect`: consistency tuning of the EDM teacher (lr 2e-4);
- `cd`: consistency distillation from the EDM teacher (lr 2e-4);
- `meanflow`: MeanFlow started from the flow teacher (lr 2e-4);
- `reflow`: the 2-rectified flow of the flow teacher, on one (noise, sample)
  pair per training digit (25 Heun steps), sampled with Euler (lr 2e-4);
- `ct`: consistency training from scratch (lr 1e-3);
- `meanflow-scratch`: MeanFlow from scratch (lr 1e-3).

Each student samples `--num-images` digits at 1, 2, 4 and 8 steps (one model
evaluation each); the teachers sample at 50 evaluations (EDM: Heun, 25
steps; flow: Euler, 50 steps) and at 10 (`dpmpp_2m`). FID uses the bundled
MNIST features against the 1,000 held-out digits at 16x16, as
`python -m keras_diffusion evaluate` does. Images per second: one batch of
250 at 1 evaluation against the teacher's 50, after a warm-up call.

A rerun resumes (`benchmarks.partial`): trained models and finished
measurements are kept in `--work` (`runs/distillation/<backend>`). Writes
`benchmarks/results/distillation/<backend>.{md,json}` and a grid of each
student's 1- and 2-step samples, `<backend>_<method>.png`.
"""

import argparse
import json
import os
import sys
import time

import keras
import numpy as np

from benchmarks import compare
from benchmarks import families

STUDENTS = {
    "progressive": ("edm", 2e-4),
    "ect": ("edm", 2e-4),
    "cd": ("edm", 2e-4),
    "meanflow": ("flow", 2e-4),
    "reflow": ("flow", 2e-4),
    "ct": (None, 1e-3),
    "meanflow-scratch": (None, 1e-3),
}
STUDENT_STEPS = (1, 2, 4, 8)
# Progressive distillation halves the EDM teacher's 8 DDIM steps in three rounds (4, 2, 1 steps).
PROGRESSIVE_TEACHER_STEPS = 8
# Reflow's pairs: one per training digit, 25 Heun steps (49 evaluations) of the flow teacher's ODE.
REFLOW_PAIR_STEPS = 25
TEACHER_SAMPLERS = {"edm": (("heun", 25), ("dpmpp_2m", 10)), "flow": (("euler", 50), ("dpmpp_2m", 10))}
EMA = 0.995


def build_teacher(kind, seed=0):
    """The EDM or flow teacher, untrained, on `mnist_small` at 16x16."""
    import keras_diffusion as kd

    if kind == "edm":
        return families.build_model("edm", seed)
    keras.utils.set_random_seed(seed)
    network = kd.networks.unet_from_preset("mnist_small", image_shape=(families.IMAGE_SIZE,) * 2 + (1,))
    return kd.FlowMatching(network, kd.RectifiedFlow(), seed=seed)


def build_student(method, teacher, total_steps, seed=0):
    """The student of `method` (from `teacher` where it has one)."""
    import keras_diffusion as kd

    keras.utils.set_random_seed(seed)
    if method == "ect":
        return kd.ConsistencyModel.from_teacher(teacher, "ect", total_steps=total_steps, seed=seed)
    if method == "cd":
        return kd.ConsistencyModel.from_teacher(teacher, "cd", seed=seed)
    if method == "meanflow":
        return kd.MeanFlow.from_flow(teacher, seed=seed)
    shape = (families.IMAGE_SIZE,) * 2 + (1,)
    if method == "ct":
        network = kd.networks.unet_from_preset("mnist_small", image_shape=shape)
        return kd.ConsistencyModel(network, total_steps=total_steps, seed=seed)
    network = kd.networks.unet_from_preset("mnist_small", image_shape=shape, interval_input=True)
    return kd.MeanFlow(network, seed=seed)


def train_steps(model, images, steps, lr, folder, seed=0):
    """Fits `model` for `steps` optimizer steps, resumably; returns what it did and its CPU minutes."""
    from keras_diffusion import resume
    from keras_diffusion.optimizers import AdamW

    model.compile(optimizer=AdamW(lr, weight_decay=1e-4, use_ema=True, ema_momentum=EMA))
    data = resume.ResumableBatches(images, families.BATCH_SIZE, seed=seed)
    epochs = -(-steps // data.steps_per_epoch)
    budget = _StepLimit(steps)
    backup = resume.ExactBackupAndRestore(
        os.path.join(folder, "backup"), data, save_freq=families.CHECKPOINT_EVERY, run_config={"steps": steps},
        delete_checkpoint=False, extra_state=budget,
    )
    resume.fit(model, backup, epochs=epochs, callbacks=[budget], verbose=0)
    return backup, {"steps": backup.global_step, "cpu_minutes": round(budget.spent() / 60.0, 2),
                    "last_epoch_loss": float(backup.log[-1]["loss"])}


class _StepLimit(families.CPUBudget):
    """Counts CPU time like `CPUBudget` and stops after `steps` optimizer steps instead."""

    def __init__(self, steps):
        super().__init__(float("inf"))
        self.steps = steps

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, logs)
        if int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)) >= self.steps:
            self.model.stop_training = True


def progressive_rounds(teacher, images, args, work, lr, fid_of):
    """Three rounds of progressive distillation from the teacher's 8 DDIM steps; FID after each."""
    import keras_diffusion as kd
    from keras_diffusion.files import save_model
    from keras_diffusion.files import write_json

    fid, _ = fid_of(teacher, "ddim", PROGRESSIVE_TEACHER_STEPS)
    samples = [{"steps": PROGRESSIVE_TEACHER_STEPS, "nfe": PROGRESSIVE_TEACHER_STEPS, "fid": fid, "teacher": True}]
    print(f"  progressive: the teacher's DDIM, {PROGRESSIVE_TEACHER_STEPS} NFE: FID {fid:.2f}", flush=True)
    student, minutes, grids = teacher, 0.0, {}
    for round_index in range(1, 4):
        path = os.path.join(work, f"progressive_round_{round_index}.keras")
        record = os.path.join(work, f"progressive_round_{round_index}.json")
        if os.path.isfile(path) and os.path.isfile(record):  # a rerun after a kill keeps the finished rounds
            student = kd.load_model(path)
            with open(record) as file:
                minutes += json.load(file)["cpu_minutes"]
        else:
            student = kd.ProgressiveDistillation.from_teacher(student, PROGRESSIVE_TEACHER_STEPS, seed=args.seed)
            print(f"progressive round {round_index} ({2 * student.process.num_steps} -> "
                  f"{student.process.num_steps} steps): {args.student_steps} steps ...", flush=True)
            backup, training = train_steps(student, images, args.student_steps, lr,
                                           os.path.join(work, f"progressive_round_{round_index}"), args.seed)
            save_model(student, path)
            write_json(record, training)
            backup.delete()
            minutes += training["cpu_minutes"]
        steps = student.process.num_steps
        fid, generated = fid_of(student, None, steps)
        samples.append({"steps": steps, "nfe": steps, "fid": fid})
        grids[steps] = generated[:32]
        print(f"  progressive {steps} NFE: FID {fid:.2f}", flush=True)
    np.save(os.path.join(work, "progressive_grid.npy"), np.concatenate([grids[1], grids[2]]))
    return {"training": {"steps": 3 * args.student_steps, "cpu_minutes": round(minutes, 2)},
            "samples": sorted(samples, key=lambda row: row["steps"]), "images_per_second": images_per_second(student, 1)}


def images_per_second(model, num_steps, sampler=None, batch=250):
    """Samples per wall second at `num_steps`, after one warm-up call that compiles the loop."""
    model.generate(batch, sampler=sampler, num_steps=num_steps, seed=0, verbose=False)
    start = time.perf_counter()
    model.generate(batch, sampler=sampler, num_steps=num_steps, seed=1, verbose=False)
    return batch / (time.perf_counter() - start)


def run(args):
    import keras_diffusion as kd
    from benchmarks.partial import PartialResults
    from keras_diffusion import metrics
    from keras_diffusion.files import save_model

    backend = keras.backend.backend()
    work = args.work or os.path.join("runs", "distillation", backend)
    os.makedirs(work, exist_ok=True)
    train_images = metrics.mnist_training_split(image_size=families.IMAGE_SIZE)[0] * 2.0 - 1.0
    features = metrics.get_feature_extractor("mnist", output="features")
    real, _ = metrics.mnist_held_out(image_size=families.IMAGE_SIZE, num_images=1000)
    real_features = keras.ops.convert_to_numpy(features(real))
    config = {"teacher_minutes": args.teacher_minutes, "student_steps": args.student_steps,
              "num_images": args.num_images, "seed": args.seed, "backend": backend}
    stages = PartialResults(os.path.join(work, "distillation.partial.json"), config)
    results = {"config": config, "machine": compare.machine_info(compare.Config()), "teachers": {}, "students": {}}

    def fid_of(model, sampler, steps):
        generated = families.sample(model, sampler, steps, args.num_images, seed=args.seed)
        return float(metrics.fid_from_features(real_features, keras.ops.convert_to_numpy(features(generated)))), \
            generated

    teachers = {}
    for kind in sorted({STUDENTS[m][0] for m in args.methods} - {None}):
        path = os.path.join(work, f"teacher_{kind}.keras")

        def teacher_stage():
            model = build_teacher(kind, args.seed)
            print(f"teacher {kind}: training for {args.teacher_minutes} CPU minute(s) ...", flush=True)
            backup, training = families.train(model, train_images, args.teacher_minutes,
                                              os.path.join(work, f"teacher_{kind}"), args.seed)
            save_model(model, path)
            backup.delete()
            row = {"training": training, "samples": []}
            for sampler, steps in TEACHER_SAMPLERS[kind]:
                fid, _ = fid_of(model, sampler, steps)
                evaluations = kd.samplers.num_model_evaluations(sampler, steps)
                row["samples"].append({"sampler": sampler, "steps": steps, "nfe": evaluations, "fid": fid})
                print(f"  teacher {kind} {sampler} {evaluations} NFE: FID {fid:.2f}", flush=True)
            sampler, steps = TEACHER_SAMPLERS[kind][0]
            row["images_per_second"] = images_per_second(model, steps, sampler)
            return row

        results["teachers"][kind] = stages.stage(f"teacher/{kind}", teacher_stage, outputs=[path])
        teachers[kind] = kd.load_model(path)

    for method in args.methods:
        kind, lr = STUDENTS[method]
        path = os.path.join(work, f"{method}.keras")

        def student_stage():
            if method == "progressive":
                return progressive_rounds(teachers["edm"], train_images, args, work, lr, fid_of)
            teacher = teachers.get(kind)
            model = build_student(method, teacher, args.student_steps, args.seed)
            data = train_images
            if method == "reflow":
                print(f"reflow: {len(train_images)} pairs ...", flush=True)
                data = teacher.reflow_pairs(len(train_images), num_steps=REFLOW_PAIR_STEPS, seed=args.seed,
                                            verbose=False)
            print(f"{method}: {args.student_steps} steps ...", flush=True)
            backup, training = train_steps(model, data, args.student_steps, lr, os.path.join(work, method), args.seed)
            save_model(model, path)
            backup.delete()
            row = {"training": training, "samples": []}
            grids = []
            for steps in STUDENT_STEPS:
                fid, generated = fid_of(model, None, steps)
                row["samples"].append({"steps": steps, "nfe": steps, "fid": fid})
                print(f"  {method} {steps} NFE: FID {fid:.2f}", flush=True)
                if steps <= 2:
                    grids.append(generated[:32])
            np.save(os.path.join(work, f"{method}_grid.npy"), np.concatenate(grids))
            row["images_per_second"] = images_per_second(model, 1)
            return row

        results["students"][method] = stages.stage(f"student/{method}", student_stage, outputs=[path])
    results["machine"]["load_average_end"] = os.getloadavg()[0]
    return results, work


def markdown(results):
    lines = [
        "| model | training | CPU min | FID 1 NFE | 2 NFE | 4 NFE | 8 NFE | teacher 50 NFE | teacher 10 NFE "
        "| images/s at 1 NFE (teacher at 50) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, row in results["students"].items():
        kind = STUDENTS[method][0]
        fids = {s["steps"]: s["fid"] for s in row["samples"]}
        teacher = results["teachers"].get(kind)
        t50 = t10 = speed = "-"
        if teacher:
            t50, t10 = (f"{s['fid']:.2f}" for s in teacher["samples"])
            speed = f"{row['images_per_second']:.0f} ({teacher['images_per_second']:.1f})"
        else:
            speed = f"{row['images_per_second']:.0f}"
        origin = f"from the {kind} teacher" if kind else "from scratch"
        teacher_nfe = {s["steps"] for s in row["samples"] if s.get("teacher")}
        lines.append(
            f"| {method} | {row['training']['steps']} steps {origin} | {row['training']['cpu_minutes']:.1f} | "
            + " | ".join(f"{fids[n]:.2f}" + (" (teacher's DDIM)" if n in teacher_nfe else "") for n in STUDENT_STEPS)
            + f" | {t50} | {t10} | {speed} |"
        )
    for kind, teacher in results["teachers"].items():
        lines.append(
            f"\nTeacher {kind}: {teacher['training']['steps']} steps in {teacher['training']['cpu_seconds'] / 60:.1f} "
            "CPU minutes; " + ", ".join(f"{s['sampler']} {s['nfe']} NFE FID {s['fid']:.2f}" for s in teacher["samples"])
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher-minutes", type=float, default=10.0, help="CPU minutes of each teacher's training")
    parser.add_argument("--student-steps", type=int, default=1500, help="optimizer steps of each student")
    parser.add_argument("--num-images", type=int, default=1000, help="samples per FID")
    parser.add_argument("--methods", default=",".join(STUDENTS), help=f"comma-separated, of {', '.join(STUDENTS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default=None, help="resume folder (default runs/distillation/<backend>)")
    parser.add_argument("--out", default=os.path.join("benchmarks", "results", "distillation"))
    args = parser.parse_args(argv)
    args.methods = tuple(m for m in args.methods.split(",") if m)
    unknown = sorted(set(args.methods) - set(STUDENTS))
    if unknown or not args.methods:
        parser.error(f"unknown --methods {unknown}; use some of {', '.join(STUDENTS)}")
    from keras_diffusion.files import replace_atomically
    from keras_diffusion.files import write_json
    from keras_diffusion.images import save_grid

    results, work = run(args)
    backend = results["config"]["backend"]
    os.makedirs(args.out, exist_ok=True)
    write_json(os.path.join(args.out, f"{backend}.json"), results)
    command = "python -m benchmarks.distillation " + " ".join(argv if argv is not None else sys.argv[1:])
    table = f"`KERAS_BACKEND={backend} {command.strip()}`\n\n" + markdown(results)

    def write(path):
        with open(path, "w") as file:
            file.write(table)

    replace_atomically(os.path.join(args.out, f"{backend}.md"), write)
    for method in args.methods:
        save_grid(os.path.join(args.out, f"{backend}_{method}.png"), np.load(os.path.join(work, f"{method}_grid.npy")))
    print(markdown(results))


if __name__ == "__main__":
    main()
