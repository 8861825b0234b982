"""The command line: `python -m keras_diffusion COMMAND ...`, one module per command.

| command | module | what it does |
|---|---|---|
| `train ddpm\\|ddim\\|flow\\|edm\\|score\\|consistency\\|meanflow` | `train` | trains a model on a dataset; saves it, a sample grid and a log |
| `distill` | `distill` | a 1-4 step student of a trained model (consistency tuning or distillation, MeanFlow) |
| `sample` | `sample` | writes a grid of images from a saved model |
| `evaluate` | `evaluate` | FID, KID and IS of a saved model against held-out MNIST |
| `generate` | `generate` | Stable Diffusion 3 text-to-image, image-to-image, inpainting |
| `walk` | `walk` | SD3 latent walks as a GIF or a PNG grid |
| `finetune` | `finetune` | SD3 LoRA, full, DreamBooth and textual-inversion fine-tuning |

A command module exposes `add_parser(subparsers)` and `run(args)`; shared
flags, argument types and checks live in `args`. Every `choices=` reads a
library registry. Training runs through `train.fit_with_backup`.

`--backend` sets `KERAS_BACKEND`. Keras reads it once, when it is first
imported, and `import keras_diffusion` imports Keras: a run whose backend
differs from the one already imported starts again on the requested one.

Example:
    $ python -m keras_diffusion train ddpm --dataset mnist --out runs/mnist
    $ python -m keras_diffusion sample --model runs/mnist/model.keras \\
          --num-images 16 --out grid.png --backend jax
"""

import argparse
import os
import sys

from keras_diffusion.cli import distill
from keras_diffusion.cli import evaluate
from keras_diffusion.cli import finetune
from keras_diffusion.cli import generate
from keras_diffusion.cli import sample
from keras_diffusion.cli import train
from keras_diffusion.cli import walk
from keras_diffusion.cli.args import Formatter

# In the order `--help` lists them.
COMMANDS = {
    module.__name__.rpartition(".")[2]: module for module in (train, distill, sample, evaluate, walk, generate, finetune)
}


def build_parser():
    """Returns the `argparse` parser of `python -m keras_diffusion`.

    Example:
    >>> build_parser().parse_args(["train", "flow", "--out", "runs/flow"]).time_sampling
    'logit_normal'
    """
    parser = argparse.ArgumentParser(
        prog="python -m keras_diffusion",
        description="Train diffusion models, sample from them, and run Stable Diffusion 3.\n\n"
        "Examples:\n"
        "  python -m keras_diffusion train ddpm --dataset mnist --out runs/mnist\n"
        "  python -m keras_diffusion train flow --dataset mnist --out runs/flow\n"
        "  python -m keras_diffusion sample --model runs/mnist/model.keras --out grid.png\n"
        "  python -m keras_diffusion evaluate --model runs/mnist/model.keras --num-images 1000\n"
        "  python -m keras_diffusion walk --preset tiny --prompts 'a cat' 'a dog' --frames 8 --out walk.gif\n\n"
        "Run `python -m keras_diffusion COMMAND --help` for the flags of each command.",
        formatter_class=Formatter,
    )
    subparsers = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    for module in COMMANDS.values():
        module.add_parser(subparsers)
    return parser


def _select_backend(name, restart):
    """Makes Keras use backend `name` (None: leave the environment's choice).

    Keras reads KERAS_BACKEND once, when it is first imported. If it is
    already imported with another backend (`import keras_diffusion` imports
    it), a command-line run (`restart=True`) starts again on the requested
    backend; a call from Python gets an error.
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


def main(argv=None):
    """Runs the command line `argv` (default: `sys.argv[1:]`); returns the exit code.

    Errors in the input (a missing file, a bad value) print one line
    `error: ...` to stderr and return 2; argparse's own errors (an unknown
    flag or choice) exit with status 2.

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
        return COMMANDS[args.command].run(args)
    except (ValueError, OSError) as err:
        # OSError covers FileNotFoundError, ConnectionError (a dataset
        # download) and SD3's PresetUnavailableError, which are the user's
        # to fix: no traceback.
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        print(f"\n{err or 'Interrupted.'}", file=sys.stderr)
        return 130
