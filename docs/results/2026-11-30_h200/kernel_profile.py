"""Profile CEReBrO small's train step at batch 256 in float32 and bfloat16 (jax.profiler,
5 steps) and sum the device's events (GPU kernels) per step by name. From the
repository root: python3 docs/results/2026-11-30_h200/kernel_profile.py TRACE_DIR
(kernels_small_b256.txt: the run before the attention core moved to float32)."""
import os, sys, time, statistics, gzip, json, glob, collections, re
sys.path.insert(0, 'scripts'); sys.path.insert(0, '.')
import jax
from absl import flags
import benchmark
flags.FLAGS(['x'])
from cerebro_jax import sharding
mesh = sharding.data_mesh()
out = sys.argv[1]
for dtype in ('float32', 'bfloat16'):
  step, state, batch = benchmark._train_step('small', dtype, mesh, 256, 1)
  for _ in range(3):
    state, loss = step(state, batch); jax.block_until_ready(loss)
  ts = []
  for _ in range(10):
    t = time.perf_counter(); state, loss = step(state, batch); jax.block_until_ready(loss); ts.append(time.perf_counter() - t)
  print(dtype, 'step ms', f'{statistics.median(ts)*1e3:.2f}', flush=True)
  d = os.path.join(out, dtype)
  jax.profiler.start_trace(d, create_perfetto_trace=True)
  for _ in range(5):
    state, loss = step(state, batch); jax.block_until_ready(loss)
  jax.profiler.stop_trace()
  f = glob.glob(d + '/**/perfetto_trace.json.gz', recursive=True)[0]
  ev = json.load(gzip.open(f)); ev = ev['traceEvents'] if isinstance(ev, dict) else ev
  pnames = {e['pid']: e['args']['name'] for e in ev if e.get('ph') == 'M' and e.get('name') == 'process_name'}
  tot = collections.Counter(); cnt = collections.Counter(); procs = collections.Counter()
  for e in ev:
    if e.get('ph') != 'X': continue
    p = pnames.get(e['pid'], '?')
    procs[p] += e['dur'] / 5e3
    if '/device:GPU' in p or 'GPU' in p and 'host' not in p.lower():
      k = re.sub(r'[._]\d+$', '', e['name'])[:90]
      tot[k] += e['dur'] / 5e3; cnt[k] += 1
  print(' processes (ms/step summed):', {k[:40]: round(v, 2) for k, v in procs.most_common(6)})
  print(f' device events: {sum(tot.values()):.2f} ms/step, {sum(cnt.values())//5} events/step')
  for k, v in tot.most_common(25): print(f'   {v:7.3f} ms {cnt[k]//5:4d}x {k}')
