"""The README's numbers: each is registered in docs/claims.json, and the cheap ones re-measure on this backend."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tools import check_readme  # noqa: E402

CLAIMS = check_readme.load_claims()


def test_every_registered_claim_appears_in_the_readme():
    assert check_readme.missing_from_readme(CLAIMS) == []


def test_a_changed_readme_number_is_caught():
    text = check_readme.readme_text().replace("98.7%", "99.1%")
    assert "mnist_classifier_accuracy" in check_readme.missing_from_readme(CLAIMS, text)


def test_every_claim_names_its_command_machine_and_date():
    for claim in CLAIMS:
        assert claim["command"].strip() and claim["machine"].strip() and claim["date"][:2] == "20", claim["id"]


@pytest.mark.parametrize("claim", [c for c in CLAIMS if c["check"] == "cheap"], ids=lambda c: c["id"])
def test_cheap_claims_re_measure_within_tolerance(claim):
    ok, measured = check_readme.check(claim)
    assert ok, f"{claim['id']}: README says {claim['value']}, measured {measured} (tolerance {claim['tolerance']})"


@pytest.mark.slow
@pytest.mark.parametrize("claim", [c for c in CLAIMS if c["check"] == "slow"], ids=lambda c: c["id"])
def test_slow_claims_re_measure_within_tolerance(claim):
    ok, measured = check_readme.check(claim, slow=True)
    assert ok, f"{claim['id']}: README says {claim['value']}, measured {measured} (tolerance {claim['tolerance']})"


# ------------------------------------------------------------ Python blocks
# Each ```python block of the README runs here, in a fresh process whose working directory is
# outside the repository. The HTML comment just above a block can say how:
#   <!-- readme-test: slow (why) -->             runs only with -m slow
#   <!-- readme-test: setup=NAME -->             runs SETUPS[NAME] in the folder first (slow)
#   <!-- readme-test: tested by tests/x.py::t -->  the named test runs it with its inputs
import re  # noqa: E402
import subprocess  # noqa: E402
import textwrap  # noqa: E402

import keras  # noqa: E402

ROOT = check_readme.ROOT


def readme_blocks():
    with open(check_readme.README_PATH) as f:
        lines = f.read().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start = i
            indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
            i += 1
            body = []
            while lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            previous = next((line.strip() for line in reversed(lines[:start]) if line.strip()), "")
            marker = re.fullmatch(r"<!-- readme-test: (.*) -->", previous)
            blocks.append({"line": start + 1, "code": textwrap.dedent("\n".join(body)), "marker": marker and marker.group(1), "indent": indent})
        i += 1
    return blocks


def _captioned_folder(folder):
    """`pets/`: six small captioned images, the layout `sd3.load_captioned_folder` reads."""
    import numpy as np
    from PIL import Image

    pets = os.path.join(folder, "pets")
    os.makedirs(pets)
    rng = np.random.default_rng(0)
    for i, name in enumerate(["a_red_cat", "a_blue_dog", "a_green_cat", "a_red_dog", "a_blue_cat", "a_green_dog"]):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(os.path.join(pets, f"{name}.png"))


def _quick_start_model(folder):
    """`runs/mnist/model.keras` from the quick-start command, shortened to one epoch."""
    subprocess.run(
        [sys.executable, "-m", "keras_diffusion", "train", "ddpm", "--dataset", "mnist", "--image-size", "16",
         "--epochs", "1", "--num-train-images", "512", "--num-samples", "4", "--steps", "5", "--out", "runs/mnist"],
        cwd=folder, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": ROOT},
    )


SETUPS = {"pets_folder": _captioned_folder, "quick_start_model": _quick_start_model}


def _block_params():
    params = []
    for block in readme_blocks():
        marker = block["marker"] or ""
        if marker.startswith("tested by"):
            continue  # test_every_readme_marker_is_known checks that the named test exists
        marks = [pytest.mark.slow] if marker.startswith(("slow", "setup=")) else []
        params.append(pytest.param(block, marks=marks, id=f"README.md:{block['line']}"))
    return params


def test_every_readme_marker_is_known():
    for block in readme_blocks():
        marker = block["marker"]
        if marker is None or marker.startswith("slow ("):
            continue
        if marker.startswith("setup="):
            assert marker.split("=", 1)[1].split()[0] in SETUPS, block["line"]
            continue
        match = re.fullmatch(r"tested by (tests/\w+\.py)::(\w+)", marker)
        assert match, f"README.md:{block['line']}: unknown marker {marker!r}"
        with open(os.path.join(ROOT, match.group(1))) as f:
            assert f"def {match.group(2)}(" in f.read(), f"README.md:{block['line']}: {marker} names no test"


@pytest.mark.parametrize("block", _block_params())
def test_readme_python_block_runs(block, tmp_path):
    marker = block["marker"] or ""
    if marker.startswith("setup="):
        SETUPS[marker.split("=", 1)[1].split()[0]](str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-c", block["code"]], cwd=tmp_path, capture_output=True, text=True,
        env={**os.environ, "KERAS_BACKEND": keras.backend.backend(), "PYTHONPATH": ROOT},
    )
    assert result.returncode == 0, f"README.md:{block['line']} failed:\n{result.stderr[-3000:]}"
