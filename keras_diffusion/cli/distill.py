"""`distill`: a one- or few-step student from a trained model, with grids at 1, 2 and 4 steps.

Methods (`keras_diffusion.distill`):

- `ect`: easy consistency tuning (Geng et al. 2024) of an EDM model: the
  student starts as the teacher's network and needs no teacher after that.
- `consistency`: consistency distillation (Song et al. 2023) from a model of
  any family, through one Heun step of its probability-flow ODE per example.
- `meanflow`: a MeanFlow model (Geng et al. 2025) started from a
  flow-matching model's network, trained on the data.

The student trains on the teacher's kind of data (`--dataset`, at the
teacher's image size) with `fit()` and exact resume: rerunning an
interrupted command with the same `--out` continues it. Writes
`OUT/model.keras`, `OUT/samples_{1,2,4}_steps.png` and `OUT/train_log.json`.

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

METHODS = ("ect", "consistency", "meanflow")
GRID_STEPS = (1, 2, 4)


def add_parser(subparsers):
    parser = add_command(
        subparsers,
        __name__,
        help="distill a trained model into a 1-4 step student (consistency tuning or distillation, MeanFlow)",
        description="Trains a few-step student from a trained model and saves it with sample grids at\n"
        "1, 2 and 4 steps. Re-running an interrupted command resumes it exactly.\n\n"
        "Methods:\n"
        "  ect          easy consistency tuning of an EDM model (`train edm`)\n"
        "  consistency  consistency distillation from a model of any family\n"
        "  meanflow     MeanFlow, started from a flow-matching model (`train flow`)\n\n"
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
    if method == "ect":
        return ConsistencyModel.from_teacher(teacher, "ect", total_steps=total_steps, seed=seed)
    if method == "consistency":
        return ConsistencyModel.from_teacher(teacher, "cd", seed=seed)
    return MeanFlow.from_flow(teacher, seed=seed)


def run(args):
    """Runs `distill`; returns 0 after printing the files written."""
    import keras

    import keras_diffusion
    from keras_diffusion.images import save_grid
    from keras_diffusion.optimizers import AdamW
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
    total_steps = args.epochs * -(-len(images) // args.batch_size)
    student = build_student(args.method, teacher, total_steps, args.seed)
    student.compile(optimizer=AdamW(args.learning_rate, weight_decay=1e-4, use_ema=args.ema > 0,
                                    ema_momentum=args.ema))
    print(
        f"Distilling a {type(teacher).__name__} into a {type(student).__name__} ({args.method}) on "
        f"{len(images):,} images with the {keras.backend.backend()} backend."
    )
    data = ResumableBatches(images, args.batch_size, seed=args.seed)
    backup = fit_with_backup(student, data, args=args, epochs=args.epochs)
    train_seconds = sum(entry["seconds"] for entry in backup.log)
    model_path = replace_atomically(os.path.join(args.out, "model.keras"), student.save)

    grids, sample_seconds = {}, {}
    for steps in GRID_STEPS:
        start = time.perf_counter()
        samples = student.generate(args.num_samples, num_steps=steps, seed=args.seed, verbose=False)
        sample_seconds[steps] = round(time.perf_counter() - start, 3)
        grids[steps] = save_grid(os.path.join(args.out, f"samples_{steps}_steps.png"), samples)
    log = {
        "args": vars(args),
        "backend": keras.backend.backend(),
        "keras_version": keras.__version__,
        "teacher": args.teacher,
        "num_train_images": len(images),
        "epochs": backup.log,
        "resumed": backup.resumes,
        "train_seconds": round(train_seconds, 3),
        "sample_seconds": sample_seconds,
        "model": model_path,
        "samples": grids,
    }
    log_path = write_json(os.path.join(args.out, "train_log.json"), log)
    backup.delete()
    print(
        f"Distilled for {len(backup.log)} epoch(s) in {train_seconds:.1f} s.\nModel:   {model_path}\n"
        + "".join(f"Samples: {grids[steps]} ({steps} step{'s' * (steps > 1)})\n" for steps in GRID_STEPS)
        + f"Log:     {log_path}"
    )
    return 0
