"""GPU A/B of the train step in one process (2026-11-30, docs/benchmarks.md): 'prev', the
model module saved as model_prev.py beside this file (an earlier or later
cerebro_jax/models/model.py), against 'new', the working tree's. drop_path_ab.txt: prev =
one draw per branch, new = one draw per forward. attention_core_ab.txt came from the same
script with the labels 'cur' (the working tree, bfloat16 core) and 'att32' (the module
file holding the float32 core). From the repository root:
  python3 docs/results/2026-11-30_h200/ab.py small:bfloat16:256 ...
Per variant: 6 rounds (variants in turn) of the median of 10 synchronous steps."""
import os, sys, time, statistics, importlib.util
sys.path.insert(0, 'scripts'); sys.path.insert(0, '.')
import jax, numpy as np
from absl import flags
import benchmark
flags.FLAGS(['x'])
from cerebro_jax import sharding
from cerebro_jax.models import model as model_lib
from cerebro_jax.trainers import steps
here = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location('model_prev', os.path.join(here, 'model_prev.py'))
prev = importlib.util.module_from_spec(spec); sys.modules['model_prev'] = prev; spec.loader.exec_module(prev)
print(jax.devices(), flush=True)
mesh = sharding.data_mesh()
for case in sys.argv[1:]:
  size, dtype, B = case.split(':'); B = int(B)
  variants, states = {}, {}
  t0 = time.time()
  for name, mod in (('prev', prev), ('new', model_lib)):
    steps.model_lib = mod
    step, state, batch = benchmark._train_step(size, dtype, mesh, B, 1)
    c = step.lower(state, batch).compile()
    variants[name] = c; states[name] = state
  steps.model_lib = model_lib
  for k, c in variants.items():
    for _ in range(3):
      states[k], loss = c(states[k], batch); jax.block_until_ready(loss)
  res = {k: [] for k in variants}
  for _ in range(6):
    for k, c in variants.items():
      ts = []
      for _ in range(10):
        t = time.perf_counter(); states[k], loss = c(states[k], batch); jax.block_until_ready(loss); ts.append(time.perf_counter() - t)
      res[k].append(statistics.median(ts) * 1e3)
  print(case, f'(compile+run {time.time()-t0:.0f} s)', flush=True)
  for k, v in res.items(): print('  ', k, ' '.join(f'{x:.2f}' for x in v), 'median', f'{statistics.median(v):.2f} ms', f'{B/statistics.median(v)*1e3:.0f} windows/s', flush=True)
