"""Fine-tuning and training from scratch: `train_and_evaluate(config, workdir)`.

Training runs in loop.fit (shared with pre-training). Workdir layout:
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
from typing import Callable

import jax
import numpy as np

from cerebro_jax import datasets, distributed, sharding
from cerebro_jax.evaluators import evaluation
from cerebro_jax.models import checkpoints, model as model_lib
from cerebro_jax.models.model_config import ModelConfig
from cerebro_jax.trainers import loop, steps
from input_pipeline import pipeline


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
    model_config = model_config_from(config, dataclasses.replace(loaded_config, head='bp'))
    if loaded_config.head == 'reconstruction':
      params = model_lib.with_fresh_head(params, model_config, jax.random.PRNGKey(config.seed))
      distributed.log(f'{config.init_from} is a pre-trained model: its pre-training decoder '
                      '(decoder_pred) is dropped and the BP head initialised fresh '
                      f'(seed {config.seed})')
  else:
    if config.train_mode != 'scratch':
      raise ValueError(f'train_mode "{config.train_mode}" fine-tunes pre-trained weights: '
                       'set config.init_from to a converted model directory')
    model_config = model_config_from(config)
    params = model_lib.init_params(model_config, jax.random.PRNGKey(config.seed))
  params = jax.tree.map(np.asarray, params)
  if config.head_bias_init == 'train_mean':
    params['head']['bias'] = np.array([train_means[t] for t in steps.TARGET_ORDER], np.float32)
  elif config.head_bias_init == 'zeros':
    params['head']['bias'] = np.zeros(2, np.float32)
  elif config.head_bias_init != 'keep':
    raise ValueError(f'head_bias_init must be train_mean, zeros or keep, got '
                     f'{config.head_bias_init!r}')
  return params, model_config


def train_and_evaluate(config, workdir: str,
                       on_epoch_end: Callable[[int, dict], None] | None = None) -> dict:
  """Trains per `config` (see configs/default.py), evaluates the best parameters.

  on_epoch_end(epoch, logs) is called after each epoch's checkpoint (for notebooks).
  Returns {split: metrics report} of the final evaluation.
  """
  mesh, shards, num_shards = loop.start(config, workdir)
  builder = datasets.get_builder(config.data, workdir)
  datasets.check_protocol(builder, tuple(config.data.required_protocols))
  eval_splits = datasets.eval_splits(config.eval_splits, builder)
  needed = {'train', 'validation', *eval_splits}
  absent = sorted(needed - set(builder.info.splits))
  if absent:
    raise ValueError(f'the dataset in {builder.data_dir} has no {", ".join(absent)} split '
                     f'(it has {", ".join(builder.info.splits)}); prepare it with non-zero '
                     'fractions for train, validation and the evaluated splits')
  train_size = builder.info.splits['train'].num_examples
  steps_per_epoch = loop.steps_per_epoch(train_size, config)
  train_means = datasets.split_means(builder)
  params, model_config = initial_params(config, train_means)
  tx, state = loop.start_state(config, params, steps_per_epoch, mesh)

  job = loop.Job(
      model_config=model_config,
      make_step=lambda splits: steps.make_train_step(model_config, tx, mesh, splits),
      batches=lambda seed: pipeline.train_batches(
          builder, config.batch_size, seed, shards, num_shards,
          shuffle_buffer=config.data.shuffle_buffer, cache=config.data.cache),
      steps_per_epoch=steps_per_epoch,
      validate=lambda p: evaluation.mse(evaluation.predict_split(
          p, model_config, builder, 'validation', config.eval_batch_size, mesh)),
      metric='mse',
      describe=f'Training CEReBrO {model_config.size} ({config.train_mode}) on {train_size} '
               'windows')
  meta, params, state = loop.fit(config, workdir, state, job, mesh, on_epoch_end)
  checkpoints.save_model(os.path.join(workdir, 'model'), params, model_config,
                         {'best_epoch': meta['best_epoch'], 'val_mse': meta['best_val_mse'],
                          'train_means': train_means}, overwrite=True)
  reports = evaluation.evaluate_params(
      jax.device_put(params, sharding.replicated(mesh)), model_config, builder,
      eval_splits, config.eval_batch_size, mesh, train_means,
      os.path.join(workdir, 'eval'))
  if distributed.is_main():
    with open(os.path.join(workdir, 'train_summary.json'), 'w') as f:
      json.dump({**meta, 'train_means': train_means, 'steps': int(state['step'])}, f, indent=2)
  return reports
