"""Training: the step, sharding, frozen parameters, resuming, divergence, configs."""

import dataclasses
import os
import pathlib
import platform
import re
import shutil
import statistics
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import traverse_util

from cerebro_jax import sharding
from cerebro_jax.evaluators import evaluation
from cerebro_jax.models import checkpoints, model as model_lib
from cerebro_jax.models.model_config import ModelConfig
from cerebro_jax.trainers import loop, optim, steps, train
from configs import accelerator, default, paper
from conftest import REPO_ROOT

TINY = ModelConfig(embed_dim=48, depth=2, num_heads=4, drop_path_rate=0.2)


def tiny_config(**overrides) -> ml_collections.ConfigDict:
  config = default.get_config()
  config.model.size, config.model.depth = 'small', 1
  config.data.num_subjects, config.data.minutes_per_subject = 6, 1.0
  config.batch_size, config.eval_batch_size = 8, 16
  config.num_epochs, config.log_every_steps = 3, 2
  config.update(overrides)
  return config


def batch(n=8, seed=0):
  rng = np.random.default_rng(seed)
  return {'signals': rng.random((n, 2, 1250), dtype=np.float32),
          'sbp': rng.uniform(100, 160, n).astype(np.float32),
          'dbp': rng.uniform(60, 90, n).astype(np.float32)}


def start_state(config, model_config=TINY):
  params = model_lib.init_params(model_config, jax.random.PRNGKey(0))
  params['head']['bias'] = np.array([75.0, 130.0], np.float32)
  tx, labels = optim.make_optimizer(config, params)
  return steps.init_state(params, tx, 1), tx, labels


def test_first_step_equals_an_independent_computation():
  """Loss = MSE of the model's outputs against [DBP, SBP]; Adam's first step moves every
  parameter by lr * g / (|g| + eps), with g the gradient computed separately."""
  config = tiny_config()
  state, tx, _ = start_state(config)
  params0 = jax.tree.map(np.array, state['params'])
  data = batch()
  mesh = sharding.data_mesh()
  new_state, loss = steps.make_train_step(TINY, tx, mesh)(
      jax.device_put(state, sharding.replicated(mesh)), sharding.put_batch(data, mesh))

  module = model_lib.CerebroBP(TINY)
  rngs = {'dropout': jax.random.fold_in(jax.random.PRNGKey(1), 0)}
  targets = np.stack([data['dbp'], data['sbp']], axis=1)
  expected_loss_fn = lambda p: jnp.mean((module.apply(
      {'params': p}, data['signals'], deterministic=False, rngs=rngs) - targets) ** 2)
  expected_loss, grads = jax.jit(jax.value_and_grad(expected_loss_fn))(params0)
  assert float(loss) == pytest.approx(float(expected_loss), rel=1e-6)
  assert float(loss) > 100  # random outputs are far from the targets
  expected = jax.tree.map(lambda p, g: p - config.learning_rate * g / (np.abs(g) + 1e-8),
                          params0, grads)
  got = jax.device_get(new_state['params'])
  # The key bias (qkv bias [D:2D]) has a zero gradient in exact arithmetic (softmax
  # ignores a constant added to every key); Adam's first step turns its round-off into
  # +-lr, so only the rest of qkv bias is compared exactly. Elsewhere too, a non-zero
  # gradient under 100 eps (a few entries in 10,000, where a branch's gradients cancel)
  # is round-off that Adam's g / (|g| + eps) turns into a different step: it is only held
  # to lr. Every other entry is compared exactly (the tables' unused rows, gradient 0,
  # must not move).
  dim, lr = TINY.embed_dim, config.learning_rate
  flat = lambda tree: {name: np.asarray(value) for name, value in
                       traverse_util.flatten_dict(tree, sep='/').items()}
  got, expected, start = flat(got), flat(expected), flat(params0)
  tiny_count = 0
  for name, g in flat(grads).items():
    arrays = (got[name], expected[name], start[name], g)
    if name.endswith('attn/qkv/bias'):
      assert np.abs(g[dim:2 * dim]).max() < 1e-4 * np.abs(g[:dim]).max()
      arrays = tuple(np.delete(a, np.s_[dim:2 * dim]) for a in arrays)
    have, want, before, g = arrays
    tiny = (np.abs(g) < 1e-6) & (g != 0)
    tiny_count += tiny.sum()
    np.testing.assert_allclose(have[~tiny], want[~tiny], rtol=1e-5, atol=1e-7, err_msg=name)
    assert np.all(np.abs(have[tiny] - before[tiny]) <= lr * (1 + 1e-5))
  assert tiny_count < 1e-3 * sum(g.size for g in jax.tree.leaves(grads))
  assert int(new_state['step']) == 1


def test_gradient_accumulation_averages_micro_batches():
  """Two micro-batches of 4 with grad_accum_steps=2 make one update whose gradient (Adam's
  first moment) is the gradient of the batch of 8; nothing moves after the first."""
  model_config = dataclasses.replace(TINY, depth=1, drop_path_rate=0.0)
  data = batch()
  halves = [{k: v[:4] for k, v in data.items()}, {k: v[4:] for k, v in data.items()}]
  mesh = sharding.data_mesh()
  moments = {}
  for accum, batches in ((1, [data]), (2, halves)):
    config = tiny_config(grad_accum_steps=accum)
    state, tx, _ = start_state(config, model_config)
    params0 = jax.tree.map(np.array, state['params'])
    step = steps.make_train_step(model_config, tx, mesh)
    state = jax.device_put(state, sharding.replicated(mesh))
    for i, part in enumerate(batches):
      state, _ = step(state, sharding.put_batch(part, mesh))
      if i + 1 < accum:
        jax.tree.map(np.testing.assert_array_equal, jax.device_get(state['params']), params0)
    moments[accum] = jax.device_get(optax.tree_utils.tree_get(state['opt_state'], 'mu'))
  # Float round-off of the two sums, bounded by the tensor's scale (entries near zero
  # have no relative precision).
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                       atol=1e-6 * np.abs(b).max()),
               moments[2], moments[1])


def test_split_step_equals_the_whole_batch_step():
  """A step whose batch of 8 is computed as 2 or 4 independent parts gives the whole
  batch's loss and update (no drop path, whose draws are per part)."""
  model_config = dataclasses.replace(TINY, depth=1, drop_path_rate=0.0)
  data = batch()
  mesh = sharding.data_mesh()
  results = {}
  for splits in (1, 2, 4):
    state, tx, _ = start_state(tiny_config(), model_config)
    step = steps.make_train_step(model_config, tx, mesh, splits)
    state, loss = step(jax.device_put(state, sharding.replicated(mesh)),
                       sharding.put_batch(data, mesh))
    results[splits] = float(loss), jax.device_get(optax.tree_utils.tree_get(
        state['opt_state'], 'mu'))
  for splits in (2, 4):
    assert results[splits][0] == pytest.approx(results[1][0], rel=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7),
                 results[splits][1], results[1][1])


def test_step_splits_choice(monkeypatch):
  mesh = sharding.data_mesh()  # one CPU device
  monkeypatch.setattr(sharding, 'cpu_threads_per_device', lambda: 4)
  # Automatic: the threads, fewer when parts would hold under 8 windows or not divide.
  assert [steps.step_splits(0, b, mesh) for b in (64, 32, 30, 24, 16, 12, 8)] == [
      4, 4, 3, 3, 2, 1, 1]
  assert steps.step_splits(3, 33, mesh) == 3  # as asked
  with pytest.raises(ValueError, match='step_splits 3 does not divide the batch of 32'):
    steps.step_splits(3, 32, mesh)
  with pytest.raises(ValueError, match='must be >= 0'):
    steps.step_splits(-1, 32, mesh)
  monkeypatch.undo()  # the real cpu_threads_per_device, which reads PJRT_NPROC
  monkeypatch.setenv('PJRT_NPROC', '6')
  assert sharding.cpu_threads_per_device() == 6 // jax.local_device_count()


def _ynn_fusions_with_matmuls(compiled_text: str) -> tuple[int, int]:
  """(YNNPACK fusions, those of them holding a dot) in a compiled program's HLO text."""
  bodies = {m.group(1): m.group(2) for m in re.finditer(
      r'^%?([\w.]+) [^\n]*\{\n(.*?)\n\}', compiled_text, re.S | re.M)}
  called = re.findall(r'calls=%([\w.]+), [^\n]*"__ynn_fusion"', compiled_text)
  return len(called), sum(' dot(' in bodies[name] for name in called)


def test_cpu_steps_multiply_on_eigen_one_thread_per_part(monkeypatch):
  monkeypatch.setattr(sharding, 'cpu_threads_per_device', lambda: 2)
  one_thread = {**steps.CPU_OPTIONS, **sharding.ONE_THREAD_MATMULS}
  assert steps.compiler_options(1) == steps.CPU_OPTIONS  # both threads share each matmul
  assert steps.compiler_options(2) == steps.compiler_options(4) == one_thread
  model_config = dataclasses.replace(TINY, depth=1)
  state, tx, _ = start_state(tiny_config(), model_config)
  mesh = sharding.data_mesh()
  args = (jax.device_put(state, sharding.replicated(mesh)), sharding.put_batch(batch(), mesh))
  lowered = steps.make_train_step(model_config, tx, mesh, 2).lower(*args)
  fusions, with_matmuls = _ynn_fusions_with_matmuls(lowered.compile().as_text())
  assert fusions > 0 and with_matmuls == 0  # YNNPACK reduces, Eigen multiplies
  assert _ynn_fusions_with_matmuls(jax.jit(lambda a, b: a @ b).lower(
      jnp.ones((64, 48)), jnp.ones((48, 96))).compile().as_text())[1] == 1  # XLA's default


def test_warmup_cosine_schedule():
  config = tiny_config(schedule='warmup_cosine', learning_rate=1e-3, min_learning_rate=1e-6,
                       warmup_epochs=2, num_epochs=10)
  rate = optim.learning_rate(config, updates_per_epoch=5)
  assert float(rate(0)) == pytest.approx(1e-6, rel=1e-4)  # float32
  assert float(rate(5)) == pytest.approx((1e-3 + 1e-6) / 2, rel=1e-3)  # half-way up
  assert float(rate(10)) == pytest.approx(1e-3)
  assert float(rate(30)) == pytest.approx(1e-6 + (1e-3 - 1e-6) / 2, rel=1e-3)  # half-way down
  assert float(rate(50)) == pytest.approx(1e-6, rel=1e-3)
  assert optim.learning_rate(tiny_config(), 5) == tiny_config().learning_rate
  with pytest.raises(ValueError, match='schedule must be'):
    optim.learning_rate(tiny_config(schedule='linear'), 5)


def test_four_devices_equal_one_device():
  script = (REPO_ROOT / 'tests' / 'sharded_step_check.py')
  env = {**os.environ, 'JAX_NUM_CPU_DEVICES': '4', 'JAX_PLATFORMS': 'cpu'}
  result = subprocess.run([sys.executable, str(script)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  for head in ('bp', 'reconstruction', 'bp in 2 parts'):
    assert f'{head}: devices=4' in result.stdout, result.stdout


_SCRATCH_FAULTS = '''
import resource, sys, jax, jax.numpy as jnp
from cerebro_jax import sharding
if sys.argv[1] == 'sync':
  sharding.use_synchronous_cpu_dispatch()
step = jax.jit(lambda x: jnp.concatenate([x, x * 2]).T.sum(0))  # 128 MiB of scratch a call
x = jnp.ones((4096, 4096), jnp.float32)
for _ in range(3):
  jax.block_until_ready(step(x))
for _ in range(10):  # page faults of each call
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  jax.block_until_ready(step(x))
  print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
'''


def _setup_glibc_tunables() -> str:
  script = (REPO_ROOT / 'scripts' / 'setup_venv.sh').read_text()
  return script.split('GLIBC_TUNABLES="${GLIBC_TUNABLES-', 1)[1].split('}"', 1)[0]


def test_synchronous_dispatch_reuses_scratch_memory_without_page_faults():
  """With setup_venv.sh's GLIBC_TUNABLES, a step dispatched on the main thread takes its
  scratch memory from malloc's heap again; dispatched on a worker thread it page-faults
  fresh pages at every call (what main.py's synchronous dispatch avoids)."""
  thp = pathlib.Path('/sys/kernel/mm/transparent_hugepage/enabled')
  if platform.libc_ver()[0] != 'glibc' or not thp.exists() or '[never]' in thp.read_text():
    pytest.skip('needs glibc and transparent huge pages (Linux)')
  env = {**os.environ, 'GLIBC_TUNABLES': _setup_glibc_tunables(), 'JAX_PLATFORMS': 'cpu'}
  faults = {}
  for mode in ('sync', 'async'):
    result = subprocess.run([sys.executable, '-c', _SCRATCH_FAULTS, mode], cwd=REPO_ROOT,
                            env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    faults[mode] = [int(n) for n in result.stdout.split()[-10:]]
  # 128 MiB in 2-MiB pages: 64 faults a call. After the warm-up the heap may still grow
  # by a block at a call or two (when a call's buffers are freed later than the next
  # call allocates; seen at calls 1-2, 3 or 6), so: most calls fault-free.
  assert statistics.median(faults['sync']) <= 8, faults
  assert all(n >= 32 for n in faults['async']), faults
  jax.devices()  # this process's backends are running: too late
  with pytest.raises(RuntimeError, match='before anything touches a JAX device'):
    sharding.use_synchronous_cpu_dispatch()


def test_frozen_parameters_do_not_move_and_carry_no_state():
  config = tiny_config(train_mode='frozen')
  state, tx, labels = start_state(config)
  params0 = traverse_util.flatten_dict(jax.tree.map(np.array, state['params']), sep='/')
  mesh = sharding.data_mesh()
  step = steps.make_train_step(TINY, tx, mesh)
  state = jax.device_put(state, sharding.replicated(mesh))
  for seed in range(3):
    state, _ = step(state, sharding.put_batch(batch(seed=seed), mesh))
  after = traverse_util.flatten_dict(jax.device_get(state['params']), sep='/')
  flat_labels = traverse_util.flatten_dict(labels, sep='/')
  trainable = sorted(k for k, v in flat_labels.items() if v == 'trainable')
  assert trainable == ['encoder/patch_embed/bias', 'encoder/patch_embed/kernel', 'head/bias',
                       'head/kernel']
  for path, value in after.items():
    if flat_labels[path] == 'frozen':
      np.testing.assert_array_equal(value, params0[path], err_msg=path)
    else:
      assert np.abs(value - params0[path]).max() > 0, path
  state_size = sum(x.size for x in jax.tree.leaves(state['opt_state']))
  trainable_size = sum(params0[k].size for k in trainable)
  assert state_size == 2 * trainable_size + 1  # Adam's mu and nu, and one step count


def test_weight_decay_never_touches_frozen_parameters():
  """With zero gradients, AdamW moves trainable parameters by weight decay only; frozen
  parameters get no update at all."""
  config = tiny_config(train_mode='frozen', weight_decay=0.5)
  state, tx, labels = start_state(config)
  zero_grads = jax.tree.map(jnp.zeros_like, state['params'])
  updates, _ = tx.update(zero_grads, state['opt_state'], state['params'])
  flat_updates = traverse_util.flatten_dict(updates, sep='/')
  for path, label in traverse_util.flatten_dict(labels, sep='/').items():
    moved = np.abs(np.asarray(flat_updates[path])).max() > 0
    if label == 'frozen':
      assert not moved, path
    elif path.endswith('kernel'):
      assert moved, path


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('run') / 'a'
  reports = train.train_and_evaluate(tiny_config(), str(workdir))
  return workdir, reports


class _Stop(Exception):
  pass


def test_resume_reaches_the_same_parameters(uninterrupted, tmp_path):
  workdir_a, _ = uninterrupted
  workdir_b = tmp_path / 'b'

  def stop_after_first(epoch, logs):
    if epoch == 1:
      raise _Stop

  with pytest.raises(_Stop):
    train.train_and_evaluate(tiny_config(), str(workdir_b), on_epoch_end=stop_after_first)
  assert not (workdir_b / 'model').exists()
  # As if the run had died after an epoch's best save but before its latest save: a best
  # step past the resume point, here other parameters (from another seed), must not
  # survive the restart.
  other = tmp_path / 'other'
  train.train_and_evaluate(tiny_config(num_epochs=1, seed=1), str(other))
  shutil.copytree(other / 'best' / '1', workdir_b / 'best' / '3')
  train.train_and_evaluate(tiny_config(), str(workdir_b))
  params_a, _, meta_a = checkpoints.load_model(workdir_a / 'model')
  params_b, _, meta_b = checkpoints.load_model(workdir_b / 'model')
  jax.tree.map(np.testing.assert_array_equal, params_a, params_b)
  assert meta_a == meta_b


def test_training_outputs_and_evaluation_cover_each_window_once(uninterrupted):
  workdir, reports = uninterrupted
  for name in ('config.json', 'train_summary.json', 'eval/metrics.json', 'eval/metrics.md',
               'eval/bland_altman_test_sbp.png', 'eval/scatter_validation_dbp.png'):
    assert (workdir / name).is_file(), name
  assert list((workdir / 'tensorboard').iterdir())
  from cerebro_jax import datasets  # pylint: disable=import-outside-toplevel
  builder = datasets.get_builder(tiny_config().data, str(workdir))
  for split in ('validation', 'test'):
    assert reports[split]['sbp']['n'] == builder.info.splits[split].num_examples
  again = evaluation.evaluate(tiny_config(), str(workdir))
  assert again['test']['sbp']['mae'] == pytest.approx(reports['test']['sbp']['mae'], rel=1e-5)


def test_a_diverging_run_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  workdir = tmp_path / 'run'
  train.train_and_evaluate(tiny_config(num_epochs=1), str(workdir))
  saved = sorted(p.name for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())
  assert saved == ['1']
  before = (workdir / 'checkpoints' / '1').stat().st_mtime_ns
  with pytest.raises(loop.TrainingDivergedError, match=r'became (nan|inf).*epoch 2.*epoch 1'):
    train.train_and_evaluate(tiny_config(num_epochs=2, learning_rate=1e30), str(workdir))
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit()) == ['1']
  assert (workdir / 'checkpoints' / '1').stat().st_mtime_ns == before


def test_a_dataset_without_a_validation_split_is_refused(tmp_path):
  config = tiny_config()
  config.data.fractions = (0.9, 0.0, 0.1)
  with pytest.raises(ValueError, match='has no validation split'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))


def test_configs():
  config = paper.get_config('vitaldb,base,frozen')
  assert (config.data.source, config.model.size, config.train_mode) == ('vitaldb', 'base',
                                                                        'frozen')
  assert (config.learning_rate, config.batch_size, config.num_epochs, config.patience) == (
      1e-4, 1024, 1000, 50)
  assert config.weight_decay == 0 and config.grad_clip_norm == 0
  with pytest.raises(ValueError, match='DATASET,SIZE,MODE'):
    paper.get_config('mimic3,huge,frozen')
  assert accelerator.get_config('mimic3,large,unfrozen').model.dtype == 'bfloat16'
  with pytest.raises(ValueError, match='set config.init_from'):
    train.initial_params(paper.get_config('mimic3,small,unfrozen'), {'sbp': 1, 'dbp': 1})
  with pytest.raises(ValueError, match='no parameter matches'):
    optim.make_optimizer(tiny_config(train_mode='frozen', trainable_patterns=('nothing/*',)),
                         model_lib.init_params(TINY, jax.random.PRNGKey(0)))


def test_paper_recipe_runs_on_prepared_real_data(real_data, tmp_path):
  """configs/paper.py on a MIMIC-style dataset prepared from the real recording, frozen
  fine-tuning from a model directory; only the sizes are shrunk to fit 44 windows."""
  from input_pipeline import prepare, tfds_builders  # pylint: disable=import-outside-toplevel
  options = prepare.PrepareOptions(source='mimic3', input_dir=str(real_data),
                                   protocol='random')
  summary, _ = tfds_builders.prepare_dataset(options, str(tmp_path / 'data'), progress=False)
  model_config = ModelConfig.from_size('small', depth=2)
  checkpoints.save_model(tmp_path / 'pretrained', model_lib.init_params(
      model_config, jax.random.PRNGKey(0)), model_config)
  config = paper.get_config('mimic3,small,frozen')
  config.data.dir = str(tmp_path / 'data')
  config.init_from = str(tmp_path / 'pretrained')
  config.batch_size, config.eval_batch_size, config.num_epochs = 8, 8, 2
  reports = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert reports['test']['sbp']['n'] == summary['splits']['test']['windows'] > 0
  assert reports['validation']['dbp']['n'] == summary['splits']['validation']['windows'] > 0
  _, trained_config, _ = checkpoints.load_model(tmp_path / 'run' / 'model')
  assert trained_config.depth == 2 and trained_config.drop_path_rate == 0.2
