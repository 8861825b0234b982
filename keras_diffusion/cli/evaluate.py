"""`evaluate`: FID, KID and IS of a saved model's samples against held-out MNIST digits, and bits/dim.

Example:
    $ python -m keras_diffusion evaluate --model runs/mnist/model.keras --num-images 1000
    $ python -m keras_diffusion evaluate --model runs/score/model.keras --num-images 100 --bpd
"""

import time

from keras_diffusion.cli.args import add_command
from keras_diffusion.cli.args import add_common_args
from keras_diffusion.cli.args import add_sampling_args
from keras_diffusion.cli.args import check_model_file
from keras_diffusion.cli.args import check_parent
from keras_diffusion.cli.args import generate_kwargs
from keras_diffusion.cli.args import load_diffusion_model
from keras_diffusion.cli.args import positive_float
from keras_diffusion.cli.args import positive_int
from keras_diffusion.files import write_json
from keras_diffusion.likelihood import PROBES
from keras_diffusion.metrics import FEATURE_EXTRACTORS


def add_parser(subparsers):
    """Adds `evaluate`."""
    parser = add_command(
        subparsers,
        __name__,
        help="measure FID, KID and IS of a model's samples against held-out MNIST digits",
        description="Generates images with a saved model and compares them with the 1,000 bundled\n"
        "MNIST digits that the MNIST classifier was not trained on\n"
        "(keras_diffusion.metrics.mnist_held_out), brought to the model's image size as\n"
        "`train --dataset mnist` does. Prints FID, KID and the Inception Score, with the\n"
        "feature extractor named. With --bpd it also reports the bits/dim of held-out digits\n"
        "under the model (mean and standard error), through the probability-flow ODE.\n\n"
        "Examples:\n  python -m keras_diffusion evaluate --model runs/mnist/model.keras "
        "--num-images 1000\n"
        "  python -m keras_diffusion evaluate --model runs/score/model.keras --num-images 100 --bpd",
    )
    parser.add_argument("--model", required=True, help="the .keras model file")
    parser.add_argument(
        "--num-images", type=positive_int, default=1000,
        help="images to generate; as many held-out real digits are used, at most 1,000",
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=250,
        help="images generated, and passed through the feature extractor, at a time",
    )
    parser.add_argument(
        "--feature-extractor", choices=FEATURE_EXTRACTORS, default="mnist",
        help="mnist: the classifier bundled with keras-diffusion (offline); inception: "
        "InceptionV3 with ImageNet weights (downloaded by Keras once, into ~/.keras/models)",
    )
    parser.add_argument(
        "--json", default=None, help="also write the results to this JSON file (its folder must exist)"
    )
    add_common_args(parser)
    add_sampling_args(parser)
    likelihood = parser.add_argument_group("bits/dim (keras_diffusion.likelihood)")
    likelihood.add_argument(
        "--bpd", action="store_true",
        help="also measure the bits/dim of held-out digits (pixels 0-255, uniformly dequantized) "
        "through the model's probability-flow ODE: adaptive RK45 with Hutchinson traces "
        "(keras.ops.jvp); any unconditional model",
    )
    likelihood.add_argument(
        "--bpd-images", type=positive_int, default=1000,
        help="held-out digits to measure, at least 2 and at most 1,000 (in batches of --batch-size)",
    )
    likelihood.add_argument(
        "--probes", type=positive_int, default=1,
        help="Hutchinson probes per image (each runs the model once more per ODE evaluation)",
    )
    likelihood.add_argument("--probe", choices=PROBES, default="rademacher", help="the probes' distribution")
    likelihood.add_argument("--rtol", type=positive_float, default=1e-5, help="RK45's relative tolerance")
    likelihood.add_argument("--atol", type=positive_float, default=1e-5, help="RK45's absolute tolerance")


def run(args):
    """Runs `evaluate`; returns 0 after printing the metrics."""
    import keras
    import numpy as np

    from keras_diffusion import metrics
    from keras_diffusion.likelihood import check_likelihood_backend

    check_model_file(args.model)
    if args.json is not None:
        check_parent(args.json, "--json")
    if args.bpd:
        check_likelihood_backend()
        if args.bpd_images < 2:
            raise ValueError(f"--bpd-images must be at least 2 (for a standard error). Received: {args.bpd_images}")
    # The extractors load first: a missing download fails before any sampling.
    features = metrics.get_feature_extractor(args.feature_extractor, output="features")
    classifier = metrics.get_feature_extractor(args.feature_extractor, output="probabilities")
    model = load_diffusion_model(args.model)
    if args.bpd and model.num_classes is not None:
        raise ValueError(
            f"--bpd measures the likelihood of an unconditional model, and {args.model!r} is "
            "class-conditional. Leave out --bpd, or evaluate an unconditional model."
        )
    height, width, channels = model.image_shape
    if height != width or channels != 1:
        raise ValueError(
            f"evaluate compares with MNIST digits, which are square and grayscale, but "
            f"{args.model!r} makes images of shape {(height, width, channels)}. Evaluate "
            "a model trained on MNIST, or use keras_diffusion.metrics from Python with "
            "your own real images."
        )
    real, _ = metrics.mnist_held_out(image_size=height, num_images=min(args.num_images, 1000))

    def extract(extractor, images):
        return np.concatenate(
            [
                keras.ops.convert_to_numpy(extractor(images[i : i + args.batch_size]))
                for i in range(0, len(images), args.batch_size)
            ]
        )

    # Full batches only, so that the sampling loop compiles once; the extra
    # images of the last batch are dropped.
    batch_size = min(args.batch_size, args.num_images)
    sampling = generate_kwargs(args, model)
    start = time.perf_counter()
    generated = np.concatenate(
        [
            model.generate(batch_size, seed=args.seed + i, verbose=False, **sampling)
            for i in range(0, args.num_images, batch_size)
        ]
    )[: args.num_images]
    sample_seconds = time.perf_counter() - start
    real_features, generated_features = extract(features, real), extract(features, generated)
    results = {
        "fid": float(metrics.fid_from_features(real_features, generated_features)),
        "kid": float(metrics.kid_from_features(real_features, generated_features)),
        "inception_score": float(metrics.inception_score_from_probabilities(extract(classifier, generated))),
        "real_inception_score": float(metrics.inception_score_from_probabilities(extract(classifier, real))),
    }
    print(
        f"Feature extractor: {features.name} ({features.num_features} features; IS over "
        f"its {classifier.num_features} classes)\n"
        f"Generated {len(generated)} images of {height}x{width} ({args.sampler}, {args.steps} "
        f"steps) in {sample_seconds:.1f} s; compared with {len(real)} held-out real MNIST digits.\n"
        f"FID: {results['fid']:.4f}\n"
        f"KID: {results['kid']:.5f}\n"
        f"IS:  {results['inception_score']:.4f} (the real digits: {results['real_inception_score']:.4f})"
    )
    if args.bpd:
        results.update(bits_per_dim(model, height, args))
        print(
            f"Bits/dim: {results['bpd']:.4f} +- {results['bpd_std_error']:.4f} (standard error) on "
            f"{results['bpd_num_images']} held-out digits, in {results['bpd_seconds']:.1f} s. Probability-flow "
            f"ODE (RK45, rtol {args.rtol:g}, atol {args.atol:g}): {results['bpd_nfe']:.1f} evaluations per "
            f"batch of {min(args.batch_size, results['bpd_num_images'])}, each running the model "
            f"{args.probes} time(s) under keras.ops.jvp ({args.probe} probes)."
        )
    if args.json is not None:
        log = {
            "model": args.model,
            "feature_extractor": features.name,
            "num_generated": len(generated),
            "num_real": len(real),
            "image_size": height,
            **results,
            "sample_seconds": round(sample_seconds, 3),
            "backend": keras.backend.backend(),
            "args": vars(args),
        }
        print(f"Results: {write_json(args.json, log)}")
    return 0


def bits_per_dim(model, image_size, args):
    """Bits/dim of `--bpd-images` held-out digits, as uint8 pixels; the dict of results `run` reports."""
    import numpy as np

    from keras_diffusion import metrics

    digits, _ = metrics.mnist_held_out(image_size=image_size, num_images=min(args.bpd_images, 1000))
    pixels = np.round(digits * 255.0).astype("uint8")
    start = time.perf_counter()
    bpd, nfe = model.log_likelihood(
        pixels, probe=args.probe, num_probes=args.probes, rtol=args.rtol, atol=args.atol, seed=args.seed,
        batch_size=args.batch_size, return_nfe=True,
    )
    return {
        "bpd": float(np.mean(bpd)),
        "bpd_std_error": float(np.std(bpd, ddof=1) / np.sqrt(len(bpd))),
        "bpd_num_images": len(bpd),
        "bpd_nfe": nfe,
        "bpd_seconds": round(time.perf_counter() - start, 3),
    }
