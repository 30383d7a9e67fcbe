"""tf.data input pipelines over a prepared window dataset, yielding numpy batches for JAX.

Batches are dicts: 'signals' (B, 2, 1250) float32, 'sbp' and 'dbp' (B,) float32 mmHg,
and for evaluation also 'mask' (B,) bool (False on padding) and 'subject' (B,) bytes.
Each JAX process reads its own part of a split: for training, the ranges of its devices;
for evaluation, its consecutive shard (`tfds.split_for_jax_process`).
"""

from __future__ import annotations

import functools
import glob
import os
from typing import Iterator

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

# The input pipeline runs on the host; keep TensorFlow off any accelerator JAX uses.
tf.config.set_visible_devices([], 'GPU')

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


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  return options


def shard_seed(seed: int, shard: int) -> int:
  """The shuffling seed of data-axis position `shard`: `seed` itself for position 0 (a
  one-device run reads in the order of `seed`), a seed derived from both otherwise."""
  if shard == 0:
    return seed
  return int(np.random.SeedSequence([seed, shard]).generate_state(1)[0] >> 1)


# The features training reads, as the TFDS builders store them: signals as the raw bytes
# of a (2, 1250) float32 array, labels as float32 scalars.
_TRAINING_FEATURES = {'signals': tf.io.FixedLenFeature([], tf.string),
                      'sbp': tf.io.FixedLenFeature([], tf.float32),
                      'dbp': tf.io.FixedLenFeature([], tf.float32)}


def _parse_batch(serialized: tf.Tensor) -> dict:
  """(B,) serialized examples -> {'signals' (B, 2, 1250), 'sbp', 'dbp' (B,)}, in one
  vectorised parse (8x the windows/s of TFDS's example-by-example decoding)."""
  batch = tf.io.parse_example(serialized, _TRAINING_FEATURES)
  batch['signals'] = tf.reshape(tf.io.decode_raw(batch['signals'], tf.float32), (-1, 2, 1250))
  return batch


def _serialized(builder, split: str, start: int, end: int, file_seed: int | None):
  """Serialized examples [start, end) of `split`, read from its files (interleaved 16 at
  a time) in file order, or in an order of the files shuffled by `file_seed`."""
  files = builder.info.splits[tfds.core.ReadInstruction(split, start, end, unit='abs')
                              ].file_instructions
  if file_seed is not None:
    files = [files[i] for i in np.random.default_rng(file_seed).permutation(len(files))]
  names = tf.data.Dataset.from_tensor_slices((
      [f.filename for f in files], tf.constant([f.skip for f in files], tf.int64),
      tf.constant([f.take for f in files], tf.int64)))
  # Sequential interleave: on 2 cores the parallel one ran at half the windows/s.
  return names.interleave(lambda name, skip, take: tf.data.TFRecordDataset(name).skip(skip)
                          .take(take), cycle_length=16)


@functools.lru_cache(maxsize=8)
def _in_memory(data_dir: str, split: str, start: int, end: int) -> tf.data.Dataset:
  """Serialized examples [start, end) of `split` in file order, kept in memory after the
  first pass by every dataset built on top of it (tf.data's cache persists across
  iterators)."""
  return _serialized(tfds.builder_from_directory(data_dir), split, start, end, None).cache()


def train_batches(builder, batch_size: int, seed: int, shards=(0,), num_shards: int = 1,
                  split: str = 'train', shuffle_buffer: int = 16_384,
                  cache: bool = False) -> Iterator[dict]:
  """Endless shuffled batches of `split` for the data-axis positions `shards`, drop-remainder.

  The split is cut into `num_shards` (the number of devices) equal consecutive ranges, the
  remainder dropped; position k reads range k, shuffled by `shard_seed(seed, k)`, and
  fills rows [k * b, (k + 1) * b) of each global batch of `batch_size`, b = batch_size /
  num_shards. The batches yielded are the rows of `shards` (consecutive positions: this
  process's devices), so the global batches depend on the seed and the number of devices,
  never on how many processes share them.

  Shuffling: streamed from disk (cache=False), by the order of the files and a buffer of
  shuffle_buffer / num_shards windows; with `cache`, the range is read once per process
  and kept in memory (10 kB a window), and each call shuffles it with that buffer alone
  (a different order from the streamed one for the same seed, equally deterministic).
  Examples are parsed after batching, a batch at a time.
  """
  if batch_size % num_shards:
    raise ValueError(f'batch size {batch_size} does not divide over {num_shards} shards')
  size = builder.info.splits[split].num_examples // num_shards
  streams = []
  for shard in shards:
    start, end = shard * size, (shard + 1) * size
    ds = (_in_memory(str(builder.data_dir), split, start, end) if cache else
          _serialized(builder, split, start, end, shard_seed(seed, shard)))
    ds = ds.shuffle(max(1, shuffle_buffer // num_shards), seed=shard_seed(seed, shard),
                    reshuffle_each_iteration=True).repeat()
    streams.append(ds.batch(batch_size // num_shards, drop_remainder=True).map(
        _parse_batch, num_parallel_calls=tf.data.AUTOTUNE))
  ds = tf.data.Dataset.zip(tuple(streams)).map(
      lambda *parts: {k: tf.concat([p[k] for p in parts], 0) for k in _TRAINING_FEATURES})
  return ds.with_options(_options()).prefetch(tf.data.AUTOTUNE).as_numpy_iterator()


def eval_batch_count(builder, split: str, batch_size: int) -> int:
  """Batches of `batch_size` that every process reads of `split`: enough for the largest
  process's shard, so that all processes run the same number of steps."""
  largest = -(-builder.info.splits[split].num_examples // jax.process_count())
  return -(-largest // batch_size)


def eval_batches(builder, split: str, batch_size: int) -> Iterator[dict]:
  """Every example of this process's shard of `split` once, in file order, in exactly
  `eval_batch_count` batches.

  Shards are consecutive ranges in process order (`tfds.split_for_jax_process`). Batches
  are padded to `batch_size` with zeros and 'mask' False (whole padding batches where a
  shard is shorter than the largest), so every batch has one shape, every process runs
  the same number of them, and nothing is dropped.
  """
  read_config = tfds.ReadConfig(options=_options(), interleave_cycle_length=1)
  ds = builder.as_dataset(split=tfds.split_for_jax_process(split, drop_remainder=False),
                          shuffle_files=False, read_config=read_config)
  ds = ds.map(lambda ex: {k: ex[k] for k in (*_TRAINING_FEATURES, 'subject')})
  batches = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE).as_numpy_iterator()
  empty = {'signals': np.zeros((0, 2, 1250), np.float32), 'sbp': np.zeros(0, np.float32),
           'dbp': np.zeros(0, np.float32), 'subject': np.zeros(0, object)}
  for _ in range(eval_batch_count(builder, split, batch_size)):
    batch = next(batches, empty)
    size = len(batch['sbp'])
    batch['mask'] = np.ones(size, bool)
    if size < batch_size:
      batch = {k: np.concatenate([v, np.full((batch_size - size,) + v.shape[1:],
                                             b'' if v.dtype == object else 0, v.dtype)])
               for k, v in batch.items()}
    yield batch


def spread_windows(builder, split: str, count: int) -> np.ndarray:
  """Up to `count` windows (N, 2, 1250) float32 of `split`, evenly spaced in file order
  (every k-th, k = size // count): the same windows on every call, from across the split
  rather than from its first subjects."""
  if count < 1:
    raise ValueError(f'{count} windows asked for; at least 1')
  stride = max(1, builder.info.splits[split].num_examples // count)
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          read_config=tfds.ReadConfig(options=_options(),
                                                      interleave_cycle_length=1))
  ds = ds.shard(stride, 0).take(count).map(lambda ex: ex['signals']).batch(count)
  return next(ds.as_numpy_iterator(), np.zeros((0, 2, 1250), np.float32))
