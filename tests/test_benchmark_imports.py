"""scripts/benchmark.py's compute benchmarks (model, train, pretrain, roofline) import no
data pipeline: an accelerator image has JAX, Flax, optax and orbax but no TensorFlow."""

import subprocess
import sys

from conftest import REPO_ROOT

_IMPORTED = '''
import sys
sys.path.insert(0, 'scripts')
import benchmark
print(' '.join(sorted({name.split('.')[0] for name in sys.modules})))
'''
_DATA_PACKAGES = {'tensorflow', 'tensorflow_datasets', 'apache_beam', 'wfdb', 'vitaldb',
                  'pyedflib', 'h5py', 'input_pipeline'}


def test_compute_benchmarks_import_no_data_pipeline():
  result = subprocess.run([sys.executable, '-c', _IMPORTED], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  imported = set(result.stdout.split())
  assert {'benchmark', 'cerebro_jax', 'jax', 'flax', 'optax'} <= imported
  assert not imported & _DATA_PACKAGES, sorted(imported & _DATA_PACKAGES)
