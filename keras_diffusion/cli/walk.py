"""`walk`: a Stable Diffusion 3 latent walk, saved as a GIF or a PNG grid.

`--preset tiny` runs offline: it builds a small random model once, caches it
(`--cache`) and reuses it. Its images look like noise; it shows the
mechanics, not the art.

Example:
    $ python -m keras_diffusion walk --preset tiny --prompts "a cat" "a dog" --frames 8 --out walk.gif
"""

from keras_diffusion.cli.args import add_command
from keras_diffusion.cli.args import add_sd3_model_args
from keras_diffusion.cli.args import check_parent
from keras_diffusion.cli.args import load_sd3
from keras_diffusion.cli.args import positive_int
from keras_diffusion.sd3 import walks


def _interpolate(model, args, common):
    return walks.interpolate_prompts(model, args.prompts, frames=args.frames, vary_latents=args.vary_latents, **common)


def _grid(model, args, common):
    return walks.interpolation_grid(model, args.prompts, size=args.grid_size, vary_latents=args.vary_latents, **common)


def _around(model, args, common):
    return walks.walk_around_prompt(
        model, _one_prompt(args), frames=args.frames, step_size=args.step_size, direction=args.direction, **common
    )


def _circle(model, args, common):
    return walks.circular_walk(model, _one_prompt(args), frames=args.frames, **common)


# --kind -> the function of keras_diffusion.sd3.walks that draws its frames.
KINDS = {"interpolate": _interpolate, "around": _around, "circle": _circle, "grid": _grid}


def _one_prompt(args):
    if len(args.prompts) != 1:
        raise ValueError(f"--kind {args.kind} takes one prompt, got {len(args.prompts)}.")
    return args.prompts[0]


def add_parser(subparsers):
    """Adds `walk`."""
    parser = add_command(
        subparsers,
        __name__,
        help="Stable Diffusion 3 latent walk, saved as a GIF or a PNG grid",
        description="Walks through SD3's text-embedding or noise space. Kinds:\n"
        "  interpolate  slerps between --prompts\n"
        "  around       takes small steps away from one prompt\n"
        "  circle       loops the initial noise for one prompt\n"
        "  grid         a --grid-size x --grid-size grid between four prompts\n"
        "An --out ending in .gif writes an animation, anything else a PNG grid.\n"
        "--preset tiny runs offline with random weights (noise-like images).\n\n"
        "Example:\n  python -m keras_diffusion walk --preset tiny --prompts 'a cat' 'a dog' "
        "--frames 8 --out walk.gif",
    )
    add_sd3_model_args(parser)
    parser.add_argument("--prompts", nargs="+", required=True, help="prompt(s) to walk")
    parser.add_argument("--kind", choices=tuple(KINDS), default="interpolate", help="which walk (see above)")
    parser.add_argument("--frames", type=int, default=16, help="number of frames (>= 2)")
    parser.add_argument("--grid-size", type=positive_int, default=4, help="cells per side for --kind grid")
    parser.add_argument("--step-size", type=float, default=0.01, help="for --kind around")
    parser.add_argument("--direction", choices=walks.DIRECTIONS, default="ones", help="for --kind around")
    parser.add_argument(
        "--vary-latents", action="store_true", help="new initial noise per frame (interpolate, grid)"
    )
    parser.add_argument("--negative-prompt", default="", help="negative prompt, fixed for every frame (default: none)")
    parser.add_argument("--batch-size", type=positive_int, default=4, help="frames per compiled call")
    parser.add_argument("--fps", type=float, default=8, help="GIF frames per second")
    parser.add_argument("--loop", type=int, default=0, help="GIF repeats; 0 loops forever")
    parser.add_argument("--rubber-band", action="store_true", help="GIF plays forwards then backwards")
    parser.add_argument("--out", required=True, help="output .gif or .png; its folder must exist")


def run(args):
    """Runs `walk`; returns 0 after printing the file written."""
    check_parent(args.out)
    model = load_sd3(args)
    common = dict(
        negative_prompt=args.negative_prompt,
        num_steps=args.steps,
        guidance_scale=args.guidance,
        seed=args.seed,
        batch_size=args.batch_size,
    )
    frames = KINDS[args.kind](model, args, common)
    if args.out.lower().endswith(".gif"):
        path = walks.save_gif(args.out, frames, fps=args.fps, loop=args.loop, rubber_band=args.rubber_band)
    else:
        path = walks.save_grid(args.out, frames, rows=args.grid_size if args.kind == "grid" else None)
    print(f"Wrote {path}")
    return 0
