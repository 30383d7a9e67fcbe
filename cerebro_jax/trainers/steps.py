"""The jitted optimizer steps of the training jobs, and their train state.

`init_state` makes the state every job trains; `make_step` jits one optimizer step of a
loss; `make_train_step` (BP fine-tuning, train.py) and `make_pretrain_step` (masked-patch
pre-training, pretrain.py) are the two jobs' steps. This module imports no data pipeline
(no TensorFlow): `scripts/benchmark.py train|pretrain|model|roofline` run where only JAX,
Flax, optax and ml_collections are installed, as on an accelerator image.

Split steps (`splits` > 1, config.step_splits): each device's batch is cut into parts
whose losses and gradients are computed as independent pieces of one program and
averaged, as gradient accumulation averages micro-batches. XLA's CPU runtime runs
independent operations side by side, so on a CPU each thread works on its own part, one
operation at a time, instead of both threads sharing every small operation: on 2 cores
CEReBrO small's step ran 1.1-1.2x faster with 2 parts at batch 32 and 64, the main job
1.06x (docs/benchmarks.md).

On a CPU the steps compile with CPU_OPTIONS: matmuls on XLA's Eigen kernels instead of
YNNPACK's (YNNPACK keeps the reductions, which the LayerNorms need), and, when every
thread has a part of its own, Eigen on one thread per matmul: 1.05x faster at batch 64
on 2 cores with 2 parts, and on one thread too; 512-bit vectors, 1.04x on one thread
and 0.6-3.8 % on two; copy insertion with region analysis, 1.01-1.04x on two
(docs/benchmarks.md). They round differently from XLA's defaults,
so a run's trajectory differs in the last digits.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from cerebro_jax import sharding
from cerebro_jax.models import model as model_lib
from cerebro_jax.models.model_config import ModelConfig
from cerebro_jax.trainers import masked_patches

# Target names in the order of the BP model's outputs: ('dbp', 'sbp').
TARGET_ORDER = tuple(c.removesuffix('_mmhg') for c in model_lib.OUTPUT_COLUMNS)

# step_splits' automatic choice never cuts a device's batch into parts smaller than this.
MIN_SPLIT_WINDOWS = 8

# XLA options of the steps on a CPU: YNNPACK fusions for reductions only (matmuls on
# Eigen), 512-bit vectors, copy insertion with region analysis (56 of the 88 copies of
# CEReBrO small's step in 2 parts are left out).
CPU_OPTIONS = {'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_REDUCE',
               'xla_cpu_copy_insertion_use_region_analysis': True,
               **sharding.WIDE_VECTORS}


def step_splits(requested: int, global_batch: int, mesh) -> int:
  """Parts of each device's batch in a train step (config.step_splits).

  `requested` > 0 is taken as it is and must divide the device's batch. 0 chooses: on a
  CPU, XLA's threads per device (sharding.cpu_threads_per_device), lowered until the
  parts divide the device's batch and hold at least MIN_SPLIT_WINDOWS windows; 1 on a
  GPU or TPU, whose kernels want the whole batch.
  """
  per_device = global_batch // mesh.size
  if requested < 0:
    raise ValueError(f'step_splits must be >= 0, got {requested}')
  if requested:
    if per_device % requested:
      raise ValueError(f'step_splits {requested} does not divide the batch of '
                       f'{per_device} windows per device')
    return requested
  if jax.default_backend() != 'cpu':
    return 1
  splits = min(sharding.cpu_threads_per_device(), per_device // MIN_SPLIT_WINDOWS)
  while splits > 1 and per_device % splits:
    splits -= 1
  return max(splits, 1)


def compiler_options(splits: int) -> dict:
  """XLA compile options of a step whose device batches are cut into `splits` parts:
  CPU_OPTIONS, plus sharding.ONE_THREAD_MATMULS when the parts are at least as many as
  XLA's threads per device; {} off a CPU or where this XLA lacks an option."""
  return sharding.cpu_compile_options(CPU_OPTIONS, splits)


def _parts(batch: dict, splits: int, devices: int) -> list[dict]:
  """`batch` (rows sharded over `devices`) cut into `splits` parts of equal rows; part i
  holds the i-th slice of every device's rows, so no row leaves its device."""

  def part(x, i):
    grid = x.reshape(devices, splits, x.shape[0] // (devices * splits), *x.shape[1:])
    return grid[:, i].reshape(x.shape[0] // splits, *x.shape[1:])

  return [jax.tree.map(lambda x, i=i: part(x, i), batch) for i in range(splits)]


def init_state(params, tx, seed: int) -> dict:
  """The train state at step 0: {'step', 'params', 'opt_state', 'rng'} (host arrays)."""
  return {'step': jnp.zeros((), jnp.int32), 'params': params, 'opt_state': tx.init(params),
          'rng': jax.random.PRNGKey(seed)}


def make_step(loss_of: Callable, tx, mesh, splits: int = 1):
  """Jitted (state, batch) -> (state, loss) of one optimizer step on
  loss_of(params, batch, key), key = fold_in(state rng, step) (dropout, masks); the state
  is donated and replicated, the batch split over `mesh`, compiled with
  compiler_options(splits). With `splits` > 1 the loss and gradients are the means of
  loss_of's over the batch's parts (_parts), part i drawing from fold_in(key, i)."""
  grad_fn = jax.value_and_grad(loss_of)

  def value_and_grad(params, batch, key):
    if splits == 1:
      return grad_fn(params, batch, key)
    results = [grad_fn(params, part, jax.random.fold_in(key, i))
               for i, part in enumerate(_parts(batch, splits, mesh.size))]
    return jax.tree.map(lambda *parts: sum(parts) / splits, *results)

  def step(state, batch):
    key = jax.random.fold_in(state['rng'], state['step'])
    loss, grads = value_and_grad(state['params'], batch, key)
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    return {'step': state['step'] + 1, 'params': optax.apply_updates(state['params'], updates),
            'opt_state': opt_state, 'rng': state['rng']}, loss

  replicated = sharding.replicated(mesh)
  return jax.jit(step, in_shardings=(replicated, sharding.batch_sharded(mesh)),
                 out_shardings=(replicated, replicated), donate_argnums=(0,),
                 compiler_options=compiler_options(splits))


def make_train_step(model_config: ModelConfig, tx, mesh, splits: int = 1):
  """Jitted (state, batch) -> (state, loss); state donated, batch split over `mesh` and
  each device's share into `splits` parts (make_step).

  state: {'step', 'params', 'opt_state', 'rng'}; batch: 'signals' (B, 2, 1250), 'sbp',
  'dbp' (B,) mmHg. Loss: MSE over the model's two outputs against the named targets.
  """
  module = model_lib.CerebroBP(model_config)

  def loss_of(params, batch, dropout):
    targets = jnp.stack([batch[t] for t in TARGET_ORDER], -1)
    out = module.apply({'params': params}, batch['signals'], deterministic=False,
                       rngs={'dropout': dropout})
    return jnp.mean((out - targets) ** 2)

  return make_step(loss_of, tx, mesh, splits)


def masks_and_targets(model_config: ModelConfig, objective: masked_patches.Objective,
                      batch: dict, key) -> tuple[jax.Array, jax.Array]:
  """(token mask (B, C, patches) bool, True = masked; patch targets (B, C, patches,
  patch_size)) of a pre-training batch: 'signals' (B, C, T), 'channel_mask' (B, C)."""
  patches = batch['signals'].shape[-1] // model_config.patch_size
  token_mask = masked_patches.random_token_mask(key, batch['channel_mask'], patches,
                                                objective.mask_ratio)
  return token_mask, masked_patches.patch_targets(batch['signals'], model_config.patch_size)


def make_pretrain_step(model_config: ModelConfig, objective: masked_patches.Objective, tx,
                       mesh, splits: int = 1):
  """Jitted (state, batch) -> (state, loss); state donated, batch split over `mesh` and
  each device's share into `splits` parts (make_step).

  batch: 'signals' (B, C, T) float32, 'channel_mask' (B, C) bool. Each step draws its
  token masks and dropout from (state rng, step).
  """
  module = model_lib.CerebroPretrain(model_config)

  def loss_of(params, batch, key):
    mask_key, dropout = jax.random.split(key)
    token_mask, target = masks_and_targets(model_config, objective, batch, mask_key)
    prediction = module.apply({'params': params}, batch['signals'], batch['channel_mask'],
                              token_mask, deterministic=False, rngs={'dropout': dropout})
    return masked_patches.reconstruction_loss(prediction, target, token_mask,
                                              batch['channel_mask'], objective.alpha,
                                              objective.loss)

  return make_step(loss_of, tx, mesh, splits)
