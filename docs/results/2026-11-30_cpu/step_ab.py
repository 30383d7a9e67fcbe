"""The train step of CEReBrO small alternated in one process: as before a6d9ee5 (the plain
rows product, copy insertion without region analysis) against the tree (864953a on).

Run from the repository root: SPLITS=2 ROUNDS=12 .venv/bin/python
docs/results/2026-11-30_cpu/step_ab.py 64 (with the GLIBC_TUNABLES of
scripts/setup_venv.sh). Prints each round's median of 5 steps in ms.
"""
import os, sys, time, statistics
sys.path.insert(0, 'scripts')
import jax
from absl import flags
import benchmark
flags.FLAGS(['x'])
from cerebro_jax import sharding
from cerebro_jax.models import row_matmul
from cerebro_jax.trainers import steps
sharding.use_synchronous_cpu_dispatch()
mesh = sharding.data_mesh()
B = int(sys.argv[1]); splits = int(os.environ.get('SPLITS', 2))
new_rows_dot = row_matmul.rows_dot
def plain(inputs, kernel, dimension_numbers, precision=None):
  rows = jax.lax.dot_general(inputs.reshape(-1, inputs.shape[-1]), kernel, (((1,), (0,)), ((), ())), precision=precision)
  return rows.reshape(*inputs.shape[:-1], kernel.shape[-1])
variants, states = {}, {}
for name in ('before', 'new'):
  row_matmul.rows_dot = plain if name == 'before' else new_rows_dot
  step, state, batch = benchmark._train_step('small', 'float32', mesh, B, splits)
  o = dict(steps.compiler_options(splits))
  if name == 'before': o.pop('xla_cpu_copy_insertion_use_region_analysis')
  variants[name] = step.lower(state, batch).compile(o); states[name] = state
row_matmul.rows_dot = new_rows_dot
for k, c in variants.items():
  for _ in range(3):
    states[k], loss = c(states[k], batch); jax.block_until_ready(loss)
  print(k, 'loss', float(loss))
res = {k: [] for k in variants}
for _ in range(int(os.environ.get('ROUNDS', 10))):
  for k, c in variants.items():
    ts = []
    for _ in range(5):
      t = time.perf_counter(); states[k], loss = c(states[k], batch); jax.block_until_ready(loss); ts.append(time.perf_counter() - t)
    res[k].append(statistics.median(ts) * 1e3)
for k, v in res.items(): print(k, ' '.join(f'{x:.0f}' for x in v), 'median', f'{statistics.median(v):.1f}')
print('new faster in', sum(a > b for a, b in zip(res['before'], res['new'])), 'of', len(res['new']), 'rounds')
