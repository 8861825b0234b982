"""`distill`: a one- or few-step student from a trained model, with grids at 1, 2 and 4 steps.

Methods (`keras_diffusion.distill`):

- `progressive`: progressive distillation (Salimans & Ho 2022) of any model:
  `--rounds` rounds, each halving the DDIM steps, from `--teacher-steps`.
- `ect`: easy consistency tuning (Geng et al. 2024) of an EDM model: the
  student starts as the teacher's network and needs no teacher after that.
- `consistency`: consistency distillation (Song et al. 2023) from a model of
  any family, through one Heun step of its probability-flow ODE per example.
- `meanflow`: a MeanFlow model (Geng et al. 2025) started from a
  flow-matching model's network, trained on the data.
- `reflow`: the 2-rectified flow (Liu et al. 2022) of a flow-matching model:
  it trains on `--num-pairs` (noise, sample) pairs of the teacher's ODE, and
  its straighter paths sample well in one Euler step. (Liu et al.'s further
  one-step distillation of it is not built.)

The student trains on the teacher's kind of data (`--dataset`, at the
teacher's image size) with `fit()` and exact resume: rerunning an
interrupted command with the same `--out` continues it. Writes
`OUT/model.keras`, `OUT/samples_{1,2,4}_steps.png` (the step counts the
student supports) and `OUT/train_log.json`; `progressive` keeps each round's
student in `OUT/round_K/`, `reflow` its pairs in `OUT/pairs.npz`.

Example:
    $ python -m keras_diffusion train edm --dataset mnist --out runs/edm
    $ python -m keras_diffusion distill --method ect --teacher runs/edm/model.keras --out runs/ect
    $ python -m keras_diffusion sample --model runs/ect/model.keras --steps 1 --out one_step.png
"""

import os
import time

from keras_diffusion.cli.args import add_command
from keras_diffusion.cli.args import add_common_args
from keras_diffusion.cli.args import make_out_folder
from keras_diffusion.cli.args import momentum
from keras_diffusion.cli.args import positive_float
from keras_diffusion.cli.args import positive_int
from keras_diffusion.cli.train import add_checkpoint_flag
from keras_diffusion.cli.train import fit_with_backup
from keras_diffusion.cli.train import load_images
from keras_diffusion.datasets import DATASETS
from keras_diffusion.files import replace_atomically
from keras_diffusion.files import write_json

METHODS = ("progressive", "ect", "consistency", "meanflow", "reflow")
GRID_STEPS = (1, 2, 4)


def add_parser(subparsers):
    parser = add_command(
        subparsers,
        __name__,
        help="distill a trained model into a 1-4 step student (consistency tuning or distillation, MeanFlow)",
        description="Trains a few-step student from a trained model and saves it with sample grids at\n"
        "1, 2 and 4 steps. Re-running an interrupted command resumes it exactly.\n\n"
        "Methods:\n"
        "  progressive  progressive distillation of any model, halving its DDIM steps each round\n"
        "  ect          easy consistency tuning of an EDM model (`train edm`)\n"
        "  consistency  consistency distillation from a model of any family\n"
        "  meanflow     MeanFlow, started from a flow-matching model (`train flow`)\n"
        "  reflow       the 2-rectified flow of a flow-matching model, on its (noise, sample) pairs\n\n"
        "Examples:\n"
        "  python -m keras_diffusion distill --method ect --teacher runs/edm/model.keras --out runs/ect\n"
        "  python -m keras_diffusion distill --method meanflow --teacher runs/flow/model.keras --out runs/mf",
    )
    parser.add_argument("--method", choices=METHODS, required=True, help="the distillation method")
    parser.add_argument("--teacher", required=True, help="the trained model's .keras file")
    parser.add_argument(
        "--out", required=True,
        help="output folder, created if missing, for model.keras, samples_N_steps.png, train_log.json and backup/",
    )
    add_common_args(parser)
    data = parser.add_argument_group("data (at the teacher's image size)")
    data.add_argument("--dataset", default="mnist", help=f"one of {', '.join(DATASETS)} or a folder of images")
    data.add_argument("--num-train-images", type=positive_int, default=None, help="train on this many images")
    data.add_argument(
        "--exclude-held-out", action="store_true",
        help="mnist only: leave out the 1,000 held-out digits that `evaluate` scores against",
    )
    optim = parser.add_argument_group("optimization")
    optim.add_argument("--epochs", type=positive_int, default=5, help="training epochs")
    optim.add_argument("--batch-size", type=positive_int, default=32, help="batch size")
    optim.add_argument(
        "--learning-rate", type=positive_float, default=2e-4,
        help="AdamW learning rate; lower than training from scratch, since the student starts trained",
    )
    optim.add_argument("--ema", type=momentum, default=0.999, help="EMA momentum of the saved weights; 0: off")
    add_checkpoint_flag(optim)
    method = parser.add_argument_group("method options")
    method.add_argument(
        "--teacher-steps", type=positive_int, default=8,
        help="progressive: the teacher's DDIM steps on its own levels (even); each round halves them",
    )
    method.add_argument(
        "--rounds", type=positive_int, default=3, help="progressive: rounds of halving, each of --epochs epochs"
    )
    method.add_argument("--num-pairs", type=positive_int, default=2000, help="reflow: (noise, sample) pairs to draw")
    method.add_argument(
        "--pair-steps", type=positive_int, default=25, help="reflow: Heun steps of the teacher's ODE per pair"
    )
    parser.add_argument("--num-samples", type=positive_int, default=64, help="images in each grid")


def build_student(method, teacher, total_steps, seed):
    """The untrained student of `method` for `teacher`, or a ValueError naming the teacher it needs.

    Example:
    >>> student = build_student("ect", keras_diffusion.load_model("edm.keras"), 2000, 0)  # doctest: +SKIP
    """
    from keras_diffusion.distill import ConsistencyModel
    from keras_diffusion.distill import MeanFlow
    from keras_diffusion.models import DiffusionModel

    if not isinstance(teacher, DiffusionModel) or isinstance(teacher, (ConsistencyModel, MeanFlow)):
        raise ValueError(
            f"--teacher must be a trained diffusion model (train ddpm|flow|edm|score); it holds a "
            f"{type(teacher).__name__}, which is already a few-step model."
        )
    if method == "progressive":
        raise ValueError("Progressive distillation runs in rounds: use distill_progressively.")
    if method == "ect":
        return ConsistencyModel.from_teacher(teacher, "ect", total_steps=total_steps, seed=seed)
    if method == "consistency":
        return ConsistencyModel.from_teacher(teacher, "cd", seed=seed)
    if method == "reflow":
        return reflow_student(teacher, seed)
    return MeanFlow.from_flow(teacher, seed=seed)


def reflow_student(teacher, seed):
    """A flow-matching copy of a flow teacher (network and EMA weights), to train on its pairs.

    Example:
    >>> student = reflow_student(keras_diffusion.load_model("flow.keras"), seed=0)  # doctest: +SKIP
    """
    import keras

    from keras_diffusion.models import FlowMatching

    if getattr(teacher.process, "kind", None) != "flow":
        raise ValueError(
            f"Reflow needs a flow-matching teacher; --teacher holds a {type(teacher).__name__}. Train one with "
            "`python -m keras_diffusion train flow`."
        )
    process = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(teacher.process))
    return FlowMatching(teacher.copy_network(), process, num_classes=teacher.num_classes, seed=seed)


def reflow_pairs(args, teacher):
    """The teacher's `--num-pairs` (noise, sample) pairs, kept in `OUT/pairs.npz` for a rerun."""
    import numpy as np

    from keras_diffusion.files import write_npz

    path = os.path.join(args.out, "pairs.npz")
    if os.path.isfile(path):
        with np.load(path) as saved:
            pairs = {key: saved[key] for key in saved.files}
        if len(pairs["images"]) == args.num_pairs:
            print(f"Reusing the {args.num_pairs:,} pairs in {path}.")
            return pairs
    print(f"Drawing {args.num_pairs:,} (noise, sample) pairs with {args.pair_steps} Heun steps of the teacher's ODE...")
    pairs = teacher.reflow_pairs(args.num_pairs, num_steps=args.pair_steps, seed=args.seed)
    write_npz(path, pairs)
    return pairs


def _compile(model, args):
    from keras_diffusion.optimizers import AdamW

    model.compile(optimizer=AdamW(args.learning_rate, weight_decay=1e-4, use_ema=args.ema > 0, ema_momentum=args.ema))


def distill_progressively(args, teacher, images):
    """`--rounds` rounds of progressive distillation; each round's student is kept in `OUT/round_K/`.

    A rerun skips the finished rounds and resumes the unfinished one.
    Returns the last student and every round's epoch log.
    """
    import argparse

    import keras_diffusion
    from keras_diffusion.distill import ProgressiveDistillation
    from keras_diffusion.resume import ResumableBatches

    logs = []
    for round_index in range(1, args.rounds + 1):
        folder = os.path.join(args.out, f"round_{round_index}")
        path = os.path.join(folder, "model.keras")
        if os.path.isfile(path):
            teacher = keras_diffusion.load_model(path)
            print(f"Round {round_index}: done before, {teacher.process.num_steps} step(s) ({path}).")
            continue
        student = ProgressiveDistillation.from_teacher(teacher, args.teacher_steps, seed=args.seed)
        print(f"Round {round_index}: {2 * student.process.num_steps} -> {student.process.num_steps} steps.")
        _compile(student, args)
        os.makedirs(folder, exist_ok=True)
        round_args = argparse.Namespace(**{**vars(args), "out": folder})
        backup = fit_with_backup(
            student, ResumableBatches(images, args.batch_size, seed=args.seed + round_index), args=round_args,
            epochs=args.epochs,
        )
        replace_atomically(path, student.save)
        logs.append({"round": round_index, "steps": student.process.num_steps, "epochs": backup.log})
        backup.delete()
        teacher = student
    return teacher, logs


def run(args):
    """Runs `distill`; returns 0 after printing the files written."""
    import keras

    import keras_diffusion
    from keras_diffusion.images import save_grid
    from keras_diffusion.resume import ResumableBatches

    if not os.path.isfile(args.teacher):
        raise ValueError(f"--teacher {args.teacher!r} is not a file. Pass the teacher's model.keras.")
    make_out_folder(args.out)
    keras.utils.set_random_seed(args.seed)
    teacher = keras_diffusion.load_model(args.teacher)
    args.image_size, args.channels = teacher.image_shape[0], teacher.image_shape[-1]
    images = load_images(args, teacher.image_shape)
    if tuple(images.shape[1:]) != tuple(teacher.image_shape):
        raise ValueError(
            f"--dataset {args.dataset!r} gives images of shape {tuple(images.shape[1:])}; the teacher makes "
            f"{teacher.image_shape}. Use the data the teacher was trained on."
        )
    start = time.process_time()
    if args.method == "progressive":
        if args.teacher_steps % 2**args.rounds:
            raise ValueError(
                f"--rounds {args.rounds} halves the steps {args.rounds} times: --teacher-steps must be a multiple "
                f"of {2 ** args.rounds}; received {args.teacher_steps}."
            )
        student, logs = distill_progressively(args, teacher, images)
        epochs, resumes = logs, []
    else:
        student = build_student(args.method, teacher, args.epochs * -(-len(images) // args.batch_size), args.seed)
        if args.method == "reflow":
            images = reflow_pairs(args, teacher)
        _compile(student, args)
        print(
            f"Distilling a {type(teacher).__name__} into a {type(student).__name__} ({args.method}) with the "
            f"{keras.backend.backend()} backend."
        )
        backup = fit_with_backup(student, ResumableBatches(images, args.batch_size, seed=args.seed), args=args,
                                 epochs=args.epochs)
        epochs, resumes = backup.log, backup.resumes
    train_cpu_seconds = time.process_time() - start
    model_path = replace_atomically(os.path.join(args.out, "model.keras"), student.save)

    grids, sample_seconds = {}, {}
    supported = getattr(student.process, "num_steps", None)
    for steps in [n for n in GRID_STEPS if supported is None or supported % n == 0]:
        start = time.perf_counter()
        samples = student.generate(args.num_samples, num_steps=steps, seed=args.seed, verbose=False)
        sample_seconds[steps] = round(time.perf_counter() - start, 3)
        grids[steps] = save_grid(os.path.join(args.out, f"samples_{steps}_steps.png"), samples)
    log = {
        "args": vars(args),
        "backend": keras.backend.backend(),
        "keras_version": keras.__version__,
        "teacher": args.teacher,
        "num_train_images": len(images["images"]) if isinstance(images, dict) else len(images),
        "epochs": epochs,
        "resumed": resumes,
        "train_cpu_seconds_this_process": round(train_cpu_seconds, 3),
        "sample_seconds": sample_seconds,
        "model": model_path,
        "samples": grids,
    }
    log_path = write_json(os.path.join(args.out, "train_log.json"), log)
    if args.method != "progressive":
        backup.delete()
    print(
        f"Distilled in {train_cpu_seconds / 60:.1f} CPU minutes.\nModel:   {model_path}\n"
        + "".join(f"Samples: {path} ({steps} step{'s' * (steps > 1)})\n" for steps, path in grids.items())
        + f"Log:     {log_path}"
    )
    return 0
