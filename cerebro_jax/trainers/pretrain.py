"""Masked-patch pre-training of CEReBrO: `pretrain_and_evaluate(config, workdir)`.

The objective (masked_patches.py, ../shared/spec/pretraining.md): per window a random
config.pretrain.mask_ratio of the real tokens is replaced by the mask token, the encoder
and a linear decoder reconstruct every patch, and the loss is the mean over masked
patches plus config.pretrain.alpha x the mean over visible ones. The epoch loop,
checkpoints, resume, NaN guard and logs are loop.fit's, as for fine-tuning.

Workdir layout (as train.py's where the same):
  config.json, checkpoints/, best/, tensorboard/
  data/                    the synthetic cohort, when no data is given
  model/                   the best pre-trained model (encoder + decoder_pred, a model
                           directory: fine-tune it with config.init_from, export it with
                           scripts/export_weights.py)
  eval/pretrain_metrics.{json,md}
                           held-out reconstruction loss against predicting zeros and the
                           training windows' mean patch, on the same masks
  pretrain_summary.json
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Callable

import jax
import numpy as np

from cerebro_jax import distributed, sharding
from cerebro_jax.models import checkpoints, model as model_lib
from cerebro_jax.trainers import loop, masked_patches, pretrain_data, steps, train

# Windows of the training split averaged into the 'mean_patch' baseline.
_MEAN_PATCH_WINDOWS = 2048


def initial_params(config, channels: int, samples: int):
  """(params, ModelConfig) of the pre-training model at step 0: fresh, or config.init_from
  (a pre-trained directory as it is; a BP model's encoder with a fresh decoder)."""
  if config.init_from:
    if config.train_mode == 'scratch':
      raise ValueError('train_mode "scratch" ignores weights: leave init_from empty, or set '
                       'train_mode "unfrozen" to pre-train further from init_from')
    params, loaded, _ = checkpoints.load_model(config.init_from)
    model_config = train.model_config_from(config, dataclasses.replace(loaded,
                                                                       head='reconstruction'))
    if loaded.head == 'bp':
      params = model_lib.with_fresh_head(params, model_config, jax.random.PRNGKey(config.seed),
                                         channels, samples)
  else:
    model_config = dataclasses.replace(train.model_config_from(config), head='reconstruction')
    params = model_lib.init_params(model_config, jax.random.PRNGKey(config.seed), channels,
                                   samples)
  return jax.tree.map(np.asarray, params), model_config


@functools.lru_cache(maxsize=8)
def _eval_terms_fn(model_config, objective, mesh):
  """Jitted (params, batch, key, mean_patch) -> {predictor: loss_terms} for the model and
  the baselines, on the same token masks."""
  module = model_lib.CerebroPretrain(model_config)

  def terms(params, batch, key, mean_patch):
    token_mask, target = steps.masks_and_targets(model_config, objective, batch, key)
    predictions = masked_patches.baseline_predictions(target, mean_patch)
    predictions['model'] = module.apply({'params': params}, batch['signals'],
                                        batch['channel_mask'], token_mask)
    return {name: masked_patches.loss_terms(
        masked_patches.patch_losses(p, target, objective.loss), token_mask,
        batch['channel_mask']) for name, p in predictions.items()}

  replicated = sharding.replicated(mesh)
  return jax.jit(terms, in_shardings=(replicated, sharding.batch_sharded(mesh), replicated,
                                      replicated), out_shardings=replicated)


def held_out_losses(params, model_config, objective, data, split: str, batch_size: int,
                    mesh, mean_patch: np.ndarray, seed: int) -> dict:
  """{predictor: {'loss', 'masked', 'visible'}} over every window of `split`, for 'model',
  'zeros' and 'mean_patch'. The token masks are drawn from `seed` and the batch index:
  the same windows get the same masks on every call."""
  sharding.check_batch(batch_size, 'eval_batch_size')
  fn = _eval_terms_fn(model_config, objective, mesh)
  totals = {}
  for index, batch in enumerate(data.eval_batches(split, batch_size)):
    key = jax.random.fold_in(jax.random.PRNGKey(seed), index)
    out = jax.device_get(fn(params, sharding.put_batch(batch, mesh), key, mean_patch))
    for name, terms in out.items():
      into = totals.setdefault(name, dict.fromkeys(terms, 0.0))
      for k, v in terms.items():
        into[k] += float(v)
  return {name: {k: float(v) for k, v in masked_patches.combine(t, objective.alpha).items()}
          for name, t in totals.items()}


def mean_patch(data, patch_size: int) -> np.ndarray:
  """(C, patch_size): the average patch of each channel over training windows spread
  across the split (padded channels excluded; zeros for a channel never real)."""
  signals, channel_mask = data.sample(_MEAN_PATCH_WINDOWS)
  patches = np.asarray(masked_patches.patch_targets(signals, patch_size), np.float64)
  weight = channel_mask[:, :, None, None].astype(np.float64)
  total = (patches * weight).sum(axis=(0, 2))
  count = weight.sum(axis=(0, 2)) * patches.shape[2]
  return (total / np.maximum(count, 1.0)).astype(np.float32)


def metrics_markdown(results: dict, loss: str) -> str:
  lines = [f'| split | predictor | loss ({loss}, masked + alpha x visible) | masked | visible |',
           '|---|---|---|---|---|']
  for split, rows in results.items():
    for name in ('model', 'mean_patch', 'zeros'):
      r = rows[name]
      lines.append(f'| {split} | {name} | {r["loss"]:.5f} | {r["masked"]:.5f} | '
                   f'{r["visible"]:.5f} |')
  return '\n'.join(lines) + '\n'


def pretrain_and_evaluate(config, workdir: str,
                          on_epoch_end: Callable[[int, dict], None] | None = None) -> dict:
  """Pre-trains per `config` (configs/pretrain.py), then measures the best model's
  held-out reconstruction against the baselines. Returns {split: {predictor: losses}}."""
  mesh, shards, num_shards = loop.start(config, workdir)
  pre = masked_patches.Objective(**config.pretrain.to_dict())
  data = pretrain_data.from_config(config.data, workdir)
  if not data.held_out:
    raise ValueError(f'{data.describe}: no held-out windows; set a validation fraction')
  steps_per_epoch = loop.steps_per_epoch(data.train_size, config)
  params, model_config = initial_params(config, *data.shape())
  tx, state = loop.start_state(config, params, steps_per_epoch, mesh)
  baseline_patch = mean_patch(data, model_config.patch_size)
  # Masks of held-out windows: fixed for the whole run, apart from the training masks.
  eval_seed = config.seed + 1_000_003
  evaluate = lambda p, split: held_out_losses(p, model_config, pre, data, split,
                                              config.eval_batch_size, mesh, baseline_patch,
                                              eval_seed)
  job = loop.Job(
      model_config=model_config,
      make_step=lambda splits: steps.make_pretrain_step(model_config, pre, tx, mesh, splits),
      batches=lambda seed: data.train_batches(config.batch_size, seed, shards, num_shards,
                                              config.data.shuffle_buffer),
      steps_per_epoch=steps_per_epoch,
      validate=lambda p: evaluate(p, data.held_out[0])['model']['loss'],
      metric='loss',
      describe=f'Pre-training CEReBrO {model_config.size} (mask ratio {pre.mask_ratio}, '
               f'{pre.loss}, alpha {pre.alpha}) on {data.describe}')
  meta, params, state = loop.fit(config, workdir, state, job, mesh, on_epoch_end)

  channels, samples = data.shape()
  input_description = {'channels': channels, 'samples': samples,
                       **({k: config.data[k] for k in ('recordings', 'channels',
                                                       'sample_rate_hz', 'window_seconds',
                                                       'normalisation')}
                          if config.data.recordings else {'dataset': data.describe})}
  checkpoints.save_model(
      os.path.join(workdir, 'model'), params, model_config,
      {'objective': 'masked_patches', 'mask_ratio': pre.mask_ratio, 'alpha': pre.alpha,
       'loss': pre.loss, 'input': input_description, 'best_epoch': meta['best_epoch'],
       'val_loss': meta['best_val_loss']}, overwrite=True)
  params = jax.device_put(params, sharding.replicated(mesh))
  results = {split: evaluate(params, split) for split in data.held_out}
  if distributed.is_main():
    os.makedirs(os.path.join(workdir, 'eval'), exist_ok=True)
    with open(os.path.join(workdir, 'eval', 'pretrain_metrics.json'), 'w') as f:
      json.dump({'loss': pre.loss, 'alpha': pre.alpha, 'mask_ratio': pre.mask_ratio,
                 'results': results}, f, indent=2)
    with open(os.path.join(workdir, 'eval', 'pretrain_metrics.md'), 'w') as f:
      f.write(metrics_markdown(results, pre.loss))
    with open(os.path.join(workdir, 'pretrain_summary.json'), 'w') as f:
      json.dump({**meta, 'steps': int(state['step'])}, f, indent=2)
  return results
