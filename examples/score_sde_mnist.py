"""A VE-SDE score model on the bundled MNIST digits (Song et al. 2021), sampled with predictor-corrector and the ODE.

The network is this package's `mnist_small` U-Net, trained by denoising
score matching (`ScoreModel`, `weighting="sigma2"`) to predict the noise of
`x_sigma = x0 + sigma * eps` from `log(sigma)` (what score_sde's NCSN++
embeds), with `sigma(t) = sigma_min (sigma_max / sigma_min)^t`. `sigma_max`
follows Song & Ermon 2020's first technique: the largest Euclidean distance
between two training digits (of the first 1,000), printed at the start.

Each epoch writes a grid with the predictor-corrector sampler (reverse
diffusion + one Langevin corrector step per level, `--sample-steps`
levels). After training, the same 36 noises give two more grids: OUT/pc.png
(PC, `--pc-steps` levels: score_sde uses 1,000) and OUT/ode.png (the
probability-flow ODE with adaptive RK45, `--rtol`; score_sde: 1e-5).

    KERAS_BACKEND=torch python examples/score_sde_mnist.py
    KERAS_BACKEND=torch python examples/score_sde_mnist.py --epochs 1 --sample-steps 10 --pc-steps 20 --rtol 1e-2

The default (16x16 digits, 20 epochs of 79 batches of 64) was not run here,
so the quality of its digits is unmeasured. The second command above (a
smoke run; sigma_max came out at 14.7) took 382 s for its epoch on torch at
load average 3-4 on 2 cores (381 s of CPU time and 9.7 minutes of wall time
in all, the three grids included); its grids are noise, since the EMA
(0.995) holds most of the initial network after 79 steps.

It writes OUT/epochs/epoch_XXXX.png, OUT/pc.png, OUT/ode.png, OUT/model.keras
and OUT/log.json (with the CPU seconds).
"""

import os

import numpy as np

import keras_diffusion as kd
from example_utils import mnist_parser
from example_utils import train_mnist
from keras_diffusion.datasets import load_mnist
from keras_diffusion.images import save_grid


def largest_distance(images):
    """The largest Euclidean distance between two of `images` (Song & Ermon 2020, technique 1)."""
    flat = images.reshape(len(images), -1).astype("float64")
    squared = (flat**2).sum(axis=1)
    return float(np.sqrt(max((squared[:, None] + squared[None] - 2 * flat @ flat.T).max(), 0.0)))


def main():
    parser = mnist_parser(__doc__, out="runs/score_sde_mnist", epochs=20, sampler="pc", num_steps=100)
    parser.add_argument("--sigma-min", type=float, default=0.01, help="VE's smallest noise level (score_sde: 0.01)")
    parser.add_argument("--pc-steps", type=int, default=1000, help="levels of the final PC grid")
    parser.add_argument("--rtol", type=float, default=1e-5, help="RK45's tolerances for the final ODE grid")
    args = parser.parse_args()
    images, _ = load_mnist(image_size=args.image_size, seed=args.seed)
    sigma_max = largest_distance(images[:1000])
    print(f"sigma_max = {sigma_max:.1f}: the largest distance between two of the first 1,000 training digits")

    network = kd.networks.unet_from_preset("mnist_small", image_shape=(args.image_size, args.image_size, 1))
    model = kd.ScoreModel(network, sde=kd.VESDE(sigma_min=args.sigma_min, sigma_max=sigma_max), seed=args.seed)
    train_mnist(model, args, "a VE score model")

    noise = np.random.default_rng(args.seed).normal(size=(36, args.image_size, args.image_size, 1))
    for name, sampler, options in (
        ("pc", "pc", dict(num_steps=args.pc_steps)),
        ("ode", "ode_rk45", dict(sampler_options={"rtol": args.rtol, "atol": args.rtol})),
    ):
        grid = model.generate(36, sampler=sampler, initial_noise=noise, seed=args.seed, verbose=False, **options)
        save_grid(os.path.join(args.out, f"{name}.png"), grid, rows=6)
        print(f"Wrote {os.path.join(args.out, name + '.png')} ({sampler})")


if __name__ == "__main__":
    main()
