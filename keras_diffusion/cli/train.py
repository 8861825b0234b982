"""`train ddpm|ddim|flow|edm|score|consistency|meanflow`: train a diffusion model on a dataset, with a grid of samples.

Each family loads the data, builds a U-Net from a preset, trains its model
with Keras' `fit()` (`fit_with_backup`: an interrupted run resumes exactly
from `OUT/backup`), and saves `OUT/model.keras`, `OUT/samples.png` (sampled with
the family's default sampler unless told otherwise) and `OUT/train_log.json`.

Example:
    $ python -m keras_diffusion train ddpm --dataset mnist --out runs/mnist
    $ python -m keras_diffusion train flow --dataset mnist --time-sampling uniform --out runs/flow
"""

import os
import time
from dataclasses import dataclass
from dataclasses import field
from typing import Callable

from keras_diffusion.cli.args import add_command
from keras_diffusion.cli.args import add_common_args
from keras_diffusion.cli.args import add_sampling_args
from keras_diffusion.cli.args import default_of
from keras_diffusion.cli.args import generate_kwargs
from keras_diffusion.cli.args import int_list
from keras_diffusion.cli.args import make_out_folder
from keras_diffusion.cli.args import momentum
from keras_diffusion.cli.args import non_negative_int
from keras_diffusion.cli.args import positive_float
from keras_diffusion.cli.args import positive_int
from keras_diffusion.cli.args import resolve_sampling
from keras_diffusion.datasets import DATASETS
from keras_diffusion.distill import ConsistencyModel
from keras_diffusion.distill import ConsistencyProcess
from keras_diffusion.distill import MeanFlow
from keras_diffusion.files import replace_atomically
from keras_diffusion.files import write_json
from keras_diffusion.models import DDIM
from keras_diffusion.models import DDPM
from keras_diffusion.models import EDM
from keras_diffusion.models import FlowMatching
from keras_diffusion.models import ScoreModel
from keras_diffusion.models.score import WEIGHTINGS
from keras_diffusion.models.base import LOSS_TYPES
from keras_diffusion.networks import DDIM_UNET_PRESETS
from keras_diffusion.networks import UNET_PRESETS
from keras_diffusion.parameterizations import prediction_types
from keras_diffusion.processes import BETA_SCHEDULES
from keras_diffusion.processes import TIME_SAMPLINGS
from keras_diffusion.processes import ContinuousCosineSchedule
from keras_diffusion.processes import DiscreteVPSchedule
from keras_diffusion.processes import EDMProcess
from keras_diffusion.processes import RectifiedFlow
from keras_diffusion.processes import VESDE
from keras_diffusion.processes.sde import SDES

# build_unet's arguments that --widths, --num-res-blocks, ... override, and build_ddim_unet's.
_UNET_FLAGS = {
    "widths": "widths",
    "num_res_blocks": "num_res_blocks",
    "attention_resolutions": "attention_resolutions",
    "norm_groups": "norm_groups",
}
_DDIM_UNET_FLAGS = {"widths": "widths", "num_res_blocks": "block_depth"}


@dataclass(frozen=True)
class Family:
    """One `train` subcommand: a model class on its process, with its own flags.

    Attributes:
        model_class: the `DiffusionModel` subclass to train.
        process_class: its process; `process(args)` builds it from the flags.
        help: one line for `train --help`.
        add_arguments: `f(group)` adding the family's own diffusion flags.
        process: `f(args)` -> the process.
        presets: the U-Net presets it trains on (`--network` choices;
            default `UNET_PRESETS`).
        default_network: the preset used when `--network` is left out.
        network_flags: CLI flag -> argument of the preset's network builder.
        model_kwargs: further keyword arguments of `model_class`.
        model_flags: CLI flag -> keyword argument of `model_class`.
        min_snr: whether the family takes `--min-snr-gamma`.
        network_kwargs: further arguments of the preset's network builder.
        schedules_over_run: the model takes `total_steps`, the run's
            optimizer steps (a consistency model's level schedule).
    """

    model_class: type
    process_class: type
    help: str
    add_arguments: Callable
    process: Callable
    presets: dict = field(default_factory=lambda: UNET_PRESETS)
    default_network: str = "mnist_small"
    network_flags: dict = field(default_factory=lambda: _UNET_FLAGS)
    model_kwargs: dict = field(default_factory=dict)
    model_flags: dict = field(default_factory=dict)
    min_snr: bool = True
    network_kwargs: dict = field(default_factory=dict)
    schedules_over_run: bool = False


def _add_ddpm_args(group):
    group.add_argument("--beta-schedule", choices=BETA_SCHEDULES, default="cosine", help="noise schedule")
    group.add_argument("--timesteps", type=positive_int, default=1000, help="training timesteps T")


def _add_flow_args(group):
    group.add_argument(
        "--time-sampling",
        choices=TIME_SAMPLINGS,
        default=default_of(RectifiedFlow, "time_sampling"),
        help="how training times t are drawn: SD3's logit-normal, uniform (Liu et al. 2022) or "
        "SD3's mode sampling",
    )
    group.add_argument(
        "--shift",
        type=positive_float,
        default=default_of(RectifiedFlow, "shift"),
        help="SD3's time shift of the training and sampling times; above 1 moves them towards "
        "the noise (KerasHub's SD3 uses 3)",
    )


def _add_score_args(group):
    group.add_argument(
        "--sde", choices=tuple(SDES), default="ve",
        help="the SDE, with score_sde's defaults: VE (sigma 0.01 to 50), VP or sub-VP (beta 0.1 to 20)",
    )
    group.add_argument(
        "--weighting", choices=WEIGHTINGS, default=default_of(ScoreModel, "weighting"),
        help="denoising score matching weight: sigma^2 (plain noise error) or g(t)^2 (likelihood)",
    )


def _add_edm_args(group, process_class=EDMProcess):
    for name, text in (
        ("sigma_data", "the data's standard deviation, which the preconditioning assumes"),
        ("sigma_min", "the smallest sampling noise level"),
        ("sigma_max", "the largest noise level, where sampling starts"),
    ):
        group.add_argument(
            "--" + name.replace("_", "-"), type=positive_float, default=default_of(process_class, name), help=text
        )
    group.add_argument(
        "--p-mean", type=float, default=default_of(process_class, "p_mean"),
        help="mean of the training log noise levels, log(sigma) ~ N(p_mean, p_std^2)",
    )
    group.add_argument(
        "--p-std", type=positive_float, default=default_of(process_class, "p_std"),
        help="standard deviation of the training log noise levels",
    )


def _add_meanflow_args(group):
    group.add_argument(
        "--interval-fraction", type=float, default=default_of(MeanFlow, "interval_fraction"),
        help="fraction of training examples with r < t (MeanFlow's best: 0.25); the rest train plain flow matching",
    )


def _edm_like(process_class):
    return lambda args: process_class(
        sigma_min=args.sigma_min, sigma_max=args.sigma_max, sigma_data=args.sigma_data,
        p_mean=args.p_mean, p_std=args.p_std,
    )


FAMILIES = {
    "ddpm": Family(
        model_class=DDPM,
        process_class=DiscreteVPSchedule,
        help="a DDPM (Ho et al. 2020) on a discrete VP schedule",
        add_arguments=_add_ddpm_args,
        process=lambda args: DiscreteVPSchedule(args.beta_schedule, num_train_timesteps=args.timesteps),
    ),
    "ddim": Family(
        model_class=DDIM,
        process_class=ContinuousCosineSchedule,
        help="the keras.io DDIM: continuous cosine rates, data normalization adapted on the images, MAE loss",
        presets=DDIM_UNET_PRESETS,
        default_network="ddim_keras_io",
        network_flags=_DDIM_UNET_FLAGS,
        add_arguments=lambda group: None,
        process=lambda args: ContinuousCosineSchedule(),
        # KID is measured by the `evaluate` command, not during CLI training.
        model_kwargs={"kid_feature_extractor": None},
    ),
    "flow": Family(
        model_class=FlowMatching,
        process_class=RectifiedFlow,
        help="flow matching on the rectified flow x_t = (1 - t) x0 + t eps, as SD3 trains",
        add_arguments=_add_flow_args,
        process=lambda args: RectifiedFlow(shift=args.shift, time_sampling=args.time_sampling),
    ),
    "edm": Family(
        model_class=EDM,
        process_class=EDMProcess,
        help="EDM (Karras et al. 2022): a preconditioned denoiser on lognormal noise levels",
        add_arguments=_add_edm_args,
        process=_edm_like(EDMProcess),
        min_snr=False,
    ),
    "consistency": Family(
        model_class=ConsistencyModel,
        process_class=ConsistencyProcess,
        help="a consistency model (improved consistency training, Song & Dhariwal 2023) for 1-4 step sampling",
        add_arguments=lambda group: _add_edm_args(group, ConsistencyProcess),
        process=_edm_like(ConsistencyProcess),
        min_snr=False,
        schedules_over_run=True,
    ),
    "meanflow": Family(
        model_class=MeanFlow,
        process_class=RectifiedFlow,
        help="a MeanFlow model (Geng et al. 2025): average velocities, one-step sampling",
        add_arguments=_add_meanflow_args,
        process=lambda args: RectifiedFlow(logit_mean=-0.4, logit_std=1.0),
        model_flags={"interval_fraction": "interval_fraction"},
        min_snr=False,
        network_kwargs={"interval_input": True},
    ),
    "score": Family(
        model_class=ScoreModel,
        process_class=VESDE,
        help="a score model (Song et al. 2021) on a VE, VP or sub-VP SDE, by denoising score matching",
        add_arguments=_add_score_args,
        process=lambda args: SDES[args.sde](),
        model_flags={"weighting": "weighting"},
        min_snr=False,
    ),
}


def add_parser(subparsers):
    """Adds `train` and its subcommands, one per entry of `FAMILIES`."""
    train = add_command(
        subparsers,
        __name__,
        help="train a diffusion model (ddpm, ddim, flow, edm, score, consistency or meanflow)",
        description="Trains a diffusion model and saves it with a grid of samples. Re-running an\n"
        "interrupted command resumes exactly where its last checkpoint left it.\n\n"
        "Examples:\n"
        "  python -m keras_diffusion train ddpm --dataset mnist --out runs/mnist\n"
        "  python -m keras_diffusion train flow --dataset mnist --out runs/flow\n"
        "  python -m keras_diffusion train edm --dataset mnist --out runs/edm\n"
        "  python -m keras_diffusion train score --sde ve --dataset mnist --out runs/score\n"
        "  python -m keras_diffusion train meanflow --dataset mnist --out runs/meanflow\n\n"
        "Run `python -m keras_diffusion train MODEL --help` for the flags of each model.",
    )
    families = train.add_subparsers(dest="model", title="models", metavar="MODEL", required=True)
    for name, family in FAMILIES.items():
        _add_family_parser(families, name, family)


def _add_family_parser(subparsers, name, family):
    parser = add_command(
        subparsers,
        name,
        help=family.help,
        description=f"Trains {family.help}.\nSaves the model, a grid of samples and a log; re-running "
        "an interrupted command\nresumes exactly where its last checkpoint (every epoch end, and "
        "every --checkpoint-every steps) left it.\n\n"
        f"Example:\n  python -m keras_diffusion train {name} --dataset mnist --out runs/{name}",
    )
    parser.add_argument(
        "--out",
        required=True,
        help="output folder, created if missing, for model.keras, samples.png, "
        "train_log.json, backup/ (to resume) and samples/",
    )
    add_common_args(parser)

    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset",
        default="mnist",
        help=f"one of {', '.join(DATASETS)} (mnist and digits work offline; the "
        "others are downloaded by keras.datasets) or the path of a folder of images",
    )
    data.add_argument(
        "--image-size", type=positive_int, default=None,
        help="image height and width (default: the network preset's)",
    )
    data.add_argument(
        "--channels", type=int, choices=(1, 3), default=None,
        help="for an image folder: 1 (grayscale) or 3 (RGB) (default: the network preset's)",
    )
    data.add_argument(
        "--num-train-images", type=positive_int, default=None,
        help="train on this many images, a seeded random subset (default: all)",
    )
    data.add_argument(
        "--exclude-held-out",
        action="store_true",
        help="mnist only: leave out the 1,000 held-out digits that `evaluate` and the "
        "bundled classifier's accuracy use (keras_diffusion.metrics.mnist_held_out), "
        "so FID is measured on digits the model never saw",
    )

    net = parser.add_argument_group("network (the image shape always follows the data)")
    net.add_argument(
        "--network",
        choices=sorted(family.presets),
        default=family.default_network,
        help="U-Net preset (keras_diffusion.networks); its image shape is the default one",
    )
    flag_help = {
        "widths": ("channels of each U-Net level, comma-separated, e.g. 32,64,128", int_list),
        "num_res_blocks": ("residual blocks per level", positive_int),
        "attention_resolutions": ("feature-map heights with self-attention, comma-separated; '' for none", int_list),
        "norm_groups": ("GroupNormalization groups; must divide every width", positive_int),
    }
    for flag in family.network_flags:
        text, kind = flag_help[flag]
        net.add_argument(
            "--" + flag.replace("_", "-"), type=kind, default=None, help=f"{text} (default: the preset's)"
        )

    diffusion = parser.add_argument_group("diffusion")
    family.add_arguments(diffusion)
    diffusion.add_argument(
        "--prediction-type",
        choices=prediction_types(family.process_class()),
        default=default_of(family.model_class, "prediction_type"),
        help="what the network predicts (keras_diffusion.parameterizations)",
    )
    diffusion.add_argument(
        "--loss", choices=LOSS_TYPES, default=default_of(family.model_class, "loss_type"), help="training loss"
    )
    if family.min_snr:
        diffusion.add_argument(
            "--min-snr-gamma", type=positive_float, default=None,
            help="Min-SNR loss weighting gamma, 5 in Hang et al. 2023 (default: off)",
        )

    optim = parser.add_argument_group("optimization")
    optim.add_argument("--epochs", type=positive_int, default=5, help="training epochs")
    optim.add_argument(
        "--batch-size", type=positive_int, default=32,
        help="batch size (32: more updates per epoch than 64, which matters in a short CPU run)",
    )
    optim.add_argument(
        "--learning-rate", type=positive_float, default=2e-3, help="AdamW learning rate (weight decay 1e-4)"
    )
    optim.add_argument(
        "--ema",
        type=momentum,
        default=0.999,
        help="momentum of the exponential moving average of the weights that "
        "is saved and sampled from; 0 turns it off. Its time scale is "
        "1 / (1 - EMA) steps, reached after the warm-up (--ema-warmup-power)",
    )
    optim.add_argument(
        "--ema-warmup-power", type=float, default=2.0 / 3.0,
        help="the EMA's momentum warms up as min(EMA, 1 - (1 + step)^-power), as diffusers' "
        "EMAModel(use_ema_warmup=True): its time scale is 22 steps after 100, 100 after 1,000 "
        "(keras_diffusion.optimizers.AdamW); 0 keeps Keras' fixed momentum from the first step",
    )
    add_checkpoint_flag(optim)
    optim.add_argument(
        "--sample-every", type=non_negative_int, default=0,
        help="also write OUT/samples/epoch_NNNN.png every this many epochs (0: never)",
    )
    add_sampling_args(parser).add_argument(
        "--num-samples", type=positive_int, default=64, help="images in OUT/samples.png"
    )


# Flags that shape only what happens after training, or how often it checkpoints:
# a rerun that resumes may change them.
NOT_RUN_FLAGS = (
    "out", "backend", "checkpoint_every", "sample_every", "num_samples",
    "sampler", "steps", "eta", "sigma_schedule", "timestep_spacing", "clip_sample", "sample_prompts",
)


def fit_with_backup(model, data, *, args, epochs, callbacks=(), verbose=1):
    """Runs `fit()` with exact resume: the one training loop of every CLI command.

    Checkpoints go to `OUT/backup` at every epoch end and, with
    `--checkpoint-every N`, every N steps (`keras_diffusion.resume`). A rerun
    of the same command after Ctrl+C (which stops at the end of a batch), a
    crash or a kill continues from the last checkpoint exactly: the same
    data order, noise, optimizer and EMA state as the uninterrupted run.
    Ctrl+C stops at the end of a batch and checkpoints that step first, so
    its rerun repeats no step. A rerun with other training arguments is
    refused with the first difference.

    Args:
        model: a compiled, built `keras.Model`.
        data: a `keras_diffusion.resume.ResumableBatches` (or a subclass,
            such as `sd3.TrainingBatches`).
        args: the command's parsed arguments: `out`, `checkpoint_every`, and
            the training arguments a checkpoint must agree with.
        epochs: the total number of epochs, counting those of earlier runs.
        callbacks: further callbacks, e.g. a `SampleGrid`.
        verbose: `fit()`'s verbosity.

    Returns:
        The `ExactBackupAndRestore`: its `log` holds every epoch of the run
        (earlier processes' too) and `resumes` where it resumed. Call its
        `delete()` once the results are saved.

    Example:
    >>> backup = fit_with_backup(model, ResumableBatches(images, 32), args=args, epochs=5)  # doctest: +SKIP
    """
    from keras_diffusion import resume
    from keras_diffusion.callbacks import InterruptAtBatchEnd

    run_config = {
        (key if key in ("command", "model") else "--" + key.replace("_", "-")): value
        for key, value in vars(args).items()
        if key not in NOT_RUN_FLAGS
    }
    backup = resume.ExactBackupAndRestore(
        os.path.join(args.out, "backup"), data, save_freq=getattr(args, "checkpoint_every", 0) or "epoch",
        run_config=run_config, delete_checkpoint=False,
    )
    position = backup.saved_position()
    if position is not None:
        print(f"Resuming from {backup.backup_dir} at {_position_text(backup, position)}.")
    # Ctrl+C stops at a batch end and checkpoints that step (an epoch's last
    # step: its end), so the rerun repeats none; a kill loses the steps since
    # the last checkpoint.
    interrupt = InterruptAtBatchEnd(before_interrupt=backup.save_now)
    try:
        resume.fit(model, backup, epochs=epochs, callbacks=[*callbacks, interrupt], verbose=verbose)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(_interrupted_message(backup)) from None
    finally:
        interrupt.on_train_end()  # restores Ctrl+C if fit() ended early
    return backup


def _position_text(backup, position):
    epoch, step = position
    return f"epoch {epoch + 1}, step {step} (step {epoch * backup.data.steps_per_epoch + step} of the run)"


def _interrupted_message(backup):
    position = backup.saved_position()
    if position is None:
        return "Interrupted before the first checkpoint. Run the same command again to start over."
    return (
        f"Interrupted. The last checkpoint is at {_position_text(backup, position)}, in "
        f"{backup.backup_dir!r}. Run the same command again to resume from it."
    )


def add_checkpoint_flag(parser):
    """`--checkpoint-every N`: checkpoint every N steps too, so a rerun resumes inside an epoch."""
    parser.add_argument(
        "--checkpoint-every", type=non_negative_int, default=0,
        help="also checkpoint to OUT/backup every this many steps, so that a rerun after an "
        "interruption resumes inside the epoch (0: at epoch ends only)",
    )


def load_images(args, preset_shape):
    """The training images `args` name, float32 in [-1, 1], `(N, H, W, C)`."""
    from keras_diffusion.datasets import load_dataset

    image_size = args.image_size or preset_shape[0]
    if args.exclude_held_out:
        if args.dataset != "mnist":
            raise ValueError(
                f"--exclude-held-out applies to --dataset mnist only (received {args.dataset!r}); "
                "drop the flag for other data."
            )
        from keras_diffusion.metrics import mnist_training_split

        print(f"Loading mnist without its held-out digits at {image_size}x{image_size}...")
        images = mnist_training_split(image_size=image_size)[0] * 2.0 - 1.0
        return images[: args.num_train_images]
    if args.dataset in DATASETS:
        loader_args = {"num_images": args.num_train_images, "seed": args.seed}
    else:
        loader_args = {"channels": args.channels or preset_shape[-1], "max_images": args.num_train_images}
    print(f"Loading {args.dataset} at {image_size}x{image_size}...")
    images, _ = load_dataset(args.dataset, image_size=image_size, **loader_args)
    return images


def build_model(args, family, process, images):
    """The family's model for `args`, on a U-Net from its preset, compiled with the command's optimizer."""
    from keras_diffusion.networks import unet_from_preset
    from keras_diffusion.optimizers import AdamW

    image_shape = tuple(int(d) for d in images.shape[1:])
    overrides = {
        argument: getattr(args, flag)
        for flag, argument in family.network_flags.items()
        if getattr(args, flag) is not None
    }
    network = unet_from_preset(args.network, image_shape=image_shape, **overrides, **family.network_kwargs)
    kwargs = {"prediction_type": args.prediction_type, "loss_type": args.loss, "seed": args.seed}
    if family.schedules_over_run:
        kwargs["total_steps"] = args.epochs * -(-len(images) // args.batch_size)
    if family.min_snr:
        kwargs["min_snr_gamma"] = args.min_snr_gamma
    kwargs.update({argument: getattr(args, flag) for flag, argument in family.model_flags.items()})
    model = family.model_class(network, process, **kwargs, **family.model_kwargs)
    if isinstance(model, DDIM):  # the keras.io DDIM normalizes its images
        model.adapt(images)
    model.compile(
        optimizer=AdamW(
            learning_rate=args.learning_rate, weight_decay=1e-4, use_ema=args.ema > 0, ema_momentum=args.ema,
            ema_warmup_power=args.ema_warmup_power or None,
        )
    )
    return model


def run(args):
    """Runs `train MODEL`; returns 0 after printing the files written."""
    import keras

    from keras_diffusion.callbacks import SampleGrid
    from keras_diffusion.images import save_grid

    family = FAMILIES[args.model]
    # Every check that can fail runs before the data is loaded and training starts.
    process = family.process(args)
    resolve_sampling(args, family.model_class, process)
    make_out_folder(args.out)
    keras.utils.set_random_seed(args.seed)

    images = load_images(args, family.presets[args.network]["image_shape"])
    model = build_model(args, family, process, images)
    image_shape = model.image_shape
    num_parameters = model.network.count_params()
    print(
        f"Training a {type(model).__name__} ({num_parameters:,} parameters) on {len(images):,} images of "
        f"shape {image_shape} with the {keras.backend.backend()} backend."
    )
    sampling = generate_kwargs(args, model)
    callbacks = []
    if args.sample_every:
        callbacks.append(
            SampleGrid(
                os.path.join(args.out, "samples"), every_n_epochs=args.sample_every,
                num_images=args.num_samples, seed=args.seed, **sampling,
            )
        )
    from keras_diffusion.resume import ResumableBatches

    data = ResumableBatches(images, args.batch_size, seed=args.seed)
    backup = fit_with_backup(model, data, args=args, epochs=args.epochs, callbacks=callbacks)
    # The whole run's epochs, those of earlier processes included (resumed runs).
    train_seconds = sum(entry["seconds"] for entry in backup.log)
    images_per_second = len(images) * len(backup.log) / max(train_seconds, 1e-9)
    model_path = replace_atomically(os.path.join(args.out, "model.keras"), model.save)

    print(f"Generating {args.num_samples} samples ({args.sampler}, {args.steps} steps)...")
    start = time.perf_counter()
    samples = model.generate(args.num_samples, seed=args.seed, verbose=True, **sampling)
    sample_seconds = time.perf_counter() - start
    grid_path = save_grid(os.path.join(args.out, "samples.png"), samples)

    log = {
        "args": vars(args),
        "backend": keras.backend.backend(),
        "keras_version": keras.__version__,
        "num_train_images": len(images),
        "image_shape": list(image_shape),
        "num_parameters": num_parameters,
        "epochs": backup.log,
        "resumed": backup.resumes,
        "train_seconds": round(train_seconds, 3),
        "images_per_second": round(images_per_second, 3),
        "sample_seconds": round(sample_seconds, 3),
        "model": model_path,
        "samples": grid_path,
    }
    log_path = write_json(os.path.join(args.out, "train_log.json"), log)
    backup.delete()  # only now: a kill before this point still resumes
    resumed = "".join(f" Resumed at epoch {mark['epoch']}, step {mark['step']}." for mark in backup.resumes)
    print(
        f"Trained {len(backup.log)} epoch(s) in {train_seconds:.1f} s "
        f"({images_per_second:.1f} images/s).{resumed}\n"
        f"Model:   {model_path}\nSamples: {grid_path}\nLog:     {log_path}"
    )
    return 0
