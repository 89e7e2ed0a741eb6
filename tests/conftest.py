"""Shared test fixtures and helpers.

Helpers are plain functions (``from conftest import to_np``) and also
fixtures of the same purpose, so a test can use whichever reads better.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# The first call of a backend op compiles or traces it; a per-example deadline
# would then fail on a slow shared machine rather than on a real problem.
settings.register_profile("keras_sparse", deadline=None)
settings.load_profile("keras_sparse")


def to_np(x):
    """Any backend tensor, numpy array or Python value as a numpy array.

    Low-precision floats (``float16`` / ``bfloat16`` tensors) are widened to
    ``float32`` so numpy can compare them.
    """
    if hasattr(x, "dtype") and keras.backend.standardize_dtype(x.dtype) == "bfloat16":
        x = keras.ops.cast(x, "float32")
    return np.asarray(keras.ops.convert_to_numpy(x))


def backend_name():
    return keras.backend.backend()


@pytest.fixture
def rng():
    """A seeded numpy generator, fresh for every test."""
    return np.random.default_rng(0)


@pytest.fixture(name="to_np")
def _to_np_fixture():
    return to_np
