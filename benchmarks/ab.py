"""Interleaved A/B timing of one speed change, on the current Keras backend.

    KERAS_BACKEND=tensorflow python -m benchmarks.ab --a norm=keras --b norm=fast

Builds one DDPM per variant from the same weights, compiles both, then
alternates them `--rounds` times: `fit()` for `--steps` training steps and
a `generate()` call (DDIM, `--sample-steps` steps). Reports the median time
of each and the ratio B/A. Alternating inside one process makes the ratio
robust to other load on the machine; absolute times are not.

A variant is a comma-separated list of `key=value`:
- `norm=keras|fast`: Keras' `GroupNormalization` or `keras_diffusion`'s `GroupNorm`;
- `jit=auto|true|false`: `jit_compile` of `compile()`;
- `dtype=float32|mixed_bfloat16`: the Keras dtype policy of the network;
- `layout=channels_last|channels_first`: the U-Net's inner `data_format`.
"""

import argparse
import statistics
import time

import numpy as np


def _parse_variant(text):
    variant = {"norm": "fast", "jit": "auto", "dtype": "float32", "layout": "channels_last"}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key not in variant:
            raise ValueError(f"Unknown variant key {key!r} in {text!r}; use {', '.join(variant)}.")
        variant[key] = value
    return variant


def _build(variant, network_config, weights, seed):
    import keras

    import keras_diffusion as kd
    from keras_diffusion.networks import attention
    from keras_diffusion.networks import normalization
    from keras_diffusion.networks import unet

    norm = {"keras": keras.layers.GroupNormalization, "fast": normalization.GroupNorm}[variant["norm"]]
    saved = unet.GroupNorm, attention.GroupNorm
    unet.GroupNorm = attention.GroupNorm = norm
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(variant["dtype"])
    try:
        network = kd.networks.build_unet(**network_config, data_format=variant["layout"])
    finally:
        unet.GroupNorm, attention.GroupNorm = saved
        keras.config.set_dtype_policy(previous_policy)
    if weights is not None:
        network.set_weights(weights)
    model = kd.DDPM(network, kd.DiscreteVPSchedule("cosine"), seed=seed)
    jit = {"auto": "auto", "true": True, "false": False}[variant["jit"]]
    model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=1e-4), jit_compile=jit)
    return model


def main(argv=None):
    """Command-line entry point; see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ab", description=__doc__.split("\n")[0])
    parser.add_argument("--a", default="norm=keras", help="variant A (baseline)")
    parser.add_argument("--b", default="norm=fast", help="variant B")
    parser.add_argument("--network", default="mnist_small")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3, help="training steps per timed fit()")
    parser.add_argument("--sample-steps", type=int, default=4, help="DDIM steps per timed generate()")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch/TF intra-op threads (0: one per core)")
    args = parser.parse_args(argv)

    import os

    import keras

    from benchmarks.compare import NETWORKS
    from benchmarks.compare import _set_threads

    threads = _set_threads(keras.backend.backend(), args.threads or len(os.sched_getaffinity(0)))
    network_config = NETWORKS[args.network]
    variants = {"A": _parse_variant(args.a), "B": _parse_variant(args.b)}
    keras.utils.set_random_seed(0)
    models = {}
    weights = None
    for name, variant in variants.items():
        models[name] = _build(variant, network_config, weights, seed=0)
        weights = weights or models[name].network.get_weights()
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (args.steps * args.batch_size,) + network_config["image_shape"])
    images = images.astype("float32")
    noise = rng.standard_normal((args.batch_size,) + network_config["image_shape"]).astype("float32")
    fit = dict(batch_size=args.batch_size, epochs=1, shuffle=False, verbose=0)
    generate = dict(sampler="ddim", num_steps=args.sample_steps, initial_noise=noise, use_ema=False, verbose=False)
    times = {name: {"train": [], "sample": []} for name in models}
    for model in models.values():  # warm-up: compile both
        model.fit(images, **fit)
        model.generate(args.batch_size, **generate)
    for _ in range(args.rounds):
        for name, model in models.items():
            start = time.perf_counter()
            model.fit(images, **fit)
            times[name]["train"].append((time.perf_counter() - start) / args.steps)
            start = time.perf_counter()
            model.generate(args.batch_size, **generate)
            times[name]["sample"].append((time.perf_counter() - start) / args.sample_steps)
    median = {n: {k: statistics.median(v) for k, v in t.items()} for n, t in times.items()}
    print(f"backend {keras.backend.backend()}, {threads}, network {args.network}, batch {args.batch_size}, "
          f"{args.rounds} interleaved rounds, load average {os.getloadavg()[0]:.1f}")
    print(f"A = {args.a}   B = {args.b}")
    for kind, unit in (("train", "img/s"), ("sample", "img*steps/s")):
        a, b = median["A"][kind], median["B"][kind]
        print(f"{kind}: A {args.batch_size / a:.1f} {unit}, B {args.batch_size / b:.1f} {unit}, "
              f"speed-up B/A {a / b:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
