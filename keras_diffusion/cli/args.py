"""What the commands share: how a command is declared, argument types, common flags and checks.

Every command module calls `add_command(subparsers, __name__, ...)` in its
`add_parser(subparsers)`, and every `choices=` reads a library registry, so
that a name added to the library appears in the CLI without being copied.

Example:
>>> import argparse
>>> parser = argparse.ArgumentParser()
>>> command = add_command(parser.add_subparsers(dest="command"), "keras_diffusion.cli.sample",
...                       help="h", description="d")
>>> add_common_args(command)
>>> parser.parse_args(["sample", "--seed", "3"]).seed
3
"""

import argparse
import inspect
import os

from keras_diffusion.compile import BACKENDS
from keras_diffusion.models import DDIM
from keras_diffusion.models import DDPM
from keras_diffusion.models import EDM
from keras_diffusion.models import FlowMatching
from keras_diffusion.processes import TIMESTEP_SPACINGS
from keras_diffusion.processes import ContinuousCosineSchedule
from keras_diffusion.processes import DiscreteVPSchedule
from keras_diffusion.processes import EDMProcess
from keras_diffusion.processes import RectifiedFlow
from keras_diffusion.samplers import SAMPLERS
from keras_diffusion.samplers import SIGMA_SCHEDULES
from keras_diffusion.samplers import get_sigmas
from keras_diffusion.samplers import default_num_steps
from keras_diffusion.sd3.pipeline import DEFAULT_CACHE_DIR


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults and keeps the examples in descriptions as written.

    A `None` or empty default is left out, as is the `False` of an on/off flag:
    those flags' help says what leaving them out does.
    """

    def _get_help_string(self, action):
        if action.default in (None, "") or (action.default is False and action.nargs == 0):
            return action.help
        return super()._get_help_string(action)


def add_command(subparsers, module_name, *, help, description):
    """Adds the subcommand named after its module (`keras_diffusion.cli.train` -> `train`).

    Args:
        subparsers: from `argparse.ArgumentParser.add_subparsers()`.
        module_name: the command module's `__name__`; its last part names
            the command.
        help: one line for the list of commands.
        description: the command's `--help` text, examples included.

    Returns:
        The subcommand's parser.
    """
    return subparsers.add_parser(
        module_name.rpartition(".")[2], help=help, description=description, formatter_class=Formatter
    )


def positive_int(text):
    """An argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def non_negative_int(text):
    """An argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive integer, got {text!r}")
    return value


def positive_float(text):
    """An argparse type: a number > 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def momentum(text):
    """An argparse type: a number in [0, 1), e.g. an EMA momentum."""
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text!r}")
    return value


def int_list(text):
    """An argparse type: '32,64,128' -> (32, 64, 128); '' -> ()."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as '32,64,128', got {text!r}"
        ) from None


def default_of(cls, name):
    """The default of `cls(..., name=...)`, read from its signature or its bases'.

    The CLI's defaults are the library's, not copies of them.

    Example:
    >>> from keras_diffusion.processes import EDMProcess
    >>> default_of(EDMProcess, "sigma_data")
    0.5
    """
    for klass in cls.__mro__:
        parameter = inspect.signature(klass.__init__).parameters.get(name)
        if parameter is not None and parameter.default is not inspect.Parameter.empty:
            return parameter.default
    raise ValueError(f"{cls.__name__} has no default for {name!r}.")


def add_common_args(parser):
    """Adds `--backend` and `--seed`, which every command takes."""
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


def add_sampling_args(parser):
    """Adds the `sampling` flag group of `generate()`; returns the group for more flags."""
    own = "; ".join(
        f"{model.default_sampler} with {process().default_num_steps(model.default_sampler)} steps for {name}"
        for name, model, process in (
            ("ddpm", DDPM, DiscreteVPSchedule), ("ddim", DDIM, ContinuousCosineSchedule),
            ("flow", FlowMatching, RectifiedFlow), ("edm", EDM, EDMProcess),
        )
    )
    with_eta = [name for name, sampler in SAMPLERS.items() if "eta" in sampler.options]
    spacings = ", ".join(
        f"{process.default_timestep_spacing} for {name}"
        for name, process in (("ddpm", DiscreteVPSchedule), ("ddim", ContinuousCosineSchedule), ("flow", RectifiedFlow))
    )
    group = parser.add_argument_group("sampling")
    group.add_argument(
        "--sampler",
        choices=tuple(SAMPLERS),
        default=None,
        help="sampler (keras_diffusion.samplers); heun evaluates the model 2 * steps - 1 times, "
        f"the others once per step (default: the model's own, as generate() chooses: {own})",
    )
    group.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help="denoising steps, at most a DDPM's training timesteps (default: the model's own, see --sampler)",
    )
    group.add_argument(
        "--eta",
        type=float,
        default=None,
        help=f"stochasticity of {', '.join(with_eta)} (the other samplers "
        "have none): 0 is deterministic DDIM, 1 adds fresh noise at each step like DDPM "
        "(default: the sampler's own, 0 for ddim)",
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
        f"default: the process's, {spacings}; edm has its own Karras levels)",
    )
    group.add_argument(
        "--clip-sample",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="clip the predicted clean image to [-1, 1] at each step (diffusers' "
        "default); it keeps the samples of a briefly trained model from saturating "
        "(default: on for a DDPM; off for the others: a DDIM samples in its normalized space)",
    )
    return group


def resolve_sampling(args, model_class, process):
    """Fills in `args.sampler` and `args.steps` if left out, and checks them against `process`.

    Runs before any data is loaded or model trained, so that a bad
    combination (more steps than a DDPM's timesteps, a spacing that EDM does
    not take) fails at once with the library's ValueError.
    """
    if args.sampler is None:
        args.sampler = model_class.default_sampler
    if args.steps is None:
        args.steps = default_num_steps(process, args.sampler)
    get_sigmas(process, args.steps, args.sigma_schedule, args.timestep_spacing)


def generate_kwargs(args, model):
    """`model.generate()` arguments from the sampling flags; flags left out keep the model's defaults."""
    resolve_sampling(args, type(model), model.process)
    kwargs = {"sampler": args.sampler, "num_steps": args.steps, "sigma_schedule": args.sigma_schedule}
    if args.timestep_spacing is not None:
        kwargs["timestep_spacing"] = args.timestep_spacing
    if args.clip_sample is not None:
        kwargs["clip_sample"] = args.clip_sample
    if "eta" in SAMPLERS[args.sampler].options and args.eta is not None:
        kwargs["eta"] = args.eta
    return kwargs


def add_sd3_model_args(parser):
    """Adds the flags that load and run Stable Diffusion 3 (`walk`, `generate`, `finetune`)."""
    add_common_args(parser)
    group = parser.add_argument_group("model")
    group.add_argument(
        "--preset",
        required=True,
        help="'tiny', a local preset folder, or a KerasHub SD3 preset name",
    )
    group.add_argument("--size", type=positive_int, default=None, help="image size in pixels (default: the preset's)")
    group.add_argument("--dtype", default=None, help="e.g. float16, bfloat16 (default: the preset's)")
    group.add_argument("--no-t5", action="store_true", help="drop the T5 text encoder")
    group.add_argument("--steps", type=positive_int, default=28, help="denoising steps")
    group.add_argument("--guidance", type=float, default=7.0, help="guidance scale")
    group.add_argument("--cache", default=DEFAULT_CACHE_DIR, help="where --preset tiny is cached")


def load_sd3(args, dtype=None):
    """The SD3 model that `--preset`, `--size`, `--no-t5` and `--cache` name, in `dtype` (default `--dtype`)."""
    from keras_diffusion.sd3 import pipeline

    return pipeline.from_preset(
        args.preset,
        image_size=args.size,
        dtype=dtype or args.dtype,
        include_t5=not args.no_t5,
        cache_dir=args.cache,
    )


def check_parent(path, flag="--out"):
    """Fails fast, before a model is loaded, if the folder of `path` is missing."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(
            f"The folder {parent!r} for {flag} {path!r} does not exist. Create it first "
            "or choose another path."
        )


def make_out_folder(path):
    """Creates the `--out` folder `path` and missing parents, like `mkdir -p`."""
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


def check_model_file(path):
    """Fails fast if the `--model` file `path` is missing."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Model file {path!r} does not exist.")


def load_diffusion_model(path):
    """Loads a keras-diffusion model saved as `.keras` (`--model`), or says why it cannot."""
    from keras_diffusion.files import load_model

    model = load_model(path)  # names a missing, truncated or unregistered file
    if not callable(getattr(model, "generate", None)):
        raise ValueError(
            f"{path!r} holds a {type(model).__name__}, not a keras-diffusion "
            "model with a generate() method."
        )
    return model
