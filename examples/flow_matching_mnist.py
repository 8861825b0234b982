"""Flow matching (rectified flow) on the bundled MNIST digits, with compile() + fit(), on any backend.

The network is this package's `mnist_small` U-Net, trained to predict the
velocity `eps - x0` of `x_t = (1 - t) x0 + t eps` at logit-normal times
(SD3's choice, Esser et al. 2024). Its sinusoidal time embedding was built
for DDPM's integer timesteps, so the process hands it `1000 * t`
(`RectifiedFlow(time_scale=1000.0)`, as KerasHub's SD3 does for its MMDiT).
Grids are drawn with the flow's own sampler, Euler steps uniform in t.

    KERAS_BACKEND=torch python examples/flow_matching_mnist.py
    KERAS_BACKEND=jax python examples/flow_matching_mnist.py --epochs 1 --sample-steps 10

The default (16x16 digits, 20 epochs of 79 batches of 64) was not run to the
end here; at conditional_mnist.py's 20-46 s per 16x16 epoch on TensorFlow it
is roughly 10 minutes on 2 cores. At load average 8-9 here, the first epoch
and its grid took about 8 minutes of wall time on TensorFlow (2.2 CPU
minutes); its grid is still noise, since the EMA (0.995) holds most of the
zero-output initial network after 79 steps.

It writes OUT/epochs/epoch_XXXX.png (36 digits each epoch), OUT/model.keras
and OUT/log.json (with the CPU seconds).
"""

import keras_diffusion as kd
from example_utils import mnist_parser
from example_utils import train_mnist


def main():
    args = mnist_parser(__doc__, out="runs/flow_matching_mnist", epochs=20, sampler="euler", num_steps=50).parse_args()
    network = kd.networks.unet_from_preset("mnist_small", image_shape=(args.image_size, args.image_size, 1))
    model = kd.FlowMatching(network, kd.RectifiedFlow(time_scale=1000.0), seed=args.seed)
    train_mnist(model, args, "a flow-matching model")


if __name__ == "__main__":
    main()
