"""Fine-tuning and training from scratch: `train_and_evaluate(config, workdir)`.

Workdir layout:
  config.json          the final config of the run
  data/                the synthetic cohort, when config.data.dir is empty
  checkpoints/         orbax: the latest train state (params, optimizer, rng, step) + meta
  best/                orbax: the best parameters by validation MSE (a model directory)
  model/               the best model at the end (python -m cerebro_jax.predict takes it)
  eval/                metrics.json, metrics.md, Bland-Altman and scatter PNGs
  tensorboard/         loss, validation MSE, windows/s

Each epoch reads the training split in an order fixed by (seed, epoch, number of devices),
and the state is checkpointed at the end of each epoch, so a run restarted with the same
command resumes from the last epoch and ends with the same parameters as a run that never
stopped. With several processes (distributed.py) every process runs this function: each
feeds its own devices, orbax saves and restores with all of them, and process 0 alone
writes config.json, TensorBoard, eval/ and train_summary.json.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import tensorflow as tf
from tqdm import tqdm

from cerebro_jax import datasets, distributed, sharding
from cerebro_jax.evaluators import evaluation
from cerebro_jax.models import checkpoints, model as model_lib
from cerebro_jax.models.model_config import ModelConfig
from cerebro_jax.trainers import optim
from input_pipeline import pipeline


# Target names in the order of the model's outputs: ('dbp', 'sbp').
_TARGET_ORDER = tuple(c.removesuffix('_mmhg') for c in model_lib.OUTPUT_COLUMNS)


class TrainingDivergedError(RuntimeError):
  """The loss became NaN or Inf; the last good checkpoint is left as it was."""


def model_config_from(config, init_config: ModelConfig | None = None) -> ModelConfig:
  """The model of a run: init_from's architecture, or config.model.size's (and depth)."""
  if init_config is None:
    depth = {'depth': config.model.depth} if config.model.depth else {}
    init_config = ModelConfig.from_size(config.model.size, **depth)
  return dataclasses.replace(init_config, attention_type=config.model.attention_type,
                             dtype=config.model.dtype,
                             drop_path_rate=config.model.drop_path_rate)


def initial_params(config, train_means: dict):
  """(params, ModelConfig) at step 0, per init_from, train_mode and head_bias_init."""
  if config.init_from:
    if config.train_mode == 'scratch':
      raise ValueError('train_mode "scratch" ignores weights: leave init_from empty')
    params, loaded_config, _ = checkpoints.load_model(config.init_from)
    model_config = model_config_from(config, loaded_config)
  else:
    if config.train_mode != 'scratch':
      raise ValueError(f'train_mode "{config.train_mode}" fine-tunes pre-trained weights: '
                       'set config.init_from to a converted model directory')
    model_config = model_config_from(config)
    params = model_lib.init_params(model_config, jax.random.PRNGKey(config.seed))
  params = jax.tree.map(np.asarray, params)
  if config.head_bias_init == 'train_mean':
    params['head']['bias'] = np.array([train_means[t] for t in _TARGET_ORDER], np.float32)
  elif config.head_bias_init == 'zeros':
    params['head']['bias'] = np.zeros(2, np.float32)
  elif config.head_bias_init != 'keep':
    raise ValueError(f'head_bias_init must be train_mean, zeros or keep, got '
                     f'{config.head_bias_init!r}')
  return params, model_config


def init_state(params, tx, seed: int) -> dict:
  """The train state at step 0: {'step', 'params', 'opt_state', 'rng'} (host arrays)."""
  return {'step': jnp.zeros((), jnp.int32), 'params': params, 'opt_state': tx.init(params),
          'rng': jax.random.PRNGKey(seed)}


def make_train_step(model_config: ModelConfig, tx, mesh):
  """Jitted (state, batch) -> (state, loss); state donated, batch split over `mesh`.

  state: {'step', 'params', 'opt_state', 'rng'}; batch: 'signals' (B, 2, 1250), 'sbp',
  'dbp' (B,) mmHg. Loss: MSE over the model's two outputs against the named targets.
  """
  module = model_lib.CerebroBP(model_config)

  def step(state, batch):
    targets = jnp.stack([batch[t] for t in _TARGET_ORDER], -1)
    dropout = jax.random.fold_in(state['rng'], state['step'])

    def loss_fn(params):
      out = module.apply({'params': params}, batch['signals'], deterministic=False,
                         rngs={'dropout': dropout})
      return jnp.mean((out - targets) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(state['params'])
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    return {'step': state['step'] + 1, 'params': optax.apply_updates(state['params'], updates),
            'opt_state': opt_state, 'rng': state['rng']}, loss

  replicated = sharding.replicated(mesh)
  return jax.jit(step, in_shardings=(replicated, sharding.batch_sharded(mesh)),
                 out_shardings=(replicated, replicated), donate_argnums=(0,))


def _managers(workdir: str):
  options = lambda: ocp.CheckpointManagerOptions(max_to_keep=1, create=True)
  latest = ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'),
                                 options=options())
  best = ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'best'), options=options())
  return latest, best


def _write_scalars(writer, step: int, values: dict) -> None:
  """TensorBoard scalars; writer is None on every process but process 0."""
  if writer is None:
    return
  with writer.as_default():
    for name, value in values.items():
      tf.summary.scalar(name, value, step=step)
  writer.flush()


def train_and_evaluate(config, workdir: str,
                       on_epoch_end: Callable[[int, dict], None] | None = None) -> dict:
  """Trains per `config` (see configs/default.py), evaluates the best parameters.

  on_epoch_end(epoch, logs) is called after each epoch's checkpoint (for notebooks).
  Returns {split: metrics report} of the final evaluation.
  """
  main = distributed.is_main()
  os.makedirs(workdir, exist_ok=True)
  if main:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))
  builder = datasets.get_builder(config.data, workdir)
  datasets.check_protocol(builder, tuple(config.data.required_protocols))
  eval_splits = datasets.eval_splits(config.eval_splits, builder)
  mesh = sharding.data_mesh()
  sharding.check_batch(config.batch_size)
  shards, num_shards = sharding.local_shards(mesh)
  needed = {'train', 'validation', *eval_splits}
  absent = sorted(needed - set(builder.info.splits))
  if absent:
    raise ValueError(f'the dataset in {builder.data_dir} has no {", ".join(absent)} split '
                     f'(it has {", ".join(builder.info.splits)}); prepare it with non-zero '
                     'fractions for train, validation and the evaluated splits')
  train_size = builder.info.splits['train'].num_examples
  steps_per_epoch = train_size // config.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f'the training split has {train_size} windows, fewer than one batch '
                     f'of {config.batch_size}')
  train_means = datasets.split_means(builder)
  params, model_config = initial_params(config, train_means)
  tx, _ = optim.make_optimizer(config, params)
  state = jax.device_put(init_state(params, tx, config.seed), sharding.replicated(mesh))
  meta = {'epoch': 0, 'best_val_mse': None, 'best_epoch': None, 'epochs_without_improvement': 0}

  latest, best = _managers(workdir)
  if latest.latest_step() is not None:
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    restored = latest.restore(latest.latest_step(), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    state, meta = restored.state, restored.meta
    for step in best.all_steps():  # saved by an epoch that died before its latest save
      if step > meta['epoch']:
        best.delete(step)
    distributed.log(f'Resuming from {latest.directory} after epoch {meta["epoch"]}')

  train_step = make_train_step(model_config, tx, mesh)
  writer = tf.summary.create_file_writer(os.path.join(workdir, 'tensorboard')) if main else None
  distributed.log(
      f'Training CEReBrO {model_config.size} ({config.train_mode}) on {train_size} windows, '
      f'{steps_per_epoch} steps of {config.batch_size} per epoch, {jax.device_count()} '
      f'{jax.devices()[0].platform} device(s) in {jax.process_count()} process(es)')
  while meta['epoch'] < config.num_epochs and meta['epochs_without_improvement'] < config.patience:
    epoch = meta['epoch'] + 1
    batches = pipeline.train_batches(builder, config.batch_size, config.seed * 100_003 + epoch,
                                     shards, num_shards, shuffle_buffer=config.data.shuffle_buffer)
    losses, start = [], time.perf_counter()
    bar = tqdm(range(steps_per_epoch), desc=f'epoch {epoch}/{config.num_epochs}', unit='step',
               disable=not main)
    for i in bar:
      state, loss = train_step(state, sharding.put_batch(next(batches), mesh))
      losses.append(loss)
      if (i + 1) % config.log_every_steps == 0 or i + 1 == steps_per_epoch:
        recent = float(jnp.mean(jnp.stack(losses[-config.log_every_steps:])))
        if not np.isfinite(recent):
          raise TrainingDivergedError(
              f'the training loss became {recent} at step {int(state["step"])} (epoch '
              f'{epoch}); the last good checkpoint (epoch {meta["epoch"]}) is in '
              f'{latest.directory}. Lower config.learning_rate or set config.grad_clip_norm.')
        rate = (i + 1) * config.batch_size / (time.perf_counter() - start)
        bar.set_postfix(loss=f'{recent:.1f}', windows_per_s=f'{rate:.0f}')
        _write_scalars(writer, int(state['step']), {'train/loss_mse': recent,
                                                    'train/windows_per_s': rate})
    train_mse = float(jnp.mean(jnp.stack(losses)))
    val_mse = evaluation.mse(evaluation.predict_split(
        state['params'], model_config, builder, 'validation', config.eval_batch_size, mesh))
    improved = meta['best_val_mse'] is None or val_mse < meta['best_val_mse']
    meta = {'epoch': epoch,
            'best_val_mse': val_mse if improved else meta['best_val_mse'],
            'best_epoch': epoch if improved else meta['best_epoch'],
            'epochs_without_improvement': 0 if improved else meta['epochs_without_improvement'] + 1}
    if improved:
      best.save(epoch, args=checkpoints.model_args(state['params'], model_config,
                                                   {'epoch': epoch, 'val_mse': val_mse}))
    latest.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               meta=ocp.args.JsonSave(meta)))
    latest.wait_until_finished()
    best.wait_until_finished()
    logs = {'train_mse': train_mse, 'val_mse': val_mse, 'best_val_mse': meta['best_val_mse']}
    _write_scalars(writer, int(state['step']), {'val/mse': val_mse, 'train/epoch_mse': train_mse})
    distributed.log(f'epoch {epoch}: train MSE {train_mse:.1f}, validation MSE '
                    f'{val_mse:.1f} mmHg^2{" (best)" if improved else ""}')
    if on_epoch_end:
      on_epoch_end(epoch, logs)
  if meta['epochs_without_improvement'] >= config.patience:
    distributed.log(f'Early stopping: no improvement for {config.patience} epochs')

  best_dir = os.path.join(best.directory, str(best.latest_step()))
  params, _, _ = checkpoints.load_model(best_dir)
  distributed.log(f'Best validation MSE {meta["best_val_mse"]:.1f} at epoch '
                  f'{meta["best_epoch"]}')
  checkpoints.save_model(os.path.join(workdir, 'model'), params, model_config,
                         {'best_epoch': meta['best_epoch'], 'val_mse': meta['best_val_mse'],
                          'train_means': train_means}, overwrite=True)
  reports = evaluation.evaluate_params(
      jax.device_put(params, sharding.replicated(mesh)), model_config, builder,
      eval_splits, config.eval_batch_size, mesh, train_means,
      os.path.join(workdir, 'eval'))
  if main:
    with open(os.path.join(workdir, 'train_summary.json'), 'w') as f:
      json.dump({**meta, 'train_means': train_means, 'steps': int(state['step'])}, f, indent=2)
  return reports
