"""`generate`: Stable Diffusion 3 text-to-image, image-to-image or inpainting.

Example:
    $ python -m keras_diffusion generate --preset tiny --prompt "a photo of a cat" --out cat.png
"""

from keras_diffusion.cli.args import add_command
from keras_diffusion.cli.args import add_sd3_model_args
from keras_diffusion.cli.args import check_parent
from keras_diffusion.cli.args import load_sd3
from keras_diffusion.samplers import SAMPLERS


def add_parser(subparsers):
    """Adds `generate`."""
    parser = add_command(
        subparsers,
        __name__,
        help="Stable Diffusion 3 text-to-image, image-to-image or inpainting",
        description="Generates images with SD3. With --image it redraws that image "
        "(image-to-image);\nwith --image and --mask it repaints the white part of the mask "
        "(inpainting).\nSeveral --prompt values make a batch, written as OUT_0.png, OUT_1.png, ...\n"
        "--preset tiny runs offline with random weights (noise-like images).\n\n"
        "Example:\n  python -m keras_diffusion generate --preset tiny --prompt 'a photo of a cat' "
        "--out cat.png",
    )
    add_sd3_model_args(parser)
    parser.add_argument("--prompt", nargs="+", required=True, help="prompt(s)")
    parser.add_argument("--negative-prompt", default=None, help="negative prompt (default: none)")
    parser.add_argument("--image", default=None, help="input image for image-to-image")
    parser.add_argument("--mask", default=None, help="inpainting mask; white = repaint")
    parser.add_argument(
        "--strength", type=float, default=None,
        help="in [0, 1]: how far --image is redrawn (default: 0.8 for image-to-image, 0.6 for inpainting)",
    )
    parser.add_argument(
        "--sampler", choices=tuple(SAMPLERS), default=None,
        help="text-to-image with this sampler of keras_diffusion.samplers instead of KerasHub's own "
        "generate (its Euler steps), e.g. dpmpp_2m",
    )
    parser.add_argument("--out", required=True, help="output .png; its folder must exist")


def run(args):
    """Runs `generate`; returns 0 after printing the files written."""
    check_parent(args.out)
    if args.mask is not None and args.image is None:
        raise ValueError("--mask needs --image: inpainting repaints part of an image.")
    if args.strength is not None and args.image is None:
        raise ValueError("--strength needs --image (image-to-image or inpainting).")
    if args.sampler is not None and args.image is not None:
        raise ValueError("--sampler is for text-to-image: drop --image (or --sampler).")
    from keras_diffusion.sd3 import generate

    model = load_sd3(args)
    common = dict(num_steps=args.steps, guidance_scale=args.guidance, seed=args.seed)
    if args.strength is not None:
        common["strength"] = args.strength
    if args.image is None:
        images = generate.text_to_image(model, args.prompt, args.negative_prompt, sampler=args.sampler, **common)
    elif args.mask is None:
        image = _read_image(args.image, model.image_size, "RGB")
        images = generate.image_to_image(model, image, args.prompt, args.negative_prompt, **common)
    else:
        image = _read_image(args.image, model.image_size, "RGB")
        mask = _read_image(args.mask, model.image_size, "L") > 127
        images = generate.inpaint(model, image, mask, args.prompt, args.negative_prompt, **common)
    for path in generate.save_images(args.out, images):
        print(f"Wrote {path}")
    return 0


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
