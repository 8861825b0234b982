"""Old files still load: `.keras` files written before issue 12's redesign sample the same images.

`tools/make_legacy_fixtures.py` wrote the files (DDPM, DDIM, conditional DDPM)
and, per backend, what they sampled from fixed noise (deterministic
samplers) and from a fixed seed (the stochastic `ddpm` sampler), on the code
before processes owned their math. The same calls must give the same images.
"""

import os
import sys

import keras
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools"))
import make_legacy_fixtures  # noqa: E402

BACKEND = keras.backend.backend()


@pytest.fixture(scope="module")
def samples():
    models = make_legacy_fixtures.load_all()
    inputs = dict(np.load(os.path.join(make_legacy_fixtures.FIXTURES, "legacy_inputs.npz")))
    return make_legacy_fixtures.generate_all(models, inputs)


def test_old_files_load_and_sample_the_same_images(samples):
    expected = np.load(os.path.join(make_legacy_fixtures.FIXTURES, f"legacy_samples_{BACKEND}.npz"))
    assert sorted(samples) == sorted(expected.files)
    for key in expected.files:
        # Float32 on one backend: only the order of a few float operations may differ.
        np.testing.assert_allclose(samples[key], expected[key], atol=1e-5, rtol=1e-5, err_msg=key, equal_nan=False)
