"""EDM (Karras et al. 2022) on the bundled MNIST digits, with compile() + fit(), on any backend.

The network is this package's `mnist_small` U-Net inside EDM's
preconditioning, `D(x, sigma) = c_skip x + c_out F(c_in x, c_noise)`, trained
on lognormal noise levels (`EDMProcess`: P_mean -1.2, P_std 1.2,
sigma_data 0.5) with EDM's loss weighting. Grids are drawn with EDM's
deterministic Heun sampler on 18 Karras levels (35 model evaluations).

    KERAS_BACKEND=torch python examples/edm_mnist.py
    KERAS_BACKEND=jax python examples/edm_mnist.py --epochs 1 --sample-steps 10

The default (16x16 digits, 20 epochs of 79 batches of 64) was not run to the
end here; at conditional_mnist.py's 20-46 s per 16x16 epoch on TensorFlow it
is roughly 10 minutes on 2 cores. At load average 8-9 here, `--epochs 1
--sample-steps 5` on TensorFlow took 222 s for the epoch (111 s of CPU time
in all); its grid is still noise, since the EMA (0.995) holds most of the
initial network after 79 steps.

It writes OUT/epochs/epoch_XXXX.png (36 digits each epoch), OUT/model.keras
and OUT/log.json (with the CPU seconds).
"""

import keras_diffusion as kd
from example_utils import mnist_parser
from example_utils import train_mnist


def main():
    args = mnist_parser(__doc__, out="runs/edm_mnist", epochs=20, sampler="heun", num_steps=18).parse_args()
    network = kd.networks.unet_from_preset("mnist_small", image_shape=(args.image_size, args.image_size, 1))
    model = kd.EDM(network, kd.EDMProcess(), seed=args.seed)
    train_mnist(model, args, "an EDM model")


if __name__ == "__main__":
    main()
