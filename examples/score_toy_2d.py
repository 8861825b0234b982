"""A score model on a 2-D Gaussian mixture: the learned score field, and predictor-corrector paths (Song et al. 2021).

A small MLP learns the noise of the VE SDE's perturbed data
`x_sigma = x0 + sigma * eps` (`ScoreModel`, denoising score matching with
`fit()`), for a ring of six Gaussians. Its score is
`model.score(x, sigma) = (D(x, sigma) - x) / sigma**2`, whatever the model.

The figure shows the direction of the score field at three noise levels
(arrows point up the density: at sigma = 0.1 to the nearest mode, at 0.5
to the ring, at 2 to its centre, where the ring blurred by sigma = 2 has
its one peak since `radius^2 / sigma^2 < 2`), then the paths of 40 samples under
the predictor-corrector sampler (reverse diffusion + one Langevin corrector
step per level), from the VE prior `N(0, sigma_max^2 I)` (mostly off the
panel) to the modes. The
script prints how many of 2,000 PC samples land within three standard
deviations of a mode, and how they spread over the six modes.

    KERAS_BACKEND=jax python examples/score_toy_2d.py
    KERAS_BACKEND=torch python examples/score_toy_2d.py --epochs 5 --out /tmp/score_toy.png

The defaults (8,192 points, 40 epochs of batch 256) took 85 s of CPU time to
train and 101 s in all on torch here (3 minutes of wall time on a busy
2-core machine); 98% of the PC samples landed on a mode. A 5-epoch run took
136 s of CPU time on JAX against 30 s on torch. `--out` is where the PNG goes (default
docs/score_toy_2d.png).
"""

import argparse
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import keras  # noqa: E402

import keras_diffusion as kd  # noqa: E402
from keras_diffusion.samplers import sample  # noqa: E402
from example_utils import gaussian_ring  # noqa: E402
from example_utils import mlp_2d  # noqa: E402
from example_utils import save_figure  # noqa: E402
from example_utils import square_panels  # noqa: E402

RADIUS, STD, MODES = 2.0, 0.15, 6


def score_field(model, sigma, lim=3.0, n=17):
    """The learned score on an `n x n` grid at noise level `sigma`: the grid and the score."""
    axis = np.linspace(-lim, lim, n, dtype="float32")
    grid = np.stack(np.meshgrid(axis, axis), axis=-1).reshape(-1, 2)
    return grid, keras.ops.convert_to_numpy(model.score(grid, sigma))


def pc_paths(model, noise, num_steps, seed):
    """The PC sampler's states `(num_steps + 1, N, 2)` from `noise * sigma_max` down to the samples."""
    sigmas = model.process.sigmas(num_steps)
    states = [noise * sigmas[0]]
    sample("pc", model.denoise, states[0], sigmas, seed=seed,
           callback=lambda step: states.append(keras.ops.convert_to_numpy(step["x"])))
    return np.stack(states)


def on_modes(samples):
    """The fraction of samples within 3 standard deviations of a mode, and the count per mode."""
    angles = 2 * np.pi * np.arange(MODES) / MODES
    centers = RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    distances = np.linalg.norm(samples[:, None] - centers[None], axis=-1)
    near = distances.min(axis=1) < 3 * STD
    return near.mean(), np.bincount(distances.argmin(axis=1)[near], minlength=MODES)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-points", type=int, default=8192)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--sigma-max", type=float, default=4.0,
                        help="VE's largest noise level: about the data's diameter (Song & Ermon 2020)")
    parser.add_argument("--steps", type=int, default=100, help="PC levels")
    parser.add_argument("--num-paths", type=int, default=40, help="paths drawn (they start mostly off the panel)")
    parser.add_argument("--out", default="docs/score_toy_2d.png")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    keras.utils.set_random_seed(args.seed)
    start = time.process_time()
    data = gaussian_ring(args.num_points, num_modes=MODES, radius=RADIUS, std=STD, seed=args.seed)

    model = kd.ScoreModel(mlp_2d(), sde=kd.VESDE(sigma_min=0.01, sigma_max=args.sigma_max), seed=args.seed)
    model.compile(keras.optimizers.Adam(2e-3))
    history = model.fit(data, epochs=args.epochs, batch_size=256, shuffle=True, verbose=0)
    print(f"Trained {args.epochs} epochs on {len(data)} points in {time.process_time() - start:.0f} s of CPU time: "
          f"loss {history.history['loss'][-1]:.4f}")

    samples = model.generate(2000, num_steps=args.steps, seed=args.seed + 1, verbose=False, return_float=True)
    fraction, counts = on_modes(samples)
    print(f"PC ({args.steps} levels, 1 corrector step each): {fraction:.1%} of 2000 samples within 3 std of a "
          f"mode; per mode {counts.tolist()}")

    fig, axes = plt.subplots(1, 4, figsize=(16, 4.4))
    for ax, sigma in zip(axes, (0.1, 0.5, 2.0)):
        grid, score = score_field(model, sigma)
        # Unit arrows: the score's size grows as 1 / sigma^2 near the modes and would hide its direction elsewhere.
        direction = score / np.linalg.norm(score, axis=1, keepdims=True)
        ax.scatter(data[:, 0], data[:, 1], s=1, c="0.8")
        ax.quiver(grid[:, 0], grid[:, 1], direction[:, 0], direction[:, 1], color="tab:blue", angles="xy")
        ax.set_title(f"direction of the learned score, sigma = {sigma}")
    noise = np.random.default_rng(args.seed + 2).normal(size=(args.num_paths, 2)).astype("float32")
    paths = pc_paths(model, noise, args.steps, args.seed + 3)
    ax = axes[3]
    ax.scatter(data[:, 0], data[:, 1], s=1, c="0.8")
    ax.plot(paths[:, :, 0], paths[:, :, 1], lw=0.5, c="tab:blue", alpha=0.6)
    ax.scatter(paths[-1, :, 0], paths[-1, :, 1], s=12, c="tab:red", edgecolors="k", linewidths=0.3, zorder=3,
               label="sample")
    ax.set_title(f"{args.num_paths} PC paths from sigma = {args.sigma_max:g} ({args.steps} levels)")
    ax.legend(loc="lower left", fontsize=7)
    square_panels(axes)
    fig.suptitle(f"VE score model on a 6-Gaussian ring ({keras.backend.backend()})")
    save_figure(fig, args.out, start)


if __name__ == "__main__":
    main()
