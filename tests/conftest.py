"""Shared test set-up: the JAX CPU backend and the optional ../shared test data."""

import os
import pathlib

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import pytest  # pylint: disable=wrong-import-position

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_REAL = REPO_ROOT.parent / 'shared' / 'data' / 'real'


@pytest.fixture(scope='session')
def shared_real() -> pathlib.Path:
  """../shared/data/real, or a skip that says why."""
  if not SHARED_REAL.is_dir():
    pytest.skip(f'real test recording not found at {SHARED_REAL} (../shared is absent '
                'outside the project workspace)')
  return SHARED_REAL
