import os
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable


def fill_for(sample_id: int, shape=(1, 8, 8)) -> np.ndarray:
    """A sample whose every byte is derived from its id: a torn read shows up as mixed bytes."""
    return np.full(shape, sample_id % 251, dtype=np.uint8)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
