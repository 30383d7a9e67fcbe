"""Shared test set-up: the JAX CPU backend and the real test recordings (tests/data)."""

import os
import pathlib

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import pytest  # pylint: disable=wrong-import-position

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
TEST_DATA = REPO_ROOT / 'tests' / 'data'


@pytest.fixture(scope='session')
def real_data() -> pathlib.Path:
  """tests/data/real: a real ICU recording (ECG leads II, III, V, PPG, ABP; MIT licence)."""
  return TEST_DATA / 'real'
