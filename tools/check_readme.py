"""Checks the README's numbers against `docs/claims.json`, and re-measures the cheap ones.

Every number the README states is a claim in `docs/claims.json`: the README's own words
(`readme`), the value, the command that produced it, the machine, the date and how it is
checked (`check`):

- `"cheap"`: re-measured here in seconds by the function of the same id in `MEASURES`, and
  compared within the claim's `tolerance` (absolute, in the claim's unit).
- `"slow"`: re-measured by its command with `--slow` (minutes to hours).
- `"recorded"`: a timing, or a run on a machine this one is not (an H100): kept with its
  command, machine and date, and only checked to appear in the README.

The test suite (`tests/test_readme.py`) runs the cheap checks on every backend.

Usage:
    python -m tools.check_readme            # every claim appears; cheap ones re-measured
    python -m tools.check_readme --slow     # and the slow ones
    python -m tools.check_readme --claim mnist_classifier_accuracy
"""

import argparse
import functools
import json
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLAIMS_PATH = os.path.join(ROOT, "docs", "claims.json")
README_PATH = os.path.join(ROOT, "README.md")
CHECKS = ("cheap", "slow", "recorded")
FIELDS = ("id", "readme", "value", "check", "command", "machine", "date")


def load_claims(path=CLAIMS_PATH):
    """The claims, each checked to carry every field, a known check kind and a unique id."""
    with open(path) as f:
        claims = json.load(f)
    seen = set()
    for claim in claims:
        missing = [field for field in FIELDS if field not in claim]
        if missing:
            raise ValueError(f"Claim {claim.get('id', claim)!r} in {path} lacks {missing}.")
        if claim["check"] not in CHECKS:
            raise ValueError(f"Claim {claim['id']!r}: check must be one of {CHECKS}, not {claim['check']!r}.")
        if claim["check"] != "recorded" and "tolerance" not in claim:
            raise ValueError(f"Claim {claim['id']!r} is re-measured, so it needs a tolerance.")
        if claim["id"] in seen:
            raise ValueError(f"Claim id {claim['id']!r} appears twice in {path}.")
        seen.add(claim["id"])
    return claims


def readme_text():
    """The README with line breaks and indentation folded into single spaces."""
    with open(README_PATH) as f:
        return re.sub(r"\s+", " ", f.read())


def missing_from_readme(claims, text=None):
    """The ids of claims whose README words no longer appear in the README."""
    text = readme_text() if text is None else text
    return [c["id"] for c in claims if re.sub(r"\s+", " ", c["readme"]) not in text]


# ------------------------------------------------------------------ measures
def _features(extractor, images, batch_size=250):
    import keras
    import numpy as np

    return np.concatenate(
        [keras.ops.convert_to_numpy(extractor(images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
    )


@functools.lru_cache(maxsize=None)
def _mnist_reference():
    from keras_diffusion import metrics

    features = metrics.get_feature_extractor("mnist", output="features")
    classifier = metrics.get_feature_extractor("mnist", output="probabilities")
    real, labels = metrics.mnist_held_out()
    return metrics, features, classifier, real, labels


def measure_mnist_classifier_accuracy():
    """Accuracy (%) of the bundled MNIST classifier on the 1,000 held-out digits."""
    _, _, classifier, real, labels = _mnist_reference()
    return 100.0 * float((_features(classifier, real).argmax(1) == labels).mean())


def measure_mnist_classifier_parameters():
    from keras_diffusion.metrics.features import mnist_classifier

    return mnist_classifier().count_params()


@functools.lru_cache(maxsize=None)
def _reference_features():
    """Features of the 16x16 held-out digits' two halves and of uniform noise, and the first half's class probabilities."""
    import numpy as np

    metrics, features, classifier, _, _ = _mnist_reference()
    real, _ = metrics.mnist_held_out(image_size=16)  # the quick start's size
    a, b = real[:500], real[500:]
    noise = np.random.default_rng(0).uniform(0, 1, a.shape).astype("float32")
    return metrics, _features(features, a), _features(features, b), _features(features, noise), _features(classifier, a)


def measure_fid_real_vs_real():
    metrics, a, b, _, _ = _reference_features()
    return float(metrics.fid_from_features(a, b))


def measure_kid_real_vs_real():
    metrics, a, b, _, _ = _reference_features()
    return float(metrics.kid_from_features(a, b))


def measure_is_held_out():
    metrics, _, _, _, probabilities = _reference_features()
    return float(metrics.inception_score_from_probabilities(probabilities))


def measure_fid_uniform_noise():
    metrics, a, _, noise, _ = _reference_features()
    return float(metrics.fid_from_features(a, noise))


def measure_kid_uniform_noise():
    metrics, a, _, noise, _ = _reference_features()
    return float(metrics.kid_from_features(a, noise))


def measure_fid_training_vs_held_out_16():
    """`tools.sampler_quality`'s reference: 1,000 training digits against the held-out ones, 16x16."""
    from keras_diffusion import metrics

    features = metrics.get_feature_extractor("mnist", output="features")
    real, _ = metrics.mnist_held_out(image_size=16)
    train, _ = metrics.mnist_training_split(image_size=16)
    return float(metrics.fid_from_features(_features(features, real), _features(features, train[: len(real)])))


def measure_mnist_small_parameters_16():
    from keras_diffusion.networks import unet_from_preset

    return unet_from_preset("mnist_small", image_shape=(16, 16, 1)).count_params()


def measure_heun_evaluations_20():
    from keras_diffusion.samplers import num_model_evaluations

    return num_model_evaluations("heun", 20)


@functools.lru_cache(maxsize=None)
def _tiny_sd3():
    from keras_diffusion import sd3

    return sd3.from_preset(sd3.tiny_preset_dir())


def measure_tiny_sd3_parameters():
    return _tiny_sd3().backbone.count_params()


def measure_tiny_sd3_mmdit_parameters():
    return _tiny_sd3().backbone.diffuser.count_params()


def measure_tiny_lora_fused_attention():
    from keras_diffusion.sd3.lora import lora_parameter_counts

    return lora_parameter_counts(_tiny_sd3(), 4)["fused"]


def measure_tiny_lora_diffusers_mlp():
    from keras_diffusion.sd3.lora import lora_parameter_counts

    return lora_parameter_counts(_tiny_sd3(), 4, include_mlp=True)["diffusers"]


def measure_conditional_grid_agreement():
    """Percent of the committed conditional-MNIST grid's digits the classifier reads as their row's digit."""
    import keras
    import numpy as np
    from PIL import Image

    from keras_diffusion.metrics import mnist_classifier_probabilities

    grid = np.asarray(Image.open(os.path.join(ROOT, "docs", "conditional_mnist16_digits.png")))
    step = 16 + 2  # make_grid's cells: 16x16 digits, 2 pixels of padding
    cells = np.stack([grid[2 + r * step : 2 + r * step + 16, 2 + c * step : 2 + c * step + 16] for r in range(10) for c in range(10)])
    read = keras.ops.convert_to_numpy(mnist_classifier_probabilities()(cells[..., None])).argmax(-1)
    return 100.0 * float((read == np.repeat(np.arange(10), 10)).mean())


MEASURES = {name[len("measure_"):]: fn for name, fn in dict(globals()).items() if name.startswith("measure_")}


def run_slow(claim):
    """Runs a slow claim's command in a scratch folder; returns the number it prints last."""
    with tempfile.TemporaryDirectory() as folder:
        result = subprocess.run(
            claim["command"], shell=True, cwd=folder, capture_output=True, text=True,
            env={**os.environ, "PYTHONPATH": ROOT},
        )
        if result.returncode:
            raise RuntimeError(f"{claim['command']!r} failed:\n{result.stderr[-2000:]}")
        pattern = claim.get("pattern", r"([-+]?\d[\d,]*\.?\d*)")
        found = re.findall(pattern, result.stdout)
        if not found:
            raise RuntimeError(f"{claim['command']!r} printed nothing matching {pattern!r}.")
        return float(str(found[-1]).replace(",", ""))


def check(claim, slow=False):
    """(ok, measured) for one claim: measured is None when it is not re-measured."""
    if claim["check"] == "cheap":
        if claim["id"] not in MEASURES:
            raise ValueError(f"Cheap claim {claim['id']!r} has no measure_{claim['id']} in tools/check_readme.py.")
        measured = MEASURES[claim["id"]]()
    elif claim["check"] == "slow" and slow:
        measured = run_slow(claim)
    else:
        return True, None
    return abs(float(measured) - float(claim["value"])) <= float(claim["tolerance"]), measured


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slow", action="store_true", help="also re-run the slow claims' commands")
    parser.add_argument("--claim", action="append", help="check only this claim id (repeatable)")
    args = parser.parse_args(argv)
    claims = load_claims()
    if args.claim:
        unknown = sorted(set(args.claim) - {c["id"] for c in claims})
        if unknown:
            raise SystemExit(f"Unknown claim id(s) {unknown}; see {CLAIMS_PATH}.")
        claims = [c for c in claims if c["id"] in args.claim]
    failures = [f"{name}: not in README.md any more" for name in missing_from_readme(claims)]
    for claim in claims:
        ok, measured = check(claim, slow=args.slow)
        status = claim["check"] if measured is None else ("ok" if ok else "DIFFERS")
        print(f"{status:9s} {claim['id']}: README {claim['value']}" + ("" if measured is None else f", measured {measured:.6g}"))
        if not ok:
            failures.append(f"{claim['id']}: README says {claim['value']}, measured {measured:.6g} (tolerance {claim['tolerance']})")
    if failures:
        print("\n".join(["", "Failures:"] + failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
