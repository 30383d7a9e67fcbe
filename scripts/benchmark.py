"""Benchmarks that print figures (no pass/fail): `python scripts/benchmark.py WHAT`.

  model  For each size and attention type: forward latency at batch 1 (ms, median of at
         least 100 calls), throughput at --batch (windows/s), and memory of one
         attention layer at --batch: XLA's scratch bytes for the compiled layer (norm +
         qkv + attention + proj) and the size of its softmax weights (B x H x groups x
         L x L float32); on a CPU, then batch-1 latency in a fresh process with XLA on
         one thread and one device (sharding.use_cpu_threads(1), the setting for serving
         a window at a time).
  data   Windows prepared per second in one process (one core does the work): windowing
         alone (the cohort's records already in memory), from the synthetic generator
         and from WFDB records of the same cohort written to disk;
         then for each --data_windows and --data_workers, the whole preparation as
         scripts/prepare_data.py runs it (Beam windowing + TFDS write) of a synthetic
         cohort of that many windows in a fresh process: windows/s, seconds and peak
         resident memory of the process and of its largest worker; then the tf.data
         training pipeline's windows per second in batches of --batch over the largest
         dataset's training split (two passes), streamed from disk and with
         config.data.cache (after the pass that fills it).
  quant  For each size and runtime (--runtimes), on the same weights: forward latency at
         batch 1 (ms, median of at least 100 calls), throughput at --batch (windows/s)
         and the size of the shipped file (MiB) of each format. JAX: float32,
         weight-only INT8, dynamic and static INT8 (PyTorch's scheme, integer path),
         orbax model directories. LiteRT: the float32, dynamic-range and static INT8
         files (exported at batch 1 and at --batch; static calibrated on the --batch
         windows), XNNPACK on all cores. PyTorch: the reference model
         (tests/torch_reference.py, the original architecture) in float32 and after
         quantize_dynamic (the paper's INT8), state dicts as torch.save writes them.
         Skips PyTorch when torch is not installed.
  train  For each size: train step time and windows/s at --batch (Adam, drop path 0.2,
         --dtype), the step's FLOPs from XLA's cost analysis, and model FLOPs
         utilisation against this machine's measured peak (a 4096^2 matmul in --dtype).
         Steps are dispatched synchronously on a CPU and split as --step_splits says (the
         step_splits column), as main.py trains.
  pretrain  The same figures for the masked-patch pre-training step (configs/pretrain.py's
         AdamW, mask ratio and loss) on --channels x 1250-sample windows.
  roofline  An estimate: for each size in float32 and bfloat16, the train step's FLOPs and
         bytes accessed per window at --batch from XLA's cost analysis, their ratio, and
         the step time and bound (compute or memory) a roofline gives on an H100 and a
         TPU v5e from their published peaks. Compiles only; runs anywhere.
  --compare_torch (model, train) times the PyTorch reference model in the same run, in
         turns with JAX (a few calls of each in every round, medians_in_turns)
         (float32; train: forward with the original's drop path 0.2, MSE, backward,
         AdamW) and prints JAX's speed-up; model: also PyTorch's batch-1 latency with one
         thread in the one-thread process, and JAX's one-thread speed-up against the
         faster of PyTorch's two latencies. When JAX runs on a GPU, PyTorch runs on it
         too (CUDA, TF32 matmuls as JAX's default).
  --cpu_devices=N (model, train, pretrain, roofline) splits the CPU into N JAX devices,
         as the main job's flag does, and the batch over them.
  pulsedb  For each --pulsedb_gb: writes a PulseDB Train_Subset.mat of that size (MATLAB
         v7.3, float64 (1250, 3, N) signals) and imports it with scripts/prepare_data.py's
         code in a fresh process (random protocol, --pulsedb_workers Beam workers): the
         listing's seconds (subject keys only), windows/s of the whole import, and peak
         resident memory of the process (with TFDS's shuffle buffer, which holds up to
         1 GB of examples before spilling to disk) and of its largest Beam worker.

--json prints one JSON object instead of the table. Run on an idle machine.

model, train, pretrain and roofline need JAX, Flax, optax, orbax and ml_collections only
(torch for --compare_torch): they run on an accelerator image without TensorFlow; data,
quant and pulsedb import the input pipeline, TensorFlow and LiteRT when they run.
"""

import concurrent.futures
import contextlib
import dataclasses
import json
import multiprocessing
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from cerebro_jax import cli, forward as forward_lib, sharding
from cerebro_jax.models import checkpoints, convert, model as model_lib
from cerebro_jax.models.model_config import ATTENTION_TYPES, SIZES, ModelConfig
from cerebro_jax.quant import calibration, quantization
from cerebro_jax.trainers import masked_patches, optim, steps
from configs import default
from configs import pretrain as pretrain_configs

_SIZES = flags.DEFINE_multi_enum('sizes', list(SIZES), list(SIZES), 'Model sizes to measure.')
_BATCH = flags.DEFINE_integer('batch', 256, 'Batch for throughput and memory.', lower_bound=1)
_CHANNELS = flags.DEFINE_integer('channels', 2, 'Input channels (2 for ECG + PPG; more for '
                                 'the EEG setting of the paper\'s attention claim).',
                                 lower_bound=1)
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed calls per figure (median reported); '
                                'batch-1 latencies take at least 100.', lower_bound=1)
_SUBJECTS = flags.DEFINE_integer('subjects', 8, 'data: synthetic subjects (10 min each).',
                                 lower_bound=1)
_DATA_WINDOWS = flags.DEFINE_list(
    'data_windows', ['6000', '24000'], 'data: sizes (candidate windows) of the synthetic '
    'cohorts prepared end to end with scripts/prepare_data.py\'s code, for windows/s and '
    'peak memory against size.')
_DATA_WORKERS = flags.DEFINE_list('data_workers', ['1', '2'],
                                  'data: local Beam worker processes to compare.')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'],
                           'model, train: compute dtype of the model (parameters stay float32; '
                           'the PyTorch reference of --compare_torch stays float32); train: '
                           'also of the peak matmul.')
_PULSEDB_GB = flags.DEFINE_list('pulsedb_gb', ['0.5', '3', '6'],
                                'pulsedb: subset file sizes (GB).')
_PULSEDB_WORKERS = flags.DEFINE_integer('pulsedb_workers', 1, 'pulsedb: local Beam worker '
                                       'processes of the import.', lower_bound=1)
_PULSEDB_DIR = flags.DEFINE_string('pulsedb_dir', '', 'pulsedb: folder for the files (default '
                                   'a temporary one; needs about twice the largest size).')
_COMPARE_TORCH = flags.DEFINE_bool(
    'compare_torch', False, 'model, train: also time the PyTorch reference model '
    '(tests/torch_reference.py, the original architecture; float32, all cores, or the GPU '
    'with TF32 matmuls when JAX runs on one) in the same run and print JAX\'s speed-up '
    'over it (>1: JAX is faster). Needs torch.')
_RUNTIMES = flags.DEFINE_multi_enum('runtimes', ['jax', 'litert', 'pytorch'],
                                    ['jax', 'litert', 'pytorch'], 'quant: runtimes to time.')
_CPU_DEVICES = flags.DEFINE_integer(
    'cpu_devices', 0, 'model, train, pretrain, roofline: split the CPU into this many JAX '
    'devices (the main job\'s --cpu_devices); batches are split over them (model: the '
    '--batch throughput; batch 1 runs on one device). 0: one CPU device, JAX\'s default.',
    lower_bound=0)
_STEP_SPLITS = flags.DEFINE_integer(
    'step_splits', 0, 'train, pretrain: parts of each device\'s batch in a step, as the main '
    'job\'s config.step_splits (0: its automatic choice, steps.step_splits).', lower_bound=0)
_JSON = flags.DEFINE_bool('json', False, 'Print JSON instead of a table.')

SAMPLES = 1250
LATENCY_CALLS = 100  # batch-1 latency is the median of at least this many calls


def warm_result_and_seconds(fn, *args, repeats):
  """(the result of a first, warm-up (compilation) call of `fn(*args)`, the median wall
  time of `repeats` more calls)."""
  result = jax.block_until_ready(fn(*args))
  return result, statistics.median(_wall_times(lambda: fn(*args), repeats))


def _wall_times(call, count: int) -> list[float]:
  """Wall times (s) of `count` calls of the zero-argument `call`, each waited for."""
  times = []
  for _ in range(count):
    start = time.perf_counter()
    jax.block_until_ready(call())
    times.append(time.perf_counter() - start)
  return times


def timed_calls(batch: int) -> int:
  """Calls to time for a figure at `batch` windows: --repeats, and at least LATENCY_CALLS
  at batch 1, whose single calls move with this VM's noise."""
  return max(_REPEATS.value, LATENCY_CALLS) if batch == 1 else _REPEATS.value


def median_seconds(fn, *args, repeats):
  """Median wall time of `fn(*args)` after one warm-up (compilation) call."""
  return warm_result_and_seconds(fn, *args, repeats=repeats)[1]


def medians_in_turns(calls: dict, repeats: int, block: int) -> dict:
  """{name: median wall time} of each zero-argument call in `calls` (JAX's and PyTorch's),
  timed in turns: rounds of one untimed call of each (the first compiles; later ones
  warm the caches the other framework used) and `block` timed ones, until every call has
  `repeats` timed calls. Both then meet the same machine: this VM's speed drifts by
  several per cent within a minute, which moved the ratio when JAX was timed first and
  PyTorch after."""
  times = {name: [] for name in calls}
  while len(next(iter(times.values()))) < repeats:
    for name, call in calls.items():
      jax.block_until_ready(call())
      times[name] += _wall_times(call, min(block, repeats - len(times[name])))
  return {name: statistics.median(t) for name, t in times.items()}


class AttentionLayer(nn.Module):
  """The attention half of one block: LayerNorm, regrouping, attention, proj."""
  config: ModelConfig
  mode: str

  @nn.compact
  def __call__(self, x):
    mask = jnp.ones(x.shape[:2], bool)
    tokens, key_mask, undo = model_lib.attention_view(nn.LayerNorm()(x), mask, self.mode)
    return undo(model_lib.Attention(self.config.num_heads, jnp.float32, 1.0)(tokens, key_mask))


def attention_memory(config, batch, channels):
  """(XLA scratch MiB, softmax-weights MiB) of the largest attention layer of `config`."""
  patches = SAMPLES // config.patch_size
  modes = {model_lib.block_mode(config, i) for i in range(min(config.depth, 2))}
  x = jax.ShapeDtypeStruct((batch, channels, patches, config.embed_dim), jnp.float32)
  group_len = {'channels': (batch * patches, channels), 'time': (batch * channels, patches),
               'full': (batch, channels * patches)}
  scratch, weights = 0.0, 0.0
  for mode in modes:
    layer = AttentionLayer(config, mode)
    params = jax.eval_shape(layer.init, jax.random.PRNGKey(0), x)
    stats = jax.jit(layer.apply).lower(params, x).compile().memory_analysis()
    scratch = max(scratch, stats.temp_size_in_bytes / 2**20)
    groups, length = group_len[mode]
    weights = max(weights, groups * config.num_heads * length * length * 4 / 2**20)
  return scratch, weights


def bench_model():
  rows = []
  rng = np.random.default_rng(0)
  mesh = sharding.data_mesh()
  for size in _SIZES.value:
    for attention_type in ATTENTION_TYPES:
      config = ModelConfig.from_size(size, attention_type=attention_type, dtype=_DTYPE.value)
      params = model_lib.init_params(config, jax.random.PRNGKey(0), channels=_CHANNELS.value)
      forward = forward_lib.jit(config)
      one = rng.random((1, _CHANNELS.value, SAMPLES), dtype=np.float32)
      many = rng.random((_BATCH.value, _CHANNELS.value, SAMPLES), dtype=np.float32)
      predict = forward_lib.predict_fn(config, mesh)
      replicated = jax.device_put(params, sharding.replicated(mesh))
      many_on_mesh = sharding.put_batch({'x': many}, mesh)['x']
      ones = {'jax': lambda: forward(params, one)}
      batches = {'jax': lambda: predict(replicated, many_on_mesh)}
      if _COMPARE_TORCH.value:
        torch, module, _ = _require_torch_reference(config)
        run = _torch_inference(torch, module)
        ones['torch'] = lambda: run(torch.from_numpy(one))
        batches['torch'] = lambda: run(torch.from_numpy(many))
      latencies = medians_in_turns(ones, timed_calls(1), block=10)
      per_batches = medians_in_turns(batches, _REPEATS.value, block=3)
      latency, per_batch = latencies['jax'], per_batches['jax']
      scratch, weights = attention_memory(config, _BATCH.value, _CHANNELS.value)
      row = {'size': size, 'attention': attention_type, 'latency_b1_ms': latency * 1e3,
             f'throughput_b{_BATCH.value}_windows_per_s': _BATCH.value / per_batch,
             'attn_layer_xla_scratch_mib': scratch, 'attn_weights_mib': weights}
      if _COMPARE_TORCH.value:
        torch_latency, torch_batch = latencies['torch'], per_batches['torch']
        row.update({'torch_latency_b1_ms': torch_latency * 1e3,
                    f'torch_throughput_b{_BATCH.value}': _BATCH.value / torch_batch,
                    'latency_speedup_vs_torch': torch_latency / latency,
                    'throughput_speedup_vs_torch': torch_batch / per_batch})
      rows.append(row)
  if jax.default_backend() == 'cpu':  # XLA's thread pool is a CPU setting
    _add_one_thread_latency(rows)
  return rows


def _add_one_thread_latency(rows) -> None:
  """Adds to each row of bench_model the batch-1 latency of a fresh process with XLA on
  one thread and one device (sharding.use_cpu_threads(1), for serving a window at a time)
  and, with --compare_torch, PyTorch's with one thread and the speed-up against the
  faster of PyTorch's two latencies."""
  models = [(row['size'], row['attention']) for row in rows]
  latencies = in_fresh_process(_one_thread_latency, models, _DTYPE.value, _CHANNELS.value,
                               timed_calls(1), _COMPARE_TORCH.value)
  for row, (jax_seconds, torch_seconds) in zip(rows, latencies):
    row['latency_b1_1thread_ms'] = jax_seconds * 1e3
    if torch_seconds is not None:
      row['torch_latency_b1_1thread_ms'] = torch_seconds * 1e3
      best_torch = min(torch_seconds * 1e3, row['torch_latency_b1_ms'])
      row['latency_1thread_speedup_vs_torch'] = best_torch / row['latency_b1_1thread_ms']


def _one_thread_latency(models, dtype, channels, repeats, compare_torch) -> list:
  """Run in a fresh process: [(JAX seconds, PyTorch seconds or None)], the median batch-1
  latency of each (size, attention type) in `models` with one thread."""
  sharding.use_cpu_threads(1)
  one = np.random.default_rng(0).random((1, channels, SAMPLES), dtype=np.float32)
  latencies = []
  for size, attention_type in models:
    config = ModelConfig.from_size(size, attention_type=attention_type, dtype=dtype)
    params = model_lib.init_params(config, jax.random.PRNGKey(0), channels=channels)
    forward = forward_lib.jit(config)
    calls = {'jax': lambda: forward(params, one)}
    if compare_torch:
      torch, module, _ = _require_torch_reference(config)
      torch.set_num_threads(1)
      run = _torch_inference(torch, module)
      calls['torch'] = lambda: run(torch.from_numpy(one))
    medians = medians_in_turns(calls, repeats, block=10)
    latencies.append((medians['jax'], medians.get('torch')))
  return latencies


def _require_torch_reference(config):
  reference = _torch_reference(config)
  if reference is None:
    raise SystemExit('--compare_torch needs torch: .venv/bin/pip install -e ".[torch]"')
  return reference


def _torch_inference(torch, module):
  """(B, C, 1250) CPU tensor -> (B, 2) numpy outputs: the input copied to the module's
  device and the output back, as JAX's timed forward takes a host array."""
  device = next(module.parameters()).device

  def forward(x):
    with torch.inference_mode():
      return module(x.to(device)).cpu().numpy()
  return forward


def _torch_train_step(torch, module, batch: dict):
  """A zero-argument call of one PyTorch training step of the reference model on `batch`:
  forward with the blocks' drop path at the JAX step's rate, MSE on [DBP, SBP], backward,
  AdamW (the original's optimizer); it returns the loss."""
  module.train()
  optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4, weight_decay=0.05)
  device = next(module.parameters()).device  # the batch is on the device, as JAX's is
  signals = torch.from_numpy(np.array(batch['signals'])).to(device)
  targets = torch.from_numpy(np.stack([batch['dbp'], batch['sbp']], -1)).to(device)

  def step():
    optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(module(signals), targets)
    loss.backward()
    optimizer.step()
    return loss.detach().cpu().numpy()
  return step


def in_fresh_process(fn, *args):
  """fn(*args) in a fresh (spawned) Python process: its result, or its exception here."""
  context = multiprocessing.get_context('spawn')
  with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
    return pool.submit(fn, *args).result()


def _prepare_and_report(options, output_dir: str, workers: int) -> dict:
  """prepare_dataset of `options` with `workers` Beam workers, timed (run in a fresh
  process): {'seconds', 'windows' (candidates), 'rss_mib', 'worker_rss_mib'}: peak
  resident memory of that process and of its largest child."""
  from input_pipeline import beam_prepare, tfds_builders  # pylint: disable=import-outside-toplevel
  start = time.perf_counter()
  with contextlib.redirect_stdout(sys.stderr):  # TFDS prints; stdout is for the figures
    summary, _ = tfds_builders.prepare_dataset(
        options, output_dir, progress=False, pipeline_options=beam_prepare.beam_options(workers))
  return {'seconds': time.perf_counter() - start, 'windows': summary['candidate_windows'],
          'rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
          'worker_rss_mib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def bench_data():
  # pylint: disable=import-outside-toplevel
  from input_pipeline import mimic3, pipeline, prepare, synthetic
  from input_pipeline.windows import windows_of
  # pylint: enable=import-outside-toplevel
  options = prepare.PrepareOptions(cohort=synthetic.CohortConfig(
      num_subjects=_SUBJECTS.value, minutes_per_subject=10.0))
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    records_dir = os.path.join(tmp, 'wfdb')
    os.makedirs(records_dir)
    records = [synthetic.subject(i, options.cohort)[0] for i in range(_SUBJECTS.value)]
    for record in records:
      mimic3.write_record(record, records_dir)
    candidates, seconds = warm_result_and_seconds(
        lambda rs: [list(windows_of(r)) for r in rs], records, repeats=_REPEATS.value)
    windows = sum(map(len, candidates))
    rows.append({'stage': f'windowing alone: the records in memory (median of '
                          f'{_REPEATS.value})', 'rate': windows / seconds, 'unit': 'windows/s'})
    for stage, source in (('synthetic: generate + window + label', options),
                          ('WFDB records: read + window + label', dataclasses.replace(
                              options, source='mimic3', input_dir=records_dir))):
      prepared, seconds = warm_result_and_seconds(
          lambda s: prepare.prepare(s, progress=False), source, repeats=_REPEATS.value)
      windows = len(prepared.candidates)
      rows.append({'stage': f'{stage} (1 process, median of {_REPEATS.value})',
                   'rate': windows / seconds, 'unit': 'windows/s'})
    for windows in map(int, _DATA_WINDOWS.value):
      for workers in map(int, _DATA_WORKERS.value):
        # 10-minute subjects give 60 candidate windows each.
        cohort = synthetic.CohortConfig(num_subjects=max(1, windows // 60),
                                        minutes_per_subject=10.0)
        output_dir = os.path.join(tmp, f'beam_{windows}_{workers}')
        result = in_fresh_process(_prepare_and_report,
                                  dataclasses.replace(options, cohort=cohort), output_dir, workers)
        rows.append({'stage': f'prepare_data (Beam + TFDS), {result["windows"]} windows, '
                              f'{workers} worker(s)',
                     'rate': result['windows'] / result['seconds'], 'unit': 'windows/s',
                     'seconds': result['seconds'], 'peak_rss_mib': result['rss_mib'],
                     'worker_peak_rss_mib': result['worker_rss_mib']})
        if (windows, workers) != (int(_DATA_WINDOWS.value[-1]), int(_DATA_WORKERS.value[0])):
          shutil.rmtree(output_dir)
    builder = pipeline.load_builder(
        os.path.join(tmp, f'beam_{_DATA_WINDOWS.value[-1]}_{_DATA_WORKERS.value[0]}'))
    train_size = builder.info.splits['train'].num_examples
    for cache in (False, True):
      batches = pipeline.train_batches(builder, _BATCH.value, seed=0, cache=cache)
      # Cached: after one pass, which fills the cache. Timed: two passes over the split
      # (streamed: read from disk through the shuffle buffer, refilled at each pass).
      for _ in range(train_size // _BATCH.value if cache else 1):
        next(batches)
      count = max(50, 2 * train_size // _BATCH.value)
      start = time.perf_counter()
      for _ in range(count):
        next(batches)
      rows.append({'stage': f'tf.data train batches of {_BATCH.value}, {train_size}-window '
                            f'split, {"cached in memory" if cache else "streamed from disk"}',
                   'rate': count * _BATCH.value / (time.perf_counter() - start),
                   'unit': 'windows/s'})
  return rows


def bench_pulsedb():
  from input_pipeline import prepare, pulsedb_writer  # pylint: disable=import-outside-toplevel
  rows = []
  rng = np.random.default_rng(0)
  with tempfile.TemporaryDirectory(dir=_PULSEDB_DIR.value or None) as tmp:
    for gb in map(float, _PULSEDB_GB.value):
      count = int(gb * 1e9 / (3 * SAMPLES * 8))
      folder = os.path.join(tmp, f'{gb}gb')
      os.makedirs(folder)
      path = os.path.join(folder, 'Train_Subset.mat')
      block = 2048
      base = rng.normal(size=(block, 3, SAMPLES))
      keys = [f'p{i // 100:06d}_{i // 100 % 2}' for i in range(count)]
      start = time.perf_counter()
      pulsedb_writer.write_subset(
          path, (base[:min(block, count - a)] + a for a in range(0, count, block)), count,
          rng.uniform(100, 160, count), rng.uniform(50, 90, count), keys, compression=None)
      written = time.perf_counter() - start
      options = prepare.PrepareOptions(source='pulsedb', input_dir=folder, protocol='random')
      start = time.perf_counter()
      blocks = len(prepare.window_job(options).units)  # the listing alone, timed here
      listing_s = time.perf_counter() - start
      result = in_fresh_process(_prepare_and_report, options, os.path.join(tmp, f'out_{gb}'),
                                _PULSEDB_WORKERS.value)
      rows.append({'file_gb': os.path.getsize(path) / 1e9, 'segments': count,
                   'workers': _PULSEDB_WORKERS.value, 'write_s': written,
                   'listing_s': listing_s, 'blocks': blocks,
                   'import_windows_per_s': count / result['seconds'],
                   'peak_rss_mib': result['rss_mib'],
                   'worker_peak_rss_mib': result['worker_rss_mib']})
      os.remove(path)
  return rows


def matmul_peak_flops(dtype) -> float:
  """Measured FLOP/s of a large square matmul: the machine's practical peak."""
  n = 4096
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)  # GPUs multiply zeros faster
  matmul = jax.jit(lambda x: x @ x)
  return 2 * n**3 / median_seconds(matmul, a, repeats=_REPEATS.value)


def _step_cost(step, state, batch, mesh, built_by) -> tuple[float, float, float]:
  """(FLOPs, bytes accessed, scratch bytes) of one step over the whole mesh. FLOPs: XLA's
  cost analysis of the step as lowered, the whole batch's program before XLA's passes
  (the compiled step's count leaves out the matmuls a GPU hands to cuBLAS: 0.14 against
  0.84 GFLOP per window for small on an H200). Where this backend has no analysis of a
  lowered step (jax 0.11's GPU plugin), the same step lowered for the CPU in a fresh
  process: built_by = (make_step, size, dtype, batch size, splits) rebuilds it. Bytes and
  scratch: the compiled step's analyses, of one device's share."""
  lowered = step.lower(state, batch)
  compiled = lowered.compile()
  flops = (lowered.cost_analysis() or {}).get('flops')
  if flops is None:
    make_step, *args = built_by
    flops = in_fresh_process(_cpu_lowered_flops, sys.argv, make_step.__name__, *args)
  return (flops, compiled.cost_analysis()['bytes accessed'] * mesh.size,
          compiled.memory_analysis().temp_size_in_bytes * mesh.size)


def _cpu_lowered_flops(argv, make_step_name, size, dtype, batch_size, splits) -> float:
  """Run in a fresh process: XLA's FLOPs of the step that `make_step_name` builds, lowered
  for one CPU device (the whole batch's program)."""
  jax.config.update('jax_platforms', 'cpu')
  flags.FLAGS(argv)  # the step builders read --channels
  make_step = globals()[make_step_name]
  step, state, batch = make_step(size, dtype, sharding.data_mesh(), batch_size, splits)
  return step.lower(state, batch).cost_analysis()['flops']


def _train_step(size: str, dtype: str, mesh, batch_size: int, splits: int = 1):
  """(jitted train step, state, batch) of CEReBrO `size` in `dtype` on random windows,
  each device's batch in `splits` parts."""
  rng = np.random.default_rng(0)
  model_config = ModelConfig.from_size(size, dtype=dtype)
  params = model_lib.init_params(model_config, jax.random.PRNGKey(0))
  tx, _ = optim.make_optimizer(default.get_config(), params)
  state = jax.device_put(steps.init_state(params, tx, 0), sharding.replicated(mesh))
  batch = sharding.put_batch({
      'signals': rng.random((batch_size, 2, SAMPLES), dtype=np.float32),
      'sbp': rng.uniform(100, 160, batch_size).astype(np.float32),
      'dbp': rng.uniform(60, 90, batch_size).astype(np.float32)}, mesh)
  return steps.make_train_step(model_config, tx, mesh, splits), state, batch


def _pretrain_step(size: str, dtype: str, mesh, batch_size: int, splits: int = 1):
  """(jitted pre-training step, state, batch) as configs/pretrain.py runs it (AdamW,
  mask ratio and loss of the config) on random windows of --channels x 1250 samples,
  each device's batch in `splits` parts."""
  rng = np.random.default_rng(0)
  config = pretrain_configs.get_config()
  model_config = ModelConfig.from_size(size, dtype=dtype, head='reconstruction')
  params = model_lib.init_params(model_config, jax.random.PRNGKey(0), _CHANNELS.value)
  tx, _ = optim.make_optimizer(config, params)
  state = jax.device_put(steps.init_state(params, tx, 0), sharding.replicated(mesh))
  batch = sharding.put_batch({
      'signals': rng.random((batch_size, _CHANNELS.value, SAMPLES), dtype=np.float32),
      'channel_mask': np.ones((batch_size, _CHANNELS.value), bool)}, mesh)
  objective = masked_patches.Objective(**config.pretrain.to_dict())
  return steps.make_pretrain_step(model_config, objective, tx, mesh, splits), state, batch


def _bench_steps(make_step, compare_torch: bool):
  """Per size: step time, windows/s, XLA's FLOPs per step and MFU of `make_step`'s step."""
  peak = matmul_peak_flops(jnp.dtype(_DTYPE.value))
  mesh = sharding.data_mesh()
  splits = steps.step_splits(_STEP_SPLITS.value, _BATCH.value, mesh)
  rows = []
  for size in _SIZES.value:
    step, state, batch = make_step(size, _DTYPE.value, mesh, _BATCH.value, splits)
    flops, _, scratch = _step_cost(step, state, batch, mesh,
                                   (make_step, size, _DTYPE.value, _BATCH.value, splits))
    carry = {'state': state}

    def jax_step():
      carry['state'], loss = step(carry['state'], batch)  # the state is donated
      return loss
    calls = {'jax': jax_step}
    if compare_torch:
      torch, module, _ = _require_torch_reference(ModelConfig.from_size(size))
      calls['torch'] = _torch_train_step(torch, module, jax.device_get(batch))
    medians = medians_in_turns(calls, _REPEATS.value, block=3)
    seconds = medians['jax']
    row = {'size': size, 'step_splits': splits, 'step_ms': seconds * 1e3,
           'windows_per_s': _BATCH.value / seconds,
           'step_gflop': flops / 1e9, 'achieved_gflops': flops / seconds / 1e9,
           'peak_matmul_gflops': peak / 1e9, 'mfu_pct': 100 * flops / seconds / peak,
           'xla_scratch_mib': scratch / 2**20}
    if compare_torch:
      torch_seconds = medians['torch']
      row.update({'torch_windows_per_s': _BATCH.value / torch_seconds,
                  'speedup_vs_torch': torch_seconds / seconds})
    rows.append(row)
  return rows


def bench_train():
  return _bench_steps(_train_step, _COMPARE_TORCH.value)


def bench_pretrain():
  return _bench_steps(_pretrain_step, compare_torch=False)


# Published dense peaks, from the vendors' data sheets: matmul FLOP/s by compute dtype and
# memory bandwidth (bytes/s). float32 is what JAX's default matmul precision runs: TF32
# tensor cores on an H100, one bfloat16 pass on a TPU.
ACCELERATORS = {
    'H100 SXM': {'float32': 494e12, 'bfloat16': 989e12, 'bytes_per_s': 3.35e12},
    'TPU v5e': {'float32': 197e12, 'bfloat16': 197e12, 'bytes_per_s': 819e9},
}


def bench_roofline():
  """An estimate, not a measurement: the train step's FLOPs and bytes accessed from XLA's
  cost analyses (_step_cost; bytes of this backend's compilation: a GPU or TPU fuses
  otherwise, and a GPU's count leaves out its cuBLAS matmuls), and the step time a roofline
  gives on each ACCELERATORS entry: max(FLOPs / peak, bytes / bandwidth)."""
  mesh = sharding.data_mesh()
  rows = []
  for size in _SIZES.value:
    for dtype in ('float32', 'bfloat16'):
      step, state, batch = _train_step(size, dtype, mesh, _BATCH.value)
      flops, moved, _ = _step_cost(step, state, batch, mesh,
                                   (_train_step, size, dtype, _BATCH.value, 1))
      row = {'size': size, 'dtype': dtype, 'gflop_per_window': flops / _BATCH.value / 1e9,
             'mb_per_window': moved / _BATCH.value / 1e6, 'flop_per_byte': flops / moved}
      for name, chip in ACCELERATORS.items():
        compute, memory = flops / chip[dtype], moved / chip['bytes_per_s']
        row[f'{name} est. step ms'] = max(compute, memory) * 1e3
        row[f'{name} bound'] = 'compute' if compute >= memory else 'memory'
      rows.append(row)
  return rows


def _torch_reference(config):
  """The PyTorch reference model of tests/torch_reference.py (the original architecture)
  with random weights, on _torch_device's device, and the same weights as Flax params;
  None without torch."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  import sys  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), 'tests'))
  import torch_reference  # pylint: disable=import-outside-toplevel
  module = torch_reference.BPModel(config.embed_dim, config.depth, config.num_heads,
                                   config.attention_type, config.drop_path_rate)
  torch_reference.randomize(module, 0)
  params, _ = convert.convert_state_dict(
      {k: v.numpy() for k, v in module.state_dict().items()}, config)
  return torch, module.to(_torch_device(torch)).eval(), params


def _torch_device(torch) -> str:
  """'cuda' when JAX runs on a GPU and PyTorch sees one, else 'cpu'. On CUDA, float32
  matmuls in TF32 (torch.set_float32_matmul_precision('high')), as JAX's default
  precision runs them on a GPU, so that both run the same arithmetic."""
  if jax.default_backend() == 'gpu' and torch.cuda.is_available():
    torch.set_float32_matmul_precision('high')
    return 'cuda'
  return 'cpu'


def _quant_jax_rows(config, params, windows, workdir):
  """JAX: float32 and the three INT8 modes (static calibrated on the --batch windows)."""
  from cerebro_jax.quant import ptq  # pylint: disable=import-outside-toplevel
  static = quantization.QuantSpec('int8_static', scheme='pytorch')
  trees = {'float32': params, 'int8_weights': quantization.quantize_params(params),
           'int8_dynamic': quantization.quantize_params(params, 'channel', 'pytorch'),
           'int8_static': calibration.static_params(
               params, calibration.layer_ranges(params, config, windows['many']), static)}
  specs = {'int8_static': static,
           'int8_dynamic': quantization.QuantSpec('int8_dynamic', scheme='pytorch')}
  rows = []
  for mode, tree in trees.items():
    forward = forward_lib.jit(config, specs.get(mode, quantization.QuantSpec(mode)))
    tree = jax.tree.map(jnp.asarray, tree)
    directory = checkpoints.save_model(os.path.join(workdir, mode), tree, config)
    rows.append({'runtime': 'jax', 'format': mode, **{
        name: median_seconds(forward, tree, x, repeats=timed_calls(len(x)))
        for name, x in windows.items()}, 'file_mib': ptq.directory_mib(directory)})
  return rows


def _quant_litert_rows(config, params, windows, workdir):
  """LiteRT files (batch 1 and --batch) as the converter writes them, XNNPACK, all cores."""
  from cerebro_jax.quant import litert  # pylint: disable=import-outside-toplevel
  rows = []
  for quant in litert.QUANTIZATIONS:
    row = {'runtime': 'litert', 'format': quant}
    for name, x in windows.items():
      path = os.path.join(workdir, f'{quant}_{name}.tflite')
      size = litert.export(params, config, path, quant, batch=len(x),
                           calibration=windows['many'])
      runner = litert.signature_runner(path, num_threads=os.cpu_count())
      row[name] = median_seconds(lambda x: runner(**{litert.INPUT: x}), x,
                                 repeats=timed_calls(len(x)))
      row['file_mib'] = size / 2**20
    rows.append(row)
  return rows


def _quant_torch_rows(torch, module, windows):
  """The PyTorch reference: float32, and quantize_dynamic as the paper ran it (the
  default engine: fbgemm on x86); state dict files as torch.save writes them."""
  import io  # pylint: disable=import-outside-toplevel
  rows = []
  for name, model in (('float32', module), ('quantize_dynamic', torch.ao.quantization.
                                            quantize_dynamic(module, {torch.nn.Linear},
                                                             dtype=torch.qint8))):
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    rows.append({'runtime': 'pytorch', 'format': name, **{
        label: median_seconds(_torch_inference(torch, model), torch.from_numpy(x),
                              repeats=timed_calls(len(x)))
        for label, x in windows.items()}, 'file_mib': buffer.getbuffer().nbytes / 2**20})
  return rows


def bench_quant():
  rng = np.random.default_rng(0)
  windows = {'one': rng.random((1, 2, SAMPLES), dtype=np.float32),
             'many': rng.random((_BATCH.value, 2, SAMPLES), dtype=np.float32)}
  rows = []
  for size in _SIZES.value:
    config = ModelConfig.from_size(size)
    reference = _torch_reference(config) if 'pytorch' in _RUNTIMES.value else None
    params = reference[2] if reference else model_lib.init_params(config,
                                                                  jax.random.PRNGKey(0))
    with tempfile.TemporaryDirectory() as workdir:
      runs = []
      if 'jax' in _RUNTIMES.value:
        runs += _quant_jax_rows(config, params, windows, workdir)
      if 'litert' in _RUNTIMES.value:
        runs += _quant_litert_rows(config, params, windows, workdir)
      if reference:
        runs += _quant_torch_rows(reference[0], reference[1], windows)
    for run in runs:
      rows.append({'size': size, 'runtime': run['runtime'], 'format': run['format'],
                   'latency_b1_ms': run['one'] * 1e3,
                   f'throughput_b{_BATCH.value}_windows_per_s': _BATCH.value / run['many'],
                   'file_mib': run['file_mib']})
  return rows


def print_table(rows):
  keys = list(rows[0])
  print('  '.join(f'{k:>16s}' for k in keys))
  for row in rows:
    print('  '.join(f'{v:>16.2f}' if isinstance(v, float) else f'{v!s:>16s}'
                    for v in row.values()))


def main(argv):
  benchmarks = {'model': bench_model, 'data': bench_data, 'quant': bench_quant,
                'train': bench_train, 'pretrain': bench_pretrain, 'pulsedb': bench_pulsedb,
                'roofline': bench_roofline}
  if len(argv) != 2 or argv[1] not in benchmarks:
    raise SystemExit(f'usage: benchmark.py {{{",".join(benchmarks)}}} [--json] [flags]')
  sharding.use_cpu_devices(_CPU_DEVICES.value)
  if argv[1] in ('train', 'pretrain'):
    sharding.use_synchronous_cpu_dispatch()  # as main.py trains
  rows = benchmarks[argv[1]]()
  header = {'benchmark': argv[1], 'device': str(jax.devices()[0]),
            'device_kind': jax.devices()[0].device_kind, 'devices': jax.device_count(),
            'processor': platform.processor() or platform.machine(),
            'cpu_count': os.cpu_count(),
            'channels': _CHANNELS.value, 'batch': _BATCH.value, 'jax': jax.__version__,
            'glibc_tunables': os.environ.get('GLIBC_TUNABLES', ''),
            'cpu_async_dispatch': jax.config.read('jax_cpu_enable_async_dispatch')}
  if _COMPARE_TORCH.value and argv[1] in ('model', 'train'):
    import torch  # pylint: disable=import-outside-toplevel  # the runs above needed it
    header['torch'] = f'{torch.__version__} on {_torch_device(torch)}'
  if _JSON.value:
    print(json.dumps({**header, 'results': rows}, indent=2))
  else:
    print(', '.join(f'{k}={v}' for k, v in header.items()))
    print_table(rows)


if __name__ == '__main__':
  cli.run(main)
