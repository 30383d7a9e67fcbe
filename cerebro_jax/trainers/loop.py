"""The epoch loop every training job shares: resume, steps, NaN guard, logs, checkpoints.

A job (fine-tuning in train.py, masked-patch pre-training in pretrain.py) supplies its
jitted step (steps.py), its batches and its validation metric (lower is better); `fit`
runs epochs with progress bars and TensorBoard scalars, checkpoints the train state after each epoch
(orbax, <workdir>/checkpoints) and the best parameters by the validation metric
(<workdir>/best, model directories), stops early after config.patience epochs without
improvement, and resumes a stopped run from its last epoch so that it ends where a run
that never stopped ends.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import tensorflow as tf
from tqdm import tqdm

from cerebro_jax import distributed, sharding
from cerebro_jax.models import checkpoints
from cerebro_jax.models.model_config import ModelConfig
from cerebro_jax.trainers import optim, steps


class TrainingDivergedError(RuntimeError):
  """The loss became NaN or Inf; the last good checkpoint is left as it was."""


@dataclasses.dataclass
class Job:
  """What differs between training jobs.

  Attributes:
    model_config: the model trained (recorded in the best checkpoints).
    make_step: parts of each device's batch (steps.step_splits) -> jitted
      (state, global batch) -> (state, scalar loss).
    batches: the epoch's data seed -> iterator of this process's host batches (numpy
      dicts); the seed depends on config.seed and the epoch only.
    steps_per_epoch: steps of each epoch.
    validate: params -> validation metric (lower is better), run on every process.
    metric: the metric's name in logs and records ('mse' -> 'best_val_mse').
    describe: one line saying what is trained on what, logged at the start.
  """

  model_config: ModelConfig
  make_step: Callable[[int], Callable]
  batches: Callable[[int], Iterator[dict]]
  steps_per_epoch: int
  validate: Callable[[dict], float]
  metric: str
  describe: str


def steps_per_epoch(train_size: int, config) -> int:
  """Steps of config.batch_size per epoch over `train_size` windows, a whole number of
  optimizer updates (config.grad_accum_steps steps each)."""
  accum = config.grad_accum_steps
  steps = train_size // config.batch_size // accum * accum
  if steps == 0:
    raise ValueError(f'the training split has {train_size} windows, fewer than one update '
                     f'of {accum} x {config.batch_size}')
  return steps


def start(config, workdir: str):
  """A job's start: creates the workdir, writes config.json (process 0), checks the batch
  against the devices. Returns (mesh, this process's data-axis positions, their count)."""
  os.makedirs(workdir, exist_ok=True)
  if distributed.is_main():
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))
  mesh = sharding.data_mesh()
  sharding.check_batch(config.batch_size)
  return (mesh, *sharding.local_shards(mesh))


def start_state(config, params, steps_per_epoch: int, mesh):
  """(optimizer, replicated train state at step 0) for `params` under `config`."""
  tx, _ = optim.make_optimizer(config, params, steps_per_epoch // config.grad_accum_steps)
  state = steps.init_state(params, tx, config.seed)
  return tx, jax.device_put(state, sharding.replicated(mesh))


def _managers(workdir: str):
  """(latest, best) CheckpointManagers of <workdir>/checkpoints and <workdir>/best.

  Both save the same epoch numbers, often at once, and orbax names its cross-process
  barriers after the step: without a prefix of their own, two processes' async saves of
  checkpoints/1 and best/1 wait on one barrier name, which fails (or hangs) at random.
  """

  def manager(name: str) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=1, create=True,
        multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name))
    return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), name), options=options)

  return manager('checkpoints'), manager('best')


def write_scalars(writer, step: int, values: dict) -> None:
  """TensorBoard scalars; writer is None on every process but process 0."""
  if writer is None:
    return
  with writer.as_default():
    for name, value in values.items():
      tf.summary.scalar(name, value, step=step)
  writer.flush()


def fit(config, workdir: str, state: dict, job: Job, mesh,
        on_epoch_end: Callable[[int, dict], None] | None = None) -> tuple[dict, dict, dict]:
  """Runs the epochs of `job` from `state` (or from the workdir's last checkpoint).

  Returns (meta, best params, final state): meta holds 'epoch', 'best_val_<metric>',
  'best_epoch' and 'epochs_without_improvement'.
  """
  main = distributed.is_main()
  splits = steps.step_splits(config.step_splits, config.batch_size, mesh)
  train_step = job.make_step(splits)
  best_key, val_key = f'best_val_{job.metric}', f'val_{job.metric}'
  meta = {'epoch': 0, best_key: None, 'best_epoch': None, 'epochs_without_improvement': 0}
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

  writer = tf.summary.create_file_writer(os.path.join(workdir, 'tensorboard')) if main else None
  distributed.log(f'{job.describe} ({splits} part(s) a step per device), '
                  f'{job.steps_per_epoch} steps of {config.batch_size} per epoch, '
                  f'{jax.device_count()} {jax.devices()[0].platform} device(s) in '
                  f'{jax.process_count()} process(es)')
  while meta['epoch'] < config.num_epochs and meta['epochs_without_improvement'] < config.patience:
    epoch = meta['epoch'] + 1
    batches = job.batches(config.seed * 100_003 + epoch)
    losses, start = [], time.perf_counter()
    bar = tqdm(range(job.steps_per_epoch), desc=f'epoch {epoch}/{config.num_epochs}',
               unit='step', disable=not main)
    for i in bar:
      state, loss = train_step(state, sharding.put_batch(next(batches), mesh))
      losses.append(loss)
      if (i + 1) % config.log_every_steps == 0 or i + 1 == job.steps_per_epoch:
        recent = float(jnp.mean(jnp.stack(losses[-config.log_every_steps:])))
        if not np.isfinite(recent):
          raise TrainingDivergedError(
              f'the training loss became {recent} at step {int(state["step"])} (epoch '
              f'{epoch}); the last good checkpoint (epoch {meta["epoch"]}) is in '
              f'{latest.directory}. Lower config.learning_rate or set config.grad_clip_norm.')
        rate = (i + 1) * config.batch_size / (time.perf_counter() - start)
        bar.set_postfix(loss=f'{recent:.4g}', windows_per_s=f'{rate:.0f}')
        write_scalars(writer, int(state['step']), {f'train/loss_{job.metric}': recent,
                                                   'train/windows_per_s': rate})
    train_loss = float(jnp.mean(jnp.stack(losses)))
    val = job.validate(state['params'])
    improved = meta[best_key] is None or val < meta[best_key]
    meta = {'epoch': epoch,
            best_key: val if improved else meta[best_key],
            'best_epoch': epoch if improved else meta['best_epoch'],
            'epochs_without_improvement': 0 if improved else meta['epochs_without_improvement'] + 1}
    if improved:
      best.save(epoch, args=checkpoints.model_args(state['params'], job.model_config,
                                                   {'epoch': epoch, val_key: val}))
    latest.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               meta=ocp.args.JsonSave(meta)))
    latest.wait_until_finished()
    best.wait_until_finished()
    logs = {f'train_{job.metric}': train_loss, val_key: val, best_key: meta[best_key]}
    write_scalars(writer, int(state['step']), {f'val/{job.metric}': val,
                                               f'train/epoch_{job.metric}': train_loss})
    distributed.log(f'epoch {epoch}: train {job.metric} {train_loss:.4g}, validation '
                    f'{job.metric} {val:.4g}{" (best)" if improved else ""}')
    if on_epoch_end:
      on_epoch_end(epoch, logs)
  if meta['epochs_without_improvement'] >= config.patience:
    distributed.log(f'Early stopping: no improvement for {config.patience} epochs')
  params, _, _ = checkpoints.load_model(os.path.join(best.directory, str(best.latest_step())))
  distributed.log(f'Best validation {job.metric} {meta[best_key]:.4g} at epoch '
                  f'{meta["best_epoch"]}')
  return meta, params, state
