"""Shared test set-up: the JAX CPU backend and the real test recordings (tests/data)."""

import os
import pathlib
import subprocess
import sys
import tempfile

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# One persistent compilation cache for the test processes, their subprocesses and later
# runs: the suite compiles the same small models in many processes. Compiled programs
# give the same results as fresh compiles, so no test depends on the cache being warm.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', str(
    pathlib.Path(__file__).resolve().parents[1] / '.pytest_cache' / 'jax_compilation'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.2')


def _xla_flags() -> str:
  """XLA flags for the test processes and their subprocesses. The emitters' flag is
  checked first: XLA stops a process that passes a flag its build does not know.

  LLVM at -O0: the suite's models are tiny, so compiling costs more than running (a third
  less time for a cold cache, as on CI). XLA's graph passes and matmul libraries are the
  same at every level; the generated element-wise code rounds differently in the last
  digit (model outputs move by about 2e-8), and every comparison in the suite runs both
  of its sides with the same flags.
  Fused element-wise kernels from XLA's older LLVM emitters, not its MLIR fusion
  emitters: half the compile time of a train step (1.9 -> 0.9 s for two blocks), for
  programs that run a few steps (a cold suite spent 235 of its 791 CPU-seconds
  compiling, 128 of 723 with this flag).
  """
  base = '--xla_backend_optimization_level=0'
  flags = f'{base} --xla_cpu_use_fusion_emitters=false'
  probe = subprocess.run([sys.executable, '-c', 'import jax; jax.devices()'], check=False,
                         env={**os.environ, 'XLA_FLAGS': flags},
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  return flags if probe.returncode == 0 else base


# Decided once, in the first process (pytest's controller); the others inherit it.
if 'XLA_FLAGS' not in os.environ:
  os.environ['XLA_FLAGS'] = _xla_flags()

import functools  # pylint: disable=wrong-import-position

import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import pytest  # pylint: disable=wrong-import-position

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
TEST_DATA = REPO_ROOT / 'tests' / 'data'


@pytest.fixture(scope='session', autouse=True)
def _session_tempdir(tmp_path_factory):
  """Python's temporary files (and, through TMPDIR, its subprocesses') go under pytest's
  own directory for the session, which pytest prunes with its old runs: Apache Beam's
  portable runner and TFDS's builders leave empty temporary directories behind (a
  suite run left about 80 in /tmp)."""
  scratch = str(tmp_path_factory.mktemp('tempfile'))
  with pytest.MonkeyPatch.context() as patch:  # undone after the session
    patch.setattr(tempfile, 'tempdir', scratch)
    patch.setenv('TMPDIR', scratch)
    yield


@pytest.fixture(scope='session')
def real_data() -> pathlib.Path:
  """tests/data/real: a real ICU recording (ECG leads II, III, V, PPG, ABP; MIT licence)."""
  return TEST_DATA / 'real'


@pytest.fixture(scope='session')
def tiny_dataset(tmp_path_factory) -> str:
  """A prepared synthetic dataset of 5 subjects x 1 minute (subject split), built once."""
  from input_pipeline import prepare, synthetic, tfds_builders  # pylint: disable=import-outside-toplevel
  options = prepare.PrepareOptions(cohort=synthetic.CohortConfig(num_subjects=5,
                                                                 minutes_per_subject=1))
  data_dir = str(tmp_path_factory.mktemp('tiny_dataset'))
  tfds_builders.prepare_dataset(options, data_dir, progress=False)
  return data_dir


@functools.partial(jax.jit, static_argnums=0)
def _apply(module, params, *args):
  return module.apply({'params': params}, *args)


def jitted_apply(module, params, *args) -> np.ndarray:
  """module.apply({'params': params}, *args) compiled, as prediction runs the model, once
  per module and input shapes (op by op, a model of a few blocks takes seconds a call)."""
  return np.asarray(_apply(module, params, *args))
