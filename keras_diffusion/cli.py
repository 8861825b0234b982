"""The command-line interface: `python -m keras_diffusion train|sample|evaluate`.

`train ddpm` loads a dataset, builds a U-Net from a preset, trains a `DDPM`
with Keras' `fit()` (resuming an interrupted run from `OUT/backup`), saves
`OUT/model.keras`, a grid of samples `OUT/samples.png` and `OUT/train_log.json`.
`sample` loads a saved model and writes a grid of new samples. `evaluate`
measures FID, KID and IS of a model's samples against held-out MNIST digits.

`--backend` sets `KERAS_BACKEND`, which Keras reads once, when it is first
imported; so this module imports Keras only after parsing the arguments.

Example:
    $ python -m keras_diffusion train ddpm --dataset mnist --out runs/mnist
    $ python -m keras_diffusion sample --model runs/mnist/model.keras \\
          --num-images 16 --out grid.png --backend jax
"""

import argparse
import os
import sys
import time

from keras_diffusion.files import replace_atomically
from keras_diffusion.files import write_json
from keras_diffusion.sd3 import cli as sd3_cli

BACKENDS = ("jax", "tensorflow", "torch")
# These mirror the library's tables (checked by tests/test_cli.py); they are
# spelled out here because reading them would import Keras before --backend
# is known.
DATASETS = ("mnist", "digits", "keras_mnist", "fashion_mnist", "cifar10")
SAMPLERS = ("ddim", "ddpm", "dpmpp_2m", "dpmpp_2m_sde", "euler", "euler_ancestral", "heun", "lms", "unipc")
SIGMA_SCHEDULES = ("model", "karras", "exponential")
BETA_SCHEDULES = ("linear", "cosine", "sigmoid")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
LOSS_TYPES = ("mse", "mae")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
# Flags that only shape the sampling after training: a resumed run may change them.
SAMPLING_ARGS = ("sampler", "steps", "eta", "sigma_schedule", "timestep_spacing", "clip_sample")
FEATURE_EXTRACTORS = ("mnist", "inception")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults and keeps the examples in descriptions as written.

    A `None` default is left out: those flags' help says what leaving them
    out does.
    """

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive integer, got {text!r}")
    return value


def _positive_float(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _momentum(text):
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text!r}")
    return value


def _int_list(text):
    """'32,64,128' -> (32, 64, 128); '' -> ()."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as '32,64,128', got {text!r}"
        ) from None


def _add_common_args(parser):
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="Keras backend; by default the KERAS_BACKEND environment variable, "
        "else Keras' configured one (~/.keras/keras.json)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random seed; the same seed gives the same result on one backend",
    )


def _add_sampling_args(parser):
    group = parser.add_argument_group("sampling")
    group.add_argument(
        "--sampler",
        choices=SAMPLERS,
        default="ddim",
        help="sampler (keras_diffusion.samplers); heun evaluates the model 2 * steps - 1 times, "
        "the others once per step",
    )
    group.add_argument(
        "--steps",
        type=_positive_int,
        default=50,
        help="denoising steps, at most the model's training timesteps",
    )
    group.add_argument(
        "--eta",
        type=float,
        default=None,
        help="stochasticity of ddim, euler_ancestral and dpmpp_2m_sde (the other samplers "
        "have none): 0 is deterministic DDIM, 1 adds fresh noise at each step like DDPM, "
        "which forgives a briefly trained model's errors far better (default: 1 for a DDPM; "
        "a DDIM model samples deterministically, as keras.io does)",
    )
    group.add_argument(
        "--sigma-schedule",
        choices=SIGMA_SCHEDULES,
        default="model",
        help="noise levels to visit: the model's own (spaced by --timestep-spacing), "
        "karras (rho=7) or exponential",
    )
    group.add_argument(
        "--timestep-spacing",
        choices=TIMESTEP_SPACINGS,
        default=None,
        help="how the sampling steps are spread over the training timesteps (as in diffusers; "
        "default: the model's, leading for a DDPM, trailing, i.e. keras.io's steps, for a DDIM)",
    )
    group.add_argument(
        "--clip-sample",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="clip the predicted clean image to [-1, 1] at each step (diffusers' "
        "default); it keeps the samples of a briefly trained model from saturating "
        "(default: on for a DDPM; off for a DDIM, which samples in its normalized space)",
    )
    return group


def build_parser():
    """Returns the `argparse` parser of the `keras-diffusion` command.

    Example:
    >>> build_parser().parse_args(["sample", "--model", "m.keras", "--out", "g.png"]).steps
    50
    """
    parser = argparse.ArgumentParser(
        prog="python -m keras_diffusion",
        description="Train diffusion models and sample from them.\n\n"
        "Examples:\n"
        "  python -m keras_diffusion train ddpm --dataset mnist --out runs/mnist\n"
        "  python -m keras_diffusion sample --model runs/mnist/model.keras --out grid.png\n"
        "  python -m keras_diffusion evaluate --model runs/mnist/model.keras --num-images 1000\n"
        "  python -m keras_diffusion walk --preset tiny --prompts 'a cat' 'a dog' --frames 8 --out walk.gif\n\n"
        "Run `python -m keras_diffusion COMMAND --help` for the flags of each command.",
        formatter_class=_Formatter,
    )
    commands = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")

    train = commands.add_parser(
        "train",
        help="train a diffusion model",
        description="Trains a diffusion model, saves it with a grid of samples. "
        "Re-running an interrupted command resumes exactly where its last checkpoint (every epoch "
        "end, and every --checkpoint-every steps) left it.\n\n"
        "Example:\n  python -m keras_diffusion train ddpm --dataset mnist --out runs/mnist",
        formatter_class=_Formatter,
    )
    train.add_argument(
        "model",
        choices=("ddpm", "ddim"),
        help="the kind of model to train: ddpm, or ddim (the keras.io DDIM: continuous "
        "cosine rates, data normalization adapted on the images, MAE loss)",
    )
    train.add_argument(
        "--out",
        required=True,
        help="output folder, created if missing, for model.keras, samples.png, "
        "train_log.json, backup/ (to resume) and samples/",
    )
    _add_common_args(train)

    data = train.add_argument_group("data")
    data.add_argument(
        "--dataset",
        default="mnist",
        help=f"one of {', '.join(DATASETS)} (mnist and digits work offline; the "
        "others are downloaded by keras.datasets) or the path of a folder of images",
    )
    data.add_argument(
        "--image-size",
        type=_positive_int,
        default=None,
        help="image height and width (default: the network preset's)",
    )
    data.add_argument(
        "--channels",
        type=int,
        choices=(1, 3),
        default=None,
        help="for an image folder: 1 (grayscale) or 3 (RGB) (default: the network preset's)",
    )
    data.add_argument(
        "--num-train-images",
        type=_positive_int,
        default=None,
        help="train on this many images, a seeded random subset (default: all)",
    )
    data.add_argument(
        "--exclude-held-out",
        action="store_true",
        help="mnist only: leave out the 1,000 held-out digits that `evaluate` and the "
        "bundled classifier's accuracy use (keras_diffusion.metrics.mnist_held_out), "
        "so FID is measured on digits the model never saw",
    )

    net = train.add_argument_group("network (the image shape always follows the data)")
    net.add_argument(
        "--network",
        default=None,
        help="U-Net preset of keras_diffusion.networks.UNET_PRESETS, e.g. "
        "mnist_small (32x32x1, fast on CPU, the default for ddpm) or ddpm_keras_io "
        "(64x64x3); for ddim, of DDIM_UNET_PRESETS: ddim_keras_io (64x64x3, the default)",
    )
    net.add_argument(
        "--widths",
        type=_int_list,
        default=None,
        help="channels of each U-Net level, comma-separated, e.g. 32,64,128 (default: the preset's)",
    )
    net.add_argument(
        "--num-res-blocks",
        type=_positive_int,
        default=None,
        help="residual blocks per level (default: the preset's)",
    )
    net.add_argument(
        "--attention-resolutions",
        type=_int_list,
        default=None,
        help="feature-map heights with self-attention, comma-separated; '' for "
        "none (default: the preset's)",
    )
    net.add_argument(
        "--norm-groups",
        type=_positive_int,
        default=None,
        help="GroupNormalization groups; must divide every width (default: the preset's)",
    )

    diffusion = train.add_argument_group("diffusion")
    diffusion.add_argument(
        "--beta-schedule", choices=BETA_SCHEDULES, default="cosine", help="noise schedule"
    )
    diffusion.add_argument(
        "--timesteps", type=_positive_int, default=1000, help="training timesteps T"
    )
    diffusion.add_argument(
        "--prediction-type",
        choices=PREDICTION_TYPES,
        default="epsilon",
        help="what the network predicts: the noise, the clean image or v",
    )
    diffusion.add_argument(
        "--loss", choices=LOSS_TYPES, default=None,
        help="training loss (default: mse for ddpm, mae for ddim as keras.io)",
    )
    diffusion.add_argument(
        "--min-snr-gamma",
        type=_positive_float,
        default=None,
        help="Min-SNR loss weighting gamma, 5 in Hang et al. 2023 (default: off)",
    )

    optim = train.add_argument_group("optimization")
    optim.add_argument("--epochs", type=_positive_int, default=5, help="training epochs")
    optim.add_argument(
        "--batch-size", type=_positive_int, default=32,
        help="batch size (32: more updates per epoch than 64, which matters in a short CPU run)",
    )
    optim.add_argument(
        "--learning-rate",
        type=_positive_float,
        default=2e-3,
        help="AdamW learning rate (weight decay 1e-4)",
    )
    optim.add_argument(
        "--ema",
        type=_momentum,
        default=0.99,
        help="momentum of the exponential moving average of the weights that "
        "is saved and sampled from; 0 turns it off. Its time scale is "
        "1 / (1 - EMA) steps: keep it well below the number of training steps",
    )
    optim.add_argument(
        "--checkpoint-every",
        type=_non_negative_int,
        default=0,
        help="also checkpoint to OUT/backup every this many steps, so that a rerun after an "
        "interruption resumes inside the epoch (0: at epoch ends only)",
    )
    optim.add_argument(
        "--sample-every",
        type=_non_negative_int,
        default=0,
        help="also write OUT/samples/epoch_NNNN.png every this many epochs (0: never)",
    )

    _add_sampling_args(train).add_argument(
        "--num-samples", type=_positive_int, default=64, help="images in OUT/samples.png"
    )

    sample = commands.add_parser(
        "sample",
        help="generate images with a trained model",
        description="Loads a model saved by `train` (or any keras-diffusion model "
        "saved as .keras) and writes a grid of generated images.\n\n"
        "Example:\n  python -m keras_diffusion sample --model runs/mnist/model.keras "
        "--out grid.png",
        formatter_class=_Formatter,
    )
    sample.add_argument("--model", required=True, help="the .keras model file")
    sample.add_argument("--out", required=True, help="PNG file for the grid; its folder must exist")
    _add_common_args(sample)
    _add_sampling_args(sample).add_argument(
        "--num-images", type=_positive_int, default=64, help="how many images in the grid"
    )
    _add_evaluate_command(commands)
    sd3_cli.register_commands(commands, _add_common_args)
    return parser


def _add_evaluate_command(commands):
    evaluate = commands.add_parser(
        "evaluate",
        help="measure FID, KID and IS of a model's samples against held-out MNIST digits",
        description="Generates images with a saved model and compares them with the "
        "1,000 bundled MNIST digits that the MNIST classifier was not trained on "
        "(keras_diffusion.metrics.mnist_held_out), brought to the model's image size "
        "as `train --dataset mnist` does. Prints FID, KID and the Inception Score, "
        "with the feature extractor named.\n\n"
        "Example:\n  python -m keras_diffusion evaluate --model runs/mnist/model.keras "
        "--num-images 1000",
        formatter_class=_Formatter,
    )
    evaluate.add_argument("--model", required=True, help="the .keras model file")
    evaluate.add_argument(
        "--num-images", type=_positive_int, default=1000,
        help="images to generate; as many held-out real digits are used, at most 1,000",
    )
    evaluate.add_argument(
        "--batch-size", type=_positive_int, default=250,
        help="images generated, and passed through the feature extractor, at a time",
    )
    evaluate.add_argument(
        "--feature-extractor", choices=FEATURE_EXTRACTORS, default="mnist",
        help="mnist: the classifier bundled with keras-diffusion (offline); inception: "
        "InceptionV3 with ImageNet weights (downloaded by Keras once, into ~/.keras/models)",
    )
    evaluate.add_argument(
        "--json", default=None, help="also write the results to this JSON file (its folder must exist)"
    )
    _add_common_args(evaluate)
    _add_sampling_args(evaluate)


def _select_backend(name, restart):
    """Makes Keras use backend `name` (None: leave the environment's choice).

    Keras reads KERAS_BACKEND once, when it is first imported. If it is
    already imported with another backend (something imported it before
    the arguments were parsed), a command-line run (`restart=True`) starts
    again on the requested backend; a call from Python gets an error.
    """
    if name is None:
        return
    os.environ["KERAS_BACKEND"] = name
    if "keras" not in sys.modules:
        return
    import keras

    if keras.backend.backend() == name:
        return
    if restart:
        os.execv(sys.executable, [sys.executable, "-m", "keras_diffusion", *sys.argv[1:]])
    raise ValueError(
        f"Keras is already imported with the {keras.backend.backend()!r} backend, so "
        f"--backend {name} cannot take effect. Run the command in a new process."
    )


def _check_parent(path, flag="--out"):
    """Fails fast, before the model is loaded, if the folder of `path` is missing."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(
            f"The folder {parent!r} for {flag} {path!r} does not exist. Create it first "
            "or choose another path."
        )


def _make_out_folder(path):
    """Creates `path` and missing parents, like `mkdir -p`."""
    if os.path.isfile(path):
        raise FileExistsError(f"--out {path!r} is a file; pass a folder.")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        # Typically a file where a folder should be, or no permission.
        raise OSError(
            f"Cannot create the output folder --out {path!r}: {err.strerror}. "
            "Choose another path."
        ) from None


def _load_images(args, preset_shape):
    from keras_diffusion.datasets import load_dataset

    image_size = args.image_size or preset_shape[0]
    if args.dataset in DATASETS:
        loader_args = {"num_images": args.num_train_images, "seed": args.seed}
    else:
        loader_args = {
            "channels": args.channels or preset_shape[-1],
            "max_images": args.num_train_images,
        }
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
    print(f"Loading {args.dataset} at {image_size}x{image_size}...")
    images, _ = load_dataset(args.dataset, image_size=image_size, **loader_args)
    return images


def _build_ddpm(args, image_shape, schedule):
    import keras

    from keras_diffusion.models import DDPM
    from keras_diffusion.networks import unet_from_preset

    overrides = {
        "widths": args.widths,
        "num_res_blocks": args.num_res_blocks,
        "attention_resolutions": args.attention_resolutions,
        "norm_groups": args.norm_groups,
    }
    overrides = {key: value for key, value in overrides.items() if value is not None}
    network = unet_from_preset(args.network, image_shape=image_shape, **overrides)
    model = DDPM(
        network,
        schedule,
        prediction_type=args.prediction_type,
        loss_type=args.loss,
        min_snr_gamma=args.min_snr_gamma,
        seed=args.seed,
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(
            learning_rate=args.learning_rate,
            weight_decay=1e-4,
            use_ema=args.ema > 0,
            ema_momentum=args.ema,
        )
    )
    # BackupAndRestore refuses an unbuilt model, and fit() builds it only
    # after the callbacks' on_train_begin.
    model.build((None,) + image_shape)
    return model


def _build_ddim(args, image_shape, images):
    import keras

    from keras_diffusion.models import DDIM
    from keras_diffusion.networks import unet_from_preset

    overrides = {"widths": args.widths, "block_depth": args.num_res_blocks}
    overrides = {key: value for key, value in overrides.items() if value is not None}
    network = unet_from_preset(args.network, image_shape=image_shape, **overrides)
    # KID is measured by `evaluate` (the evaluate command), not during CLI training.
    model = DDIM(
        network,
        kid_feature_extractor=None,
        prediction_type=args.prediction_type,
        loss_type=args.loss,
        min_snr_gamma=args.min_snr_gamma,
        seed=args.seed,
    )
    model.adapt(images)
    model.compile(
        optimizer=keras.optimizers.AdamW(
            learning_rate=args.learning_rate,
            weight_decay=1e-4,
            use_ema=args.ema > 0,
            ema_momentum=args.ema,
        )
    )
    return model


def _fit(args, model, images):
    """Trains with exact resume from `OUT/backup`; returns the `ExactBackupAndRestore` (its `log` is the whole run's)."""
    from keras_diffusion import resume
    from keras_diffusion.callbacks import InterruptAtBatchEnd
    from keras_diffusion.callbacks import SampleGrid

    interrupt = InterruptAtBatchEnd()
    callbacks = [interrupt]
    if args.sample_every:
        callbacks.append(
            SampleGrid(
                os.path.join(args.out, "samples"),
                every_n_epochs=args.sample_every,
                num_images=args.num_samples,
                seed=args.seed,
                **_generate_kwargs(args, model),
            )
        )
    # Exact resume: the data order, generators, optimizer and position come back from OUT/backup.
    run_config = {
        (key if key in ("command", "model") else "--" + key.replace("_", "-")): value
        for key, value in vars(args).items()
        if key not in ("out", "backend", "checkpoint_every", "sample_every", "num_samples", *SAMPLING_ARGS)
    }
    data = resume.ResumableBatches(images, args.batch_size, seed=args.seed)
    backup = resume.ExactBackupAndRestore(
        os.path.join(args.out, "backup"), data, save_freq=args.checkpoint_every or "epoch",
        run_config=run_config, delete_checkpoint=False,
    )
    position = backup.saved_position()
    if position is not None:
        print(f"Resuming from {backup.backup_dir} at epoch {position[0] + 1}, step {position[1]} "
              f"(step {position[0] * data.steps_per_epoch + position[1]} of the run).")
    try:
        resume.fit(model, backup, epochs=args.epochs, callbacks=callbacks, verbose=1)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(
            "Interrupted. Run the same command again to resume from the last checkpoint "
            f"(saved in {backup.backup_dir!r})."
        ) from None
    finally:
        interrupt.on_train_end()  # restores Ctrl+C if fit() ended early
    return backup


def _generate_kwargs(args, model):
    """`generate()` arguments from the sampling flags; flags left out keep the model's defaults."""
    from keras_diffusion.models import DDIM
    from keras_diffusion.samplers import get_sampler

    kwargs = {"sampler": args.sampler, "num_steps": args.steps, "sigma_schedule": args.sigma_schedule}
    if args.timestep_spacing is not None:
        kwargs["timestep_spacing"] = args.timestep_spacing
    if args.clip_sample is not None:
        kwargs["clip_sample"] = args.clip_sample
    if "eta" in get_sampler(args.sampler).options:
        if args.eta is not None:
            kwargs["eta"] = args.eta
        elif not isinstance(model, DDIM):
            kwargs["eta"] = 1.0
    return kwargs


def _train(args):
    import keras

    from keras_diffusion.images import save_grid
    from keras_diffusion.networks import DDIM_UNET_PRESETS
    from keras_diffusion.networks import UNET_PRESETS
    from keras_diffusion.processes import ContinuousCosineSchedule
    from keras_diffusion.processes import DiscreteVPSchedule

    # Every check that can fail runs before the data is loaded and training starts.
    ddim = args.model == "ddim"
    presets = DDIM_UNET_PRESETS if ddim else UNET_PRESETS
    args.network = args.network or ("ddim_keras_io" if ddim else "mnist_small")
    args.loss = args.loss or ("mae" if ddim else "mse")
    if args.network not in presets:
        raise ValueError(
            f"Unknown --network {args.network!r} for {args.model}. Known presets: {', '.join(sorted(presets))}."
        )
    if ddim:
        for flag, value in (("--attention-resolutions", args.attention_resolutions), ("--norm-groups", args.norm_groups)):
            if value is not None:
                raise ValueError(f"{flag} does not apply to ddim: the keras.io DDIM network has no attention and uses BatchNorm.")
        schedule = ContinuousCosineSchedule()
        schedule.sigmas(args.steps, args.timestep_spacing or "trailing")
    else:
        schedule = DiscreteVPSchedule(args.beta_schedule, num_train_timesteps=args.timesteps)
        schedule.inference_timesteps(args.steps, args.timestep_spacing or "leading")
    _make_out_folder(args.out)
    keras.utils.set_random_seed(args.seed)

    images = _load_images(args, presets[args.network]["image_shape"])
    image_shape = tuple(int(d) for d in images.shape[1:])
    model = _build_ddim(args, image_shape, images) if ddim else _build_ddpm(args, image_shape, schedule)
    num_parameters = model.network.count_params()
    print(
        f"Training a {args.model.upper()} ({num_parameters:,} parameters) on {len(images):,} images of "
        f"shape {image_shape} with the {keras.backend.backend()} backend."
    )
    backup = _fit(args, model, images)
    # The whole run's epochs, those of earlier processes included (resumed runs).
    train_seconds = sum(entry["seconds"] for entry in backup.log)
    images_per_second = len(images) * len(backup.log) / train_seconds
    model_path = replace_atomically(os.path.join(args.out, "model.keras"), model.save)

    print(f"Generating {args.num_samples} samples ({args.sampler}, {args.steps} steps)...")
    start = time.perf_counter()
    samples = model.generate(args.num_samples, seed=args.seed, verbose=True, **_generate_kwargs(args, model))
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
    resumed = "".join(
        f" Resumed at epoch {mark['epoch']}, step {mark['step']}." for mark in backup.resumes
    )
    print(
        f"Trained {len(backup.log)} epoch(s) in {train_seconds:.1f} s "
        f"({images_per_second:.1f} images/s).{resumed}\n"
        f"Model:   {model_path}\nSamples: {grid_path}\nLog:     {log_path}"
    )
    return 0


def _sample(args):
    if not os.path.isfile(args.model):
        raise FileNotFoundError(f"Model file {args.model!r} does not exist.")
    _check_parent(args.out)

    import keras

    # Importing these registers the library's classes with Keras, so that
    # load_model can rebuild the model and its network's layers.
    import keras_diffusion.models  # noqa: F401
    import keras_diffusion.networks  # noqa: F401
    from keras_diffusion.images import save_grid

    model = keras.saving.load_model(args.model)
    if not callable(getattr(model, "generate", None)):
        raise ValueError(
            f"{args.model!r} holds a {type(model).__name__}, not a keras-diffusion "
            "model with a generate() method."
        )
    images = model.generate(args.num_images, seed=args.seed, verbose=True, **_generate_kwargs(args, model))
    print(f"Samples: {save_grid(args.out, images)}")
    return 0


def _evaluate(args):
    if not os.path.isfile(args.model):
        raise FileNotFoundError(f"Model file {args.model!r} does not exist.")
    if args.json is not None:
        _check_parent(args.json, "--json")

    import keras
    import numpy as np

    import keras_diffusion.models  # noqa: F401  (registers the classes load_model needs)
    import keras_diffusion.networks  # noqa: F401
    from keras_diffusion import metrics

    # The extractors load first: a missing download fails before any sampling.
    features = metrics.get_feature_extractor(args.feature_extractor, output="features")
    classifier = metrics.get_feature_extractor(args.feature_extractor, output="probabilities")
    model = keras.saving.load_model(args.model)
    if not callable(getattr(model, "generate", None)):
        raise ValueError(
            f"{args.model!r} holds a {type(model).__name__}, not a keras-diffusion "
            "model with a generate() method."
        )
    height, width, channels = model.image_shape
    if height != width or channels != 1:
        raise ValueError(
            f"evaluate compares with MNIST digits, which are square and grayscale, but "
            f"{args.model!r} makes images of shape {(height, width, channels)}. Evaluate "
            "a model trained on MNIST, or use keras_diffusion.metrics from Python with "
            "your own real images."
        )
    real, _ = metrics.mnist_held_out(image_size=height, num_images=min(args.num_images, 1000))

    def extract(extractor, images):
        return np.concatenate(
            [
                keras.ops.convert_to_numpy(extractor(images[i : i + args.batch_size]))
                for i in range(0, len(images), args.batch_size)
            ]
        )

    # Full batches only, so that the sampling loop compiles once; the extra
    # images of the last batch are dropped.
    batch_size = min(args.batch_size, args.num_images)
    start = time.perf_counter()
    generated = np.concatenate(
        [
            model.generate(batch_size, seed=args.seed + i, verbose=False, **_generate_kwargs(args, model))
            for i in range(0, args.num_images, batch_size)
        ]
    )[: args.num_images]
    sample_seconds = time.perf_counter() - start
    real_features, generated_features = extract(features, real), extract(features, generated)
    results = {
        "fid": float(metrics.fid_from_features(real_features, generated_features)),
        "kid": float(metrics.kid_from_features(real_features, generated_features)),
        "inception_score": float(
            metrics.inception_score_from_probabilities(extract(classifier, generated))
        ),
        "real_inception_score": float(
            metrics.inception_score_from_probabilities(extract(classifier, real))
        ),
    }
    print(
        f"Feature extractor: {features.name} ({features.num_features} features; IS over "
        f"its {classifier.num_features} classes)\n"
        f"Generated {len(generated)} images of {height}x{width} ({args.sampler}, {args.steps} "
        f"steps) in {sample_seconds:.1f} s; compared with {len(real)} held-out real MNIST digits.\n"
        f"FID: {results['fid']:.4f}\n"
        f"KID: {results['kid']:.5f}\n"
        f"IS:  {results['inception_score']:.4f} (the real digits: {results['real_inception_score']:.4f})"
    )
    if args.json is not None:
        log = {
            "model": args.model,
            "feature_extractor": features.name,
            "num_generated": len(generated),
            "num_real": len(real),
            "image_size": height,
            **results,
            "sample_seconds": round(sample_seconds, 3),
            "backend": keras.backend.backend(),
            "args": vars(args),
        }
        print(f"Results: {write_json(args.json, log)}")
    return 0


def main(argv=None):
    """Runs the command line `argv` (default: `sys.argv[1:]`); returns the exit code.

    Errors in the input (a missing file, a bad value) print one line
    `error: ...` to stderr and return 2.

    Example:
    >>> main(["sample", "--model", "missing.keras", "--out", "grid.png"])
    2
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        _select_backend(args.backend, restart=argv is None)
        commands = {"train": _train, "sample": _sample, "evaluate": _evaluate, "walk": sd3_cli.run, "generate": sd3_cli.run, "finetune": sd3_cli.run}
        return commands[args.command](args)
    except (ValueError, OSError) as err:
        # OSError covers FileNotFoundError and ConnectionError (a dataset
        # download), which are the user's to fix: no traceback.
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        print(f"\n{err or 'Interrupted.'}", file=sys.stderr)
        return 130
