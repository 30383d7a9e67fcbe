"""tf.data input pipelines over a prepared window dataset, yielding numpy batches for JAX.

Batches are dicts: 'signals' (B, 2, 1250) float32, 'sbp' and 'dbp' (B,) float32 mmHg,
and for evaluation also 'mask' (B,) bool (False on padding) and 'subject' (B,) bytes.
Each JAX process reads its own shard of a split (`tfds.split_for_jax_process`).
"""

from __future__ import annotations

import glob
import os
from typing import Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

# The input pipeline runs on the host; keep TensorFlow off any accelerator JAX uses.
tf.config.set_visible_devices([], 'GPU')

_NUMERIC = ('signals', 'sbp', 'dbp')


class DatasetNotFoundError(FileNotFoundError):
  """No prepared dataset where one was expected."""


def find_dataset(data_dir: str) -> str:
  """The single prepared dataset folder (…/<builder>/<config>/<version>) under data_dir."""
  found = sorted(os.path.dirname(p) for p in glob.glob(
      os.path.join(data_dir, '*', '*', '*', 'dataset_info.json')))
  if len(found) != 1:
    what = 'no prepared dataset' if not found else f'{len(found)} datasets ({found})'
    raise DatasetNotFoundError(f'{data_dir}: expected one dataset written by '
                               f'scripts/prepare_data.py, found {what}')
  return found[0]


def load_builder(data_dir: str) -> tfds.core.DatasetBuilder:
  """The builder of the dataset prepared under `data_dir` (no builder code needed)."""
  return tfds.builder_from_directory(find_dataset(data_dir))


def _read(builder, split: str, shuffle_files: bool, seed: int | None,
          drop_remainder: bool) -> tf.data.Dataset:
  options = tf.data.Options()
  options.deterministic = True
  read_config = tfds.ReadConfig(options=options, shuffle_seed=seed,
                                interleave_cycle_length=1 if not shuffle_files else 16)
  return builder.as_dataset(
      split=tfds.split_for_jax_process(split, drop_remainder=drop_remainder),
      shuffle_files=shuffle_files, read_config=read_config)


def train_batches(builder, batch_size: int, seed: int, split: str = 'train',
                  shuffle_buffer: int = 16_384, cache: bool = True) -> Iterator[dict]:
  """Endless shuffled batches of `split` (this process's shard), drop-remainder.

  The order is a function of `seed` alone: file order and buffer shuffling are seeded,
  and every pass over the data is reshuffled from that seed.
  """
  ds = _read(builder, split, shuffle_files=True, seed=seed, drop_remainder=True)
  ds = ds.map(lambda ex: {k: ex[k] for k in _NUMERIC}, num_parallel_calls=tf.data.AUTOTUNE,
              deterministic=True)
  if cache:
    ds = ds.cache()
  ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
  ds = ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return ds.as_numpy_iterator()


def eval_batches(builder, split: str, batch_size: int) -> Iterator[dict]:
  """Every example of `split` (this process's shard) exactly once, in file order.

  The last batch is padded to `batch_size` with zeros and 'mask' False, so every batch
  has one shape and nothing is dropped.
  """
  ds = _read(builder, split, shuffle_files=False, seed=None, drop_remainder=False)
  ds = ds.map(lambda ex: {k: ex[k] for k in (*_NUMERIC, 'subject')})
  for batch in ds.batch(batch_size).prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
    size = len(batch['sbp'])
    batch['mask'] = np.ones(size, bool)
    if size < batch_size:
      batch = {k: np.concatenate([v, np.full((batch_size - size,) + v.shape[1:],
                                             b'' if v.dtype == object else 0, v.dtype)])
               for k, v in batch.items()}
    yield batch
