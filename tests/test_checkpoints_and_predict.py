"""Model directories (orbax) and the predict / convert_weights command lines."""

import csv
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from cerebro_jax import forward, inference, sharding
from cerebro_jax.models import checkpoints, model as model_lib
from cerebro_jax.models.model_config import ModelConfig
from cerebro_jax.quant import quantization
from conftest import REPO_ROOT, jitted_apply


@pytest.fixture(scope='module')
def saved_model(tmp_path_factory):
  config = ModelConfig(depth=2, attention_type='full')
  params = model_lib.init_params(config, jax.random.PRNGKey(7))
  params['head']['bias'] = np.array([80.0, 120.0], np.float32)
  path = checkpoints.save_model(tmp_path_factory.mktemp('m') / 'model', params, config,
                                {'source': 'test'})
  return path, params, config


def test_save_and_load_round_trip(saved_model):
  path, params, config = saved_model
  loaded, loaded_config, metadata = checkpoints.load_model(path)
  assert loaded_config == config and metadata == {'source': 'test'}
  jax.tree.map(np.testing.assert_array_equal, loaded, jax.tree.map(np.asarray, params))


def test_bad_model_directories_are_named(saved_model, tmp_path):
  path, params, config = saved_model
  with pytest.raises(FileExistsError, match='already exists'):
    checkpoints.save_model(path, params, config)
  with pytest.raises(checkpoints.ModelCheckpointError, match='not a cerebro-bp model'):
    checkpoints.load_model(tmp_path)
  with pytest.raises(checkpoints.ModelCheckpointError, match='blocks_1/attn/qkv/kernel'):
    checkpoints.check_params(params, ModelConfig(depth=1), 'x')
  wrong = jax.tree.map(lambda a: a, params)
  wrong['head']['kernel'] = np.zeros((3, 2), np.float32)
  with pytest.raises(checkpoints.ModelCheckpointError, match=r'head/kernel: shape \(3, 2\)'):
    checkpoints.check_params(wrong, config, 'x')


def test_windows_are_validated(tmp_path):
  good = np.zeros((2, 2, 1250), np.float32)
  assert inference.check_windows(good) is good
  for bad, message in [(good.astype(np.float64), 'dtype float64'),
                       (good[:, :1], r'shape \(2, 1, 1250\)'),
                       (good[:0], 'no windows')]:
    with pytest.raises(inference.WindowsError, match=message):
      inference.check_windows(bad)
  nan = good.copy()
  nan[1, 0, 5] = np.nan
  with pytest.raises(inference.WindowsError, match=r'1 windows hold NaN or Inf, first indices \[1\]'):
    inference.check_windows(nan)
  pickled = tmp_path / 'objects.npy'
  np.save(pickled, np.array([{'a': 1}], dtype=object), allow_pickle=True)
  with pytest.raises(inference.WindowsError, match='objects.npy'):
    inference.load_windows(pickled)
  empty = tmp_path / 'empty.npy'
  empty.write_bytes(b'')
  with pytest.raises(inference.WindowsError, match='empty.npy: not a readable .npy array'):
    inference.load_windows(empty)


def test_windows_outside_0_1_are_refused_unless_scaled(tmp_path):
  """Raw ECG (mV) and PPG values give meaningless pressures: refused, or min-max scaled
  per channel and window on request."""
  raw = np.random.default_rng(2).normal(0, 1, (3, 2, 1250)).astype(np.float32)
  raw[0] = raw[0] * 0.1 + 0.5  # inside [0, 1]: scaled or not, it is not refused
  path = tmp_path / 'raw.npy'
  np.save(path, raw)
  with pytest.raises(inference.WindowsError,
                     match=r'raw.npy: 2 of 3 windows have values outside \[0, 1\] '
                           r'\(first indices \[1, 2\].*--scale'):
    inference.load_windows(path)
  scaled = inference.load_windows(path, scale=True)
  assert scaled.min(axis=2).max() == 0 and scaled.max(axis=2).min() == 1
  np.testing.assert_allclose(scaled[1, 1], (raw[1, 1] - raw[1, 1].min()) / np.ptp(raw[1, 1]),
                             rtol=1e-6)


def test_batched_prediction_equals_one_pass(saved_model):
  _, params, config = saved_model
  x = np.random.default_rng(0).random((7, 2, 1250), dtype=np.float32)
  one = jitted_apply(model_lib.CerebroBP(config), params, x)
  np.testing.assert_allclose(inference.predict_windows(params, config, x, batch_size=3), one,
                             rtol=1e-6, atol=1e-5)


def test_forward_options_only_where_they_apply(saved_model, monkeypatch):
  """The float forward pass compiles with YNNPACK fusions off, XLA's tree rewrite of
  reductions off and 512-bit vectors on this CPU, Eigen on one thread where a device has
  one thread (its outputs are the model's), the integer INT8 path with XLA's defaults; an
  XLA that does not know an option gets none instead of failing to compile."""
  _, params, config = saved_model
  monkeypatch.setattr(sharding, 'cpu_threads_per_device', lambda: 2)
  assert forward.compiler_options() == forward.CPU_OPTIONS
  assert forward.compiler_options(quantization.QuantSpec('int8_weights')) == forward.CPU_OPTIONS
  assert forward.compiler_options(quantization.QuantSpec('int8_dynamic')) == {}
  x = np.random.default_rng(2).random((3, 2, 1250), dtype=np.float32)
  expected = jitted_apply(model_lib.CerebroBP(config), params, x)
  np.testing.assert_allclose(forward.jit(config)(params, x), expected, rtol=1e-6, atol=1e-5)
  # A 192-wide sum (CEReBrO small's LayerNorm) stays one reduction; XLA's default splits
  # it into a reduce-window of partial sums and a reduction.
  row_sums = jax.jit(lambda a: a.sum(-1)).lower(np.ones((38, 192), np.float32))
  assert 'reduce-window' not in row_sums.compile(forward.compiler_options()).as_text()
  with_tree = {k: v for k, v in forward.CPU_OPTIONS.items() if k != 'xla_disable_hlo_passes'}
  assert 'reduce-window' in row_sums.compile(with_tree).as_text()
  monkeypatch.setattr(sharding, 'cpu_threads_per_device', lambda: 1)
  assert forward.compiler_options() == {**forward.CPU_OPTIONS, **sharding.ONE_THREAD_MATMULS}
  np.testing.assert_allclose(forward.jit(config)(params, x), expected, rtol=1e-6, atol=1e-5)
  monkeypatch.setattr(forward, 'CPU_OPTIONS', {'xla_cpu_no_such_option': ''})
  assert forward.compiler_options() == {}
  np.testing.assert_allclose(forward.jit(config)(params, x), expected, rtol=1e-6, atol=1e-5)


def run(*args):
  return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True,
                        timeout=300, check=False)


def test_predict_command_writes_named_columns(saved_model, tmp_path):
  path, params, config = saved_model
  x = np.random.default_rng(1).random((5, 2, 1250), dtype=np.float32)
  np.save(tmp_path / 'x.npy', x)
  out = tmp_path / 'pred.csv'
  result = run('-m', 'cerebro_jax.predict', f'--checkpoint={path}',
               f'--windows={tmp_path / "x.npy"}', f'--output={out}')
  assert result.returncode == 0, result.stderr
  with open(out) as f:
    rows = list(csv.reader(f))
  assert rows[0] == ['sbp_mmhg', 'dbp_mmhg'] and len(rows) == 6
  expected = jitted_apply(model_lib.CerebroBP(config), params, x)
  values = np.array(rows[1:], float)
  np.testing.assert_allclose(values[:, 0], expected[:, 1], rtol=1e-6)  # SBP is output 1
  np.testing.assert_allclose(values[:, 1], expected[:, 0], rtol=1e-6)
  assert all(len(v.replace('.', '').lstrip('0')) >= 7 for v in rows[1])


def test_predict_command_on_one_cpu_thread_predicts_the_same(saved_model, tmp_path):
  path, params, config = saved_model
  x = np.random.default_rng(2).random((3, 2, 1250), dtype=np.float32)
  np.save(tmp_path / 'x.npy', x)
  result = run('-m', 'cerebro_jax.predict', f'--checkpoint={path}', '--cpu_threads=1',
               f'--windows={tmp_path / "x.npy"}', f'--output={tmp_path / "pred.csv"}')
  assert result.returncode == 0, result.stderr
  values = np.loadtxt(tmp_path / 'pred.csv', delimiter=',', skiprows=1)
  expected = jitted_apply(model_lib.CerebroBP(config), params, x)
  np.testing.assert_allclose(values, expected[:, ::-1], rtol=1e-6)


@pytest.mark.skipif(not os.path.isdir('/proc/self/task'), reason='needs Linux /proc')
def test_cpu_threads_sizes_the_xla_thread_pool_and_one_thread_runs_on_the_caller():
  count = ('import os, jax, jax.numpy as jnp\n'
           'from cerebro_jax import sharding\n'
           'sharding.use_cpu_threads({})\n'
           'jax.block_until_ready(jnp.ones((64, 64)) @ jnp.ones((64, 64)))\n'
           'names = [open(f"/proc/self/task/{{t}}/comm").read().strip()\n'
           '         for t in os.listdir("/proc/self/task")]\n'
           'print(jax.config.read("jax_cpu_enable_async_dispatch"), names.count("tf_XLAEigen"))')
  for threads, asynchronous in ((1, 'False'), (3, 'True')):  # one thread: on the caller's
    result = run('-c', count.format(threads))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-2:] == [asynchronous, str(threads)]
  jax.devices()  # this process's backends are running: too late to size the pool
  with pytest.raises(RuntimeError, match='before anything touches a JAX device'):
    sharding.use_cpu_threads(1)
  with pytest.raises(ValueError, match='>= 0'):
    sharding.use_cpu_threads(-1)


def test_predict_command_refuses_bad_windows(saved_model, tmp_path):
  path, _, _ = saved_model
  np.save(tmp_path / 'bad.npy', np.zeros((3, 1250), np.float32))
  result = run('-m', 'cerebro_jax.predict', f'--checkpoint={path}',
               f'--windows={tmp_path / "bad.npy"}', f'--output={tmp_path / "p.csv"}')
  assert result.returncode == 1
  assert 'bad.npy: shape (3, 1250), expected (N, 2, 1250)' in result.stderr
  assert 'Traceback' not in result.stderr
  result = run('-m', 'cerebro_jax.predict', f'--checkpoint={tmp_path}',
               f'--windows={tmp_path / "bad.npy"}', f'--output={tmp_path / "p.csv"}')
  assert result.returncode == 1 and 'not a cerebro-bp model checkpoint' in result.stderr


def test_convert_weights_command(tmp_path):
  torch = pytest.importorskip('torch', reason='torch is not installed')
  import torch_reference  # pylint: disable=import-outside-toplevel
  ref = torch_reference.BPModel(192, 2, 12)
  encoder = {k: v for k, v in ref.state_dict().items() if k.startswith('model.')}
  torch.save({'state_dict': encoder}, tmp_path / 'pre.ckpt')
  result = run('scripts/convert_weights.py', f'--checkpoint={tmp_path / "pre.ckpt"}',
               '--size=small', '--depth=2', f'--output={tmp_path / "out"}')
  assert result.returncode == 0, result.stderr
  assert 'BP head was initialised fresh' in result.stdout
  _, config, metadata = checkpoints.load_model(tmp_path / 'out')
  assert config.depth == 2 and metadata['encoder_only'] is True

  result = run('scripts/convert_weights.py', f'--checkpoint={tmp_path / "pre.ckpt"}',
               '--size=base', f'--output={tmp_path / "out2"}')
  assert result.returncode == 1 and 'Traceback' not in result.stderr
  assert 'mis-shaped model.blocks.0.attn.qkv.weight' in result.stderr
  assert 'missing' in result.stderr and 'model.blocks.9.norm1.weight' in result.stderr
  assert not (tmp_path / 'out2').exists()


def test_predict_command_on_records(saved_model, tmp_path, real_data):
  """One row per 10-s window, with the quality verdict; the same numbers as predicting
  the accepted windows' arrays directly."""
  path, params, config = saved_model
  out = tmp_path / 'record.csv'
  record = real_data / 'derived' / 'mixedsignals_125hz.vital'
  result = run('-m', 'cerebro_jax.predict', f'--checkpoint={path}', f'--record={record}',
               f'--output={out}')
  assert result.returncode == 0, result.stderr
  assert '23 windows (22 passed the quality checks)' in result.stdout
  with open(out) as f:
    rows = list(csv.DictReader(f))
  assert [r['start_s'] for r in rows[:2]] == ['0.000', '10.000']
  assert rows[0]['quality'] == 'nan' and rows[0]['sbp_mmhg'] == ''
  accepted = [r for r in rows if r['quality'] == 'accepted']
  assert len(accepted) == 22
  from input_pipeline import vitaldb_files, windows  # pylint: disable=import-outside-toplevel
  direct = [w.signals for w in windows.windows_of(vitaldb_files.read_vital(str(record)))
            if w.accepted]
  expected = model_lib.named_outputs(inference.predict_windows(params, config, np.stack(direct)))
  np.testing.assert_allclose([float(r['sbp_mmhg']) for r in accepted], expected['sbp_mmhg'],
                             rtol=1e-6)


def test_predict_command_refuses_unreadable_records(saved_model, tmp_path):
  path, _, _ = saved_model
  (tmp_path / 'bad.vital').write_bytes(b'not a vital file')
  result = run('-m', 'cerebro_jax.predict', f'--checkpoint={path}',
               f'--record={tmp_path / "bad.vital"}', f'--output={tmp_path / "p.csv"}')
  assert result.returncode == 1 and 'bad.vital: cannot read .vital file' in result.stderr
  assert 'Traceback' not in result.stderr
  result = run('-m', 'cerebro_jax.predict', f'--checkpoint={path}', f'--output={tmp_path / "p"}')
  assert result.returncode == 1 and 'exactly one of --windows and --record' in result.stderr
