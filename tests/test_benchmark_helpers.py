"""scripts/benchmark.py's helpers: JAX and PyTorch timed in turns; the FLOPs of a train
step where the backend cannot analyse a lowered step (jax 0.11's GPU plugin returns
None), which the same step lowered for the CPU in a fresh process then gives."""

import sys
import time

import pytest

from cerebro_jax import sharding
from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / 'scripts'))
import benchmark  # pylint: disable=wrong-import-position


class _NoLoweredAnalysis:
  """A jitted step whose lowered stage has no cost analysis, as on a GPU's PJRT plugin."""

  def __init__(self, step):
    self._step = step

  def lower(self, *args):
    lowered = self._step.lower(*args)

    class Lowered:
      cost_analysis = staticmethod(lambda: None)
      compile = staticmethod(lowered.compile)
    return Lowered()


def test_step_flops_come_from_a_cpu_lowering_where_the_backend_has_none(monkeypatch):
  monkeypatch.setattr(sys, 'argv', ['benchmark.py', 'train'])  # what the child parses
  mesh = sharding.data_mesh()
  built_by = (benchmark._train_step, 'small', 'float32', 8, 1)
  step, state, batch = benchmark._train_step('small', 'float32', mesh, 8, 1)
  direct = step.lower(state, batch).cost_analysis()['flops']
  flops, moved, scratch = benchmark._step_cost(_NoLoweredAnalysis(step), state, batch, mesh,
                                               built_by)
  assert flops == pytest.approx(direct, rel=1e-9) and flops > 8 * 0.8e9  # 0.84 GFLOP/window
  assert moved > 0 and scratch > 0


def test_calls_are_timed_in_turns_after_an_untimed_call_each_round():
  order = []

  def call(name, seconds):
    def run():
      order.append(name)
      time.sleep(seconds)
    return run

  medians = benchmark.medians_in_turns({'a': call('a', 0.002), 'b': call('b', 0.02)},
                                       repeats=5, block=3)
  # Round 1: one untimed and 3 timed calls of each; round 2: one untimed and the last 2.
  assert ''.join(order) == 'aaaa' + 'bbbb' + 'aaa' + 'bbb'
  assert 0.002 <= medians['a'] < 0.015 <= 0.02 <= medians['b']
