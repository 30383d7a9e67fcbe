"""Two processes of two CPU devices each (gloo) against one process of four devices.

Launches `python -m cerebro_jax.main` as a user would on two hosts: the same command with
--coordinator_address, --num_processes and --process_id, the workdir shared.
"""

import json
import os
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import traverse_util

from cerebro_jax import distributed
from cerebro_jax.models import checkpoints
from configs import default
from conftest import REPO_ROOT

_LEARNING_RATE = default.get_config().learning_rate

# A tiny run: CEReBrO small cut to one block, 6 synthetic subjects of a minute. Its
# validation split (5 windows) falls into shards of 3 and 2 windows: 2 and 1 batches of 2
# per process, so the second process must pad with a whole batch.
_OVERRIDES = ('--config.model.depth=1', '--config.data.num_subjects=6',
              '--config.data.minutes_per_subject=1.0', '--config.data.fractions=(0.5,0.25,0.25)',
              '--config.batch_size=8', '--config.eval_batch_size=4',
              '--config.log_every_steps=2')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _launch(workdir, epochs: int, devices: int, process_id=None, port=None):
  """Starts main; its output goes to a file beside the workdir (a pipe that nobody reads
  while the other process is waited for fills up and blocks it inside a collective)."""
  command = [sys.executable, '-m', 'cerebro_jax.main', '--config=configs/default.py',
             f'--workdir={workdir}', f'--config.num_epochs={epochs}', f'--cpu_devices={devices}',
             *_OVERRIDES]
  if port is not None:
    command += [f'--coordinator_address=localhost:{port}', '--num_processes=2',
                f'--process_id={process_id}']
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '2',
         'PYTHONFAULTHANDLER': '1'}
  log = open(f'{workdir}.{epochs}.{process_id}.log', 'w')  # pylint: disable=consider-using-with
  process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, text=True, stdout=log,
                             stderr=subprocess.STDOUT)
  process.log = log
  return process


def _finish(*processes, timeout=240) -> list[str]:
  """Waits for every process; their outputs. Processes still running after `timeout` s
  (a hang) are stopped with SIGABRT, so that faulthandler writes where each one was."""
  try:
    for p in processes:
      p.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    pass
  finally:
    for p in processes:
      if p.poll() is None:
        p.send_signal(signal.SIGABRT)
        p.wait(timeout=30)
      p.log.close()
  outputs = [open(p.log.name).read() for p in processes]  # pylint: disable=consider-using-with
  for p, out in zip(processes, outputs):
    assert p.returncode == 0, out[-6000:]
  return outputs


def _two_processes(workdir, epochs: int) -> list[str]:
  port = _free_port()
  return _finish(*[_launch(workdir, epochs, 2, i, port) for i in range(2)])


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """(one-process workdir, two-process workdir, the two processes' outputs): both trained
  for two epochs at the same time. (Resuming is tested in one process, test_train.py: a
  stopped and restarted pair of processes here cost a third of the suite's longest
  fixture.)"""
  root = tmp_path_factory.mktemp('multihost')
  one = _launch(root / 'one', 2, 4)
  outputs = _two_processes(root / 'two', 2)
  _finish(one)
  return root / 'one', root / 'two', outputs


def test_two_processes_train_the_model_of_one_process_with_four_devices(runs):
  one, two, outputs = runs
  assert 'Training' in outputs[0] and 'epoch 2: train' in outputs[0]
  assert 'Training' not in outputs[1]  # process 1 prints nothing of its own
  params_one, _, meta_one = checkpoints.load_model(one / 'model')
  params_two, _, meta_two = checkpoints.load_model(two / 'model')
  assert meta_one['best_epoch'] == meta_two['best_epoch']
  # Both runs see the same global batches and split them over the same four devices; only
  # the gradients' sum across processes (gloo) adds in another order. That round-off is
  # all the key bias ever gets (its exact gradient is zero: softmax ignores a constant
  # added to every key), and Adam scales it to updates of up to lr per step, so the key
  # bias may differ by 2 lr per step. Adam does the same to any gradient that cancels to
  # about zero (g / (|g| + eps)): a rare element elsewhere (1 of 110,592 in the qkv kernel
  # with XLA's Eigen matmuls) may differ by up to that bound; all others agree to float
  # round-off.
  flat_one = traverse_util.flatten_dict(params_one, sep='/')
  flat_two = traverse_util.flatten_dict(params_two, sep='/')
  steps = json.loads((two / 'train_summary.json').read_text())['steps']
  for name, value in flat_one.items():
    other = flat_two[name]
    if name.endswith('attn/qkv/bias'):
      dim = value.shape[0] // 3
      np.testing.assert_allclose(other[dim:2 * dim], value[dim:2 * dim], rtol=0,
                                 atol=2 * _LEARNING_RATE * steps)
      value, other = np.delete(value, np.s_[dim:2 * dim]), np.delete(other, np.s_[dim:2 * dim])
    far = ~np.isclose(other, value, rtol=1e-5, atol=1e-6)
    assert far.mean() <= 1e-4, (name, int(far.sum()), far.size)
    np.testing.assert_allclose(other, value, rtol=0, atol=2 * _LEARNING_RATE * steps,
                               err_msg=name)
  summary_one = json.loads((one / 'train_summary.json').read_text())
  summary_two = json.loads((two / 'train_summary.json').read_text())
  assert summary_one['steps'] == summary_two['steps'] > 0
  assert summary_two['best_val_mse'] == pytest.approx(summary_one['best_val_mse'], rel=1e-4)


def test_evaluation_over_two_processes_counts_every_window_once(runs):
  one, two, _ = runs
  info = json.loads(next((two / 'data').glob('*/*/*/dataset_info.json')).read_text())
  sizes = {s['name']: sum(int(n) for n in s['shardLengths']) for s in info['splits']}
  largest, smallest = -(-sizes['validation'] // 2), sizes['validation'] // 2
  assert -(-largest // 2) > -(-smallest // 2)  # more batches on process 0 than on 1
  metrics_one = json.loads((one / 'eval' / 'metrics.json').read_text())
  metrics_two = json.loads((two / 'eval' / 'metrics.json').read_text())
  for split in ('validation', 'test'):
    for target in ('sbp', 'dbp'):
      assert metrics_two[split][target]['n'] == sizes[split]
      assert metrics_two[split][target]['per_subject']['num_subjects'] == (
          metrics_one[split][target]['per_subject']['num_subjects'])
      assert metrics_two[split][target]['mae'] == pytest.approx(
          metrics_one[split][target]['mae'], rel=1e-4)


@pytest.mark.parametrize('flags_, message', [
    (('', 2, 0), 'need --coordinator_address'),
    (('localhost:1234', 2, 2), r'0 <= --process_id < --num_processes'),
    (('localhost:1234', 0, 0), r'--num_processes >= 1')])
def test_process_flags_that_describe_no_job_are_refused(flags_, message):
  with pytest.raises(distributed.ProcessFlagsError, match=message):
    distributed.initialize(*flags_)
