"""Optimizers with trainable / frozen labels over the parameter pytree.

Every parameter gets a label from its path ('encoder/blocks_0/attn/qkv/kernel', ...):
'trainable' if the path matches one of the mode's fnmatch patterns, else 'frozen'.
`optax.multi_transform` then sends trainable leaves to Adam(W) and frozen leaves to
`optax.set_to_zero()`: frozen parameters carry no optimizer state and receive no update,
weight decay included. The learning rate is constant or follows a per-update linear
warm-up and cosine decay; with config.grad_accum_steps > 1, `optax.MultiSteps` averages
that many micro-batches' gradients into each update.
"""

from __future__ import annotations

import fnmatch

import jax
import optax
from flax import traverse_util

TRAIN_MODES = ('scratch', 'unfrozen', 'frozen')
SCHEDULES = ('constant', 'warmup_cosine')


def path_labels(params, trainable_patterns) -> dict:
  """Pytree like `params` of 'trainable' / 'frozen' by fnmatch on '/'-joined paths."""
  flat = traverse_util.flatten_dict(params, sep='/')
  labels = {path: ('trainable' if any(fnmatch.fnmatchcase(path, p) for p in trainable_patterns)
                   else 'frozen') for path in flat}
  return traverse_util.unflatten_dict(labels, sep='/')


def trainable_patterns(config) -> tuple[str, ...]:
  """The patterns of `config.train_mode`: everything, or config.trainable_patterns."""
  if config.train_mode not in TRAIN_MODES:
    raise ValueError(f'train_mode must be one of {TRAIN_MODES}, got {config.train_mode!r}')
  return ('*',) if config.train_mode != 'frozen' else tuple(config.trainable_patterns)


def learning_rate(config, updates_per_epoch: int):
  """config.learning_rate, or its schedule over optimizer updates ('warmup_cosine': linear
  from config.min_learning_rate over config.warmup_epochs, cosine down to it at
  config.num_epochs)."""
  if config.schedule == 'constant':
    return config.learning_rate
  if config.schedule != 'warmup_cosine':
    raise ValueError(f'schedule must be one of {SCHEDULES}, got {config.schedule!r}')
  total = max(1, config.num_epochs * updates_per_epoch)
  return optax.warmup_cosine_decay_schedule(
      init_value=config.min_learning_rate, peak_value=config.learning_rate,
      warmup_steps=min(total - 1, int(config.warmup_epochs * updates_per_epoch)),
      decay_steps=total, end_value=config.min_learning_rate)


def make_optimizer(config, params,
                   updates_per_epoch: int = 1) -> tuple[optax.GradientTransformation, dict]:
  """(optimizer, labels) for `params` under `config` (see configs/default.py);
  updates_per_epoch (optimizer updates, after accumulation) paces the schedule."""
  labels = path_labels(params, trainable_patterns(config))
  if 'trainable' not in jax.tree.leaves(labels):
    raise ValueError(f'no parameter matches trainable_patterns {config.trainable_patterns}')
  rate = learning_rate(config, updates_per_epoch)
  if config.weight_decay > 0:
    inner = optax.adamw(rate, config.b1, config.b2, weight_decay=config.weight_decay)
  else:
    inner = optax.adam(rate, config.b1, config.b2)
  if config.grad_clip_norm > 0:
    inner = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), inner)
  tx = optax.multi_transform({'trainable': inner, 'frozen': optax.set_to_zero()}, labels)
  if config.grad_accum_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=config.grad_accum_steps)
  return tx, labels
