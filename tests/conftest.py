"""Test setup: the suite runs once per backend, chosen by KERAS_BACKEND."""

import os

import keras
import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def pytest_report_header(config):
    return f"keras backend: {keras.backend.backend()}"


@pytest.fixture
def rng():
    return np.random.default_rng(0)
