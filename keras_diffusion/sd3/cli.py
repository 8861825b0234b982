"""`walk`, `generate` and `finetune` subcommands for Stable Diffusion 3.

    python -m keras_diffusion walk --preset PATH_OR_NAME --prompts "a" "b" \\
        --frames 16 --out walk.gif
    python -m keras_diffusion generate --preset ... --prompt "..." \\
        --out image.png
    python -m keras_diffusion finetune --preset ... --data DIR \\
        --method lora|full|dreambooth|textual-inversion --out DIR

`finetune` lives in `finetune_command`.

`--preset tiny` runs offline: it builds a small random model once, caches it
(`--cache`, default `~/.cache/keras_diffusion/sd3_tiny_v2`) and reuses it. Its
images look like noise; it shows the mechanics, not the art.

This module imports neither Keras nor KerasHub at import time, so that the
main CLI can pick the backend (`--backend`) after parsing the arguments.
"""

import argparse
import os
import sys

from keras_diffusion.sd3 import finetune_command
from keras_diffusion.sd3.pipeline import DEFAULT_CACHE_DIR

WALK_KINDS = ("interpolate", "around", "circle", "grid")


def register_commands(subparsers, common_arguments=None):
    """Adds the `walk`, `generate` and `finetune` subcommands.

    Args:
        subparsers: the object `argparse.ArgumentParser.add_subparsers()`
            returned.
        common_arguments: optional `f(parser)` that adds the main CLI's
            shared options to each subcommand. It must add `--seed` (an int
            or None); without it, each subcommand gets its own `--seed`
            (default: None, a random seed).

    Returns:
        `(walk_parser, generate_parser)`.

    Example:
    >>> parser = argparse.ArgumentParser()
    >>> walk_parser, generate_parser = register_commands(parser.add_subparsers())
    >>> parser.parse_args(["generate", "--preset", "tiny", "--prompt", "a cat",
    ...                    "--out", "cat.png"]).sd3_command
    'generate'
    """
    walk = subparsers.add_parser(
        "walk",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="Stable Diffusion 3 latent walk, saved as a GIF or a PNG grid.",
        description=(
            "Walk through SD3's text-embedding or noise space. Kinds: "
            "'interpolate' slerps between --prompts; 'around' takes small "
            "steps away from one prompt; 'circle' loops the initial noise for "
            "one prompt; 'grid' is a --grid-size x --grid-size grid between "
            "four prompts. An --out ending in .gif writes an animation, "
            "anything else a PNG grid. --preset tiny runs offline with "
            "random weights (noise-like images)."
        ),
    )
    _add_model_arguments(walk, common_arguments)
    walk.add_argument("--prompts", nargs="+", required=True, help="prompt(s) to walk")
    walk.add_argument(
        "--kind", choices=WALK_KINDS, default="interpolate", help="which walk (see above)"
    )
    walk.add_argument("--frames", type=int, default=16, help="number of frames (>= 2)")
    walk.add_argument("--grid-size", type=int, default=4, help="cells per side for --kind grid")
    walk.add_argument("--step-size", type=float, default=0.01, help="for --kind around")
    walk.add_argument(
        "--direction", choices=("ones", "random"), default="ones", help="for --kind around"
    )
    walk.add_argument(
        "--vary-latents",
        action="store_true",
        help="new initial noise per frame (interpolate, grid)",
    )
    walk.add_argument("--negative-prompt", default="", help="negative prompt, fixed for every frame")
    walk.add_argument("--batch-size", type=int, default=4, help="frames per compiled call")
    walk.add_argument("--fps", type=float, default=8, help="GIF frames per second")
    walk.add_argument("--loop", type=int, default=0, help="GIF repeats; 0 loops forever")
    walk.add_argument(
        "--rubber-band", action="store_true", help="GIF plays forwards then backwards"
    )
    walk.add_argument("--out", required=True, help="output .gif or .png")
    walk.set_defaults(sd3_command="walk")

    generate = subparsers.add_parser(
        "generate",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="Stable Diffusion 3 text-to-image, image-to-image or inpainting.",
        description=(
            "Generate images with SD3. With --image it redraws that image "
            "(image-to-image); with --image and --mask it repaints the white "
            "part of the mask (inpainting). Several --prompt values make a "
            "batch, written as OUT_0.png, OUT_1.png, ... --preset tiny runs "
            "offline with random weights (noise-like images)."
        ),
    )
    _add_model_arguments(generate, common_arguments)
    generate.add_argument("--prompt", nargs="+", required=True, help="prompt(s)")
    generate.add_argument(
        "--negative-prompt", default=None, help="negative prompt"
    )
    generate.add_argument("--image", default=None, help="input image for image-to-image")
    generate.add_argument("--mask", default=None, help="inpainting mask; white = repaint")
    generate.add_argument(
        "--strength", type=float, default=None,
        help="in [0, 1]: how far --image is redrawn; None means 0.8 for image-to-image, 0.6 for inpainting",
    )
    generate.add_argument(
        "--sampler", default=None,
        help="text-to-image with this sampler of keras_diffusion.samplers (euler, heun, dpmpp_2m, ...) "
        "instead of KerasHub's own",
    )
    generate.add_argument("--out", required=True, help="output .png")
    generate.set_defaults(sd3_command="generate")
    finetune_command.add_parser(
        subparsers, lambda parser: _add_model_arguments(parser, common_arguments)
    )
    return walk, generate


def run(args):
    """Runs the `walk`, `generate` or `finetune` subcommand parsed by `register_commands`.

    Args:
        args: the `argparse.Namespace`.

    Returns:
        0, the exit code, after printing the paths of the files written.

    Raises:
        ValueError, FileNotFoundError, PresetUnavailableError (a
            ConnectionError): with a message for the user, raised before the
            model is loaded where possible.
    """
    if args.sd3_command == "finetune":
        return finetune_command.run(args)
    folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"Cannot write {args.out!r}: the folder {folder!r} does not exist. "
            "Create it first or choose another --out."
        )
    from keras_diffusion.sd3 import pipeline

    model = pipeline.from_preset(
        args.preset,
        image_size=args.size,
        dtype=args.dtype,
        include_t5=not args.no_t5,
        cache_dir=args.cache,
    )
    paths = [_walk(model, args)] if args.sd3_command == "walk" else _generate(model, args)
    for path in paths:
        print(f"Wrote {path}")
    return 0


def main(argv=None):
    """Runs `walk`/`generate` as a standalone program; returns the exit code.

    Errors in the input print one line `error: ...` and return 2, as in the
    main `python -m keras_diffusion` command.
    """
    parser = argparse.ArgumentParser(prog="python -m keras_diffusion.sd3.cli")
    subparsers = parser.add_subparsers(required=True)
    register_commands(subparsers)
    args = parser.parse_args(argv)
    try:
        return run(args)
    # OSError includes FileNotFoundError and PresetUnavailableError.
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _add_model_arguments(parser, common_arguments):
    if common_arguments is None:
        parser.add_argument("--seed", type=int, default=None, help="random seed")
    else:
        common_arguments(parser)
    parser.add_argument(
        "--preset",
        required=True,
        help="'tiny', a local preset folder, or a KerasHub SD3 preset name",
    )
    parser.add_argument("--size", type=int, default=None, help="image size in pixels")
    parser.add_argument("--dtype", default=None, help="e.g. float16, bfloat16")
    parser.add_argument("--no-t5", action="store_true", help="drop the T5 text encoder")
    parser.add_argument("--steps", type=int, default=28, help="denoising steps")
    parser.add_argument("--guidance", type=float, default=7.0, help="guidance scale")
    parser.add_argument(
        "--cache",
        default=DEFAULT_CACHE_DIR,
        help="where --preset tiny is cached (default: %(default)s)",
    )


def _walk(model, args):
    from keras_diffusion.sd3 import walks

    common = dict(
        negative_prompt=args.negative_prompt,
        num_steps=args.steps,
        guidance_scale=args.guidance,
        seed=args.seed,
        batch_size=args.batch_size,
    )
    if args.kind == "interpolate":
        frames = walks.interpolate_prompts(
            model, args.prompts, frames=args.frames, vary_latents=args.vary_latents, **common
        )
    elif args.kind == "grid":
        frames = walks.interpolation_grid(
            model, args.prompts, size=args.grid_size, vary_latents=args.vary_latents, **common
        )
    else:
        if len(args.prompts) != 1:
            raise ValueError(f"--kind {args.kind} takes one prompt, got {len(args.prompts)}.")
        if args.kind == "around":
            frames = walks.walk_around_prompt(
                model,
                args.prompts[0],
                frames=args.frames,
                step_size=args.step_size,
                direction=args.direction,
                **common,
            )
        else:
            frames = walks.circular_walk(model, args.prompts[0], frames=args.frames, **common)
    if args.out.lower().endswith(".gif"):
        return walks.save_gif(
            args.out, frames, fps=args.fps, loop=args.loop, rubber_band=args.rubber_band
        )
    rows = args.grid_size if args.kind == "grid" else None
    return walks.save_grid(args.out, frames, rows=rows)


def _generate(model, args):
    from keras_diffusion.sd3 import generate

    common = dict(num_steps=args.steps, guidance_scale=args.guidance, seed=args.seed)
    if args.strength is not None:
        common["strength"] = args.strength
    if args.image is None:
        if args.mask is not None:
            raise ValueError("--mask needs --image: inpainting repaints part of an image.")
        if args.strength is not None:
            raise ValueError("--strength needs --image (image-to-image or inpainting).")
        images = generate.text_to_image(
            model, args.prompt, args.negative_prompt, sampler=args.sampler, **common
        )
    elif args.sampler is not None:
        raise ValueError("--sampler is for text-to-image: drop --image (or --sampler).")
    elif args.mask is None:
        image = _read_image(args.image, model.image_size, "RGB")
        images = generate.image_to_image(
            model, image, args.prompt, args.negative_prompt, **common
        )
    else:
        image = _read_image(args.image, model.image_size, "RGB")
        mask = _read_image(args.mask, model.image_size, "L") > 127
        images = generate.inpaint(
            model, image, mask, args.prompt, args.negative_prompt, **common
        )
    return generate.save_images(args.out, images)


def _read_image(path, size, mode):
    """Reads an image file as uint8, resized to the model's `(height, width)`."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert(mode)
        height, width = size
        if image.size != (width, height):
            # The CLI adapts the file; the library asks for the exact size.
            print(f"Resizing {path} from {image.size[0]}x{image.size[1]} to {width}x{height}.")
            resample = Image.NEAREST if mode == "L" else Image.LANCZOS
            image = image.resize((width, height), resample)
        return np.asarray(image)


if __name__ == "__main__":
    sys.exit(main())
