"""The masked-patch pre-training objective: token masks, targets, the loss, baselines.

Shapes: B windows, C channels, P patches per channel, S = patch_size samples per patch.
channel_mask (B, C) is True on real channels, False on padding; token masks (B, C, P) are
True on masked tokens. Everything here is a pure jnp function (see
../shared/spec/pretraining.md for the objective).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

LOSSES = ('l2', 'smooth_l1')


@dataclasses.dataclass(frozen=True)
class Objective:
  """mask_ratio: fraction of real tokens masked; alpha: weight of the visible patches;
  loss: 'l2' or 'smooth_l1' (configs/pretrain.py's config.pretrain)."""

  mask_ratio: float = 0.5
  alpha: float = 0.1
  loss: str = 'l2'

  def __post_init__(self):
    if not 0.0 <= self.mask_ratio < 1.0:
      raise ValueError(f'mask ratio must be in [0, 1), got {self.mask_ratio}')
    if self.loss not in LOSSES:
      raise ValueError(f'loss must be one of {LOSSES}, got {self.loss!r}')


def random_token_mask(key: jax.Array, channel_mask: jax.Array, patches: int,
                      ratio: float) -> jax.Array:
  """(B, C, P) bool: per window, exactly valid - floor(valid * (1 - ratio)) real tokens
  masked (valid = real channels x P), chosen uniformly at random; padded channels never.

  Each token draws a uniform noise, padded tokens 2 (above every real one); a token is
  masked when its rank among its window's noises is in [keep, valid). Static shapes, no
  gather; the same key gives the same mask.
  """
  if not 0.0 <= ratio < 1.0:
    raise ValueError(f'mask ratio must be in [0, 1), got {ratio}')
  batch, channels = channel_mask.shape
  real = jnp.repeat(jnp.asarray(channel_mask, bool), patches, axis=1)  # (B, C * P)
  noise = jnp.where(real, jax.random.uniform(key, real.shape), 2.0)
  rank = jnp.argsort(jnp.argsort(noise, axis=1), axis=1)
  valid = real.sum(axis=1, keepdims=True)
  keep = jnp.floor(valid * (1.0 - ratio)).astype(valid.dtype)
  return ((rank >= keep) & (rank < valid)).reshape(batch, channels, patches)


def patch_targets(signals: jax.Array, patch_size: int) -> jax.Array:
  """(B, C, T) signals -> (B, C, P, S) patches (the last T - P * S samples dropped)."""
  batch, channels, samples = signals.shape
  patches = samples // patch_size
  return signals[..., :patches * patch_size].reshape(batch, channels, patches, patch_size)


def patch_losses(prediction: jax.Array, target: jax.Array, kind: str) -> jax.Array:
  """(B, C, P, S) prediction and target -> (B, C, P) per-patch mean elementwise loss:
  'l2' (squared error) or 'smooth_l1' (Huber with beta 1, torch's default)."""
  diff = prediction.astype(jnp.float32) - target.astype(jnp.float32)
  if kind == 'l2':
    elementwise = diff**2
  elif kind == 'smooth_l1':
    elementwise = jnp.where(jnp.abs(diff) < 1.0, 0.5 * diff**2, jnp.abs(diff) - 0.5)
  else:
    raise ValueError(f'loss must be one of {LOSSES}, got {kind!r}')
  return elementwise.mean(axis=-1)


def loss_terms(per_patch: jax.Array, token_mask: jax.Array,
               channel_mask: jax.Array) -> dict[str, jax.Array]:
  """Sums and counts of (B, C, P) per-patch losses over masked and visible real patches:
  {'masked_sum', 'masked_count', 'visible_sum', 'visible_count'} (float32 scalars), which
  add up over batches."""
  real = jnp.broadcast_to(jnp.asarray(channel_mask, bool)[:, :, None], per_patch.shape)
  terms = {}
  for part, where in (('masked', real & token_mask), ('visible', real & ~token_mask)):
    where = where.astype(jnp.float32)
    terms[f'{part}_sum'] = (per_patch * where).sum()
    terms[f'{part}_count'] = where.sum()
  return terms


def combine(terms, alpha: float) -> dict:
  """loss_terms (of one batch, or summed over many) -> {'loss', 'masked', 'visible'}:
  the means over masked and visible real patches (0 where there are none) and
  loss = masked + alpha * visible."""
  masked = terms['masked_sum'] / jnp.maximum(terms['masked_count'], 1.0)
  visible = terms['visible_sum'] / jnp.maximum(terms['visible_count'], 1.0)
  return {'loss': masked + alpha * visible, 'masked': masked, 'visible': visible}


def reconstruction_loss(prediction, target, token_mask, channel_mask, alpha: float,
                        kind: str) -> jax.Array:
  """mean over masked real patches + alpha * mean over visible real patches of the
  per-patch loss, means over the whole batch; padded channels excluded."""
  terms = loss_terms(patch_losses(prediction, target, kind), token_mask, channel_mask)
  return combine(terms, alpha)['loss']


def baseline_predictions(target: jax.Array, mean_patch: jax.Array) -> dict[str, jax.Array]:
  """Predictions that use no model, each (B, C, P, S) like `target`: 'zeros', and
  'mean_patch': `mean_patch` (C, S), the training windows' average patch of each channel
  (the best constant predictor in L2)."""
  return {'zeros': jnp.zeros_like(target),
          'mean_patch': jnp.broadcast_to(mean_patch[None, :, None, :], target.shape)}
