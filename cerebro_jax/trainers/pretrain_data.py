"""Windows for pre-training: a prepared dataset (signals only) or raw recordings.

Both sources give batches {'signals': (b, C, T) float32, 'channel_mask': (b, C) bool} of
this process's rows of each global batch (the rows of its devices, as
sharding.put_batch expects), so a step sees the same global batch however many processes
share it:
- `PreparedWindows`: a dataset of scripts/prepare_data.py or the synthetic cohort (labels
  unused), read as a stream by input_pipeline.pipeline; held-out splits are its
  validation and test splits (unseen subjects under the subject protocol).
- `RecordingWindows`: EDF / WFDB recordings read by input_pipeline.unlabelled into memory
  (fine for what fits in RAM; prepare larger corpora as a dataset), held out by time.
Evaluation batches are padded with windows whose channels are all padding, which the
objective ignores.
"""

from __future__ import annotations

import itertools
from typing import Iterator

import jax
import numpy as np
from tqdm import tqdm

from cerebro_jax import datasets
from input_pipeline import pipeline, unlabelled


def _eval_rows(signals: np.ndarray, mask: np.ndarray, batch_size: int) -> Iterator[dict]:
  """Global batches of `batch_size` over all rows (padded), this process's rows of each."""
  local = batch_size // jax.process_count()
  first = jax.process_index() * local
  for start in range(0, len(signals), batch_size):
    rows = slice(start, start + batch_size)
    sig = np.zeros((batch_size,) + signals.shape[1:], np.float32)
    msk = np.zeros((batch_size, mask.shape[1]), bool)
    sig[:len(signals[rows])], msk[:len(mask[rows])] = signals[rows], mask[rows]
    yield {'signals': sig[first:first + local], 'channel_mask': msk[first:first + local]}


class PreparedWindows:
  """A prepared window dataset (TFDS): 2 channels (ECG, PPG) x 1250 samples."""

  def __init__(self, builder, cache: bool = False):
    self.builder = builder
    self.cache = cache  # keep the training split in memory (pipeline.train_batches)
    self.train_size = builder.info.splits['train'].num_examples
    self.held_out = datasets.eval_splits((), builder)
    self.describe = f'{builder.data_dir} ({self.train_size} training windows)'

  def shape(self) -> tuple[int, int]:
    return 2, 1250

  def train_batches(self, batch_size: int, seed: int, shards, num_shards: int,
                    shuffle_buffer: int) -> Iterator[dict]:
    for batch in pipeline.train_batches(self.builder, batch_size, seed, shards, num_shards,
                                        shuffle_buffer=shuffle_buffer, cache=self.cache):
      signals = batch['signals']
      yield {'signals': signals, 'channel_mask': np.ones(signals.shape[:2], bool)}

  def eval_batches(self, split: str, batch_size: int) -> Iterator[dict]:
    for batch in pipeline.eval_batches(self.builder, split, batch_size // jax.process_count()):
      yield {'signals': batch['signals'],
             'channel_mask': np.repeat(batch['mask'][:, None], 2, axis=1)}

  def sample(self, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to `count` training windows spread over the split, with their channel masks."""
    signals = pipeline.spread_windows(self.builder, 'train', count)
    return signals, np.ones(signals.shape[:2], bool)


class RecordingWindows:
  """Windows of raw recordings in memory: 'train' and 'validation' (by time)."""

  def __init__(self, patterns: str, options: unlabelled.UnlabelledOptions):
    read = unlabelled.read_windows(patterns, options,
                                   progress=lambda p: tqdm(p, desc='reading', unit='file'))
    print(read.summary())
    self.read = read
    self.splits = read.splits
    self.train_size = len(read.splits['train'][0])
    self.held_out = ('validation',) if len(read.splits['validation'][0]) else ()
    self.describe = (f'{len(read.channel_names)} recordings matching {patterns!r} '
                     f'({self.train_size} training windows)')

  def shape(self) -> tuple[int, int]:
    return self.splits['train'][0].shape[1:]

  def train_batches(self, batch_size: int, seed: int, shards, num_shards: int,
                    shuffle_buffer: int) -> Iterator[dict]:
    """Endless: each pass over the training windows in a new order seeded by (seed,
    pass), whole global batches only; rows of `shards` (consecutive positions)."""
    del shuffle_buffer  # the whole split is in memory: a full permutation
    signals, mask = self.splits['train']
    per_shard = batch_size // num_shards
    rows = slice(shards[0] * per_shard, (shards[-1] + 1) * per_shard)
    for repeat in itertools.count():
      order = np.random.default_rng([seed, repeat]).permutation(len(signals))
      for start in range(0, len(order) - batch_size + 1, batch_size):
        chosen = order[start:start + batch_size][rows]
        yield {'signals': signals[chosen], 'channel_mask': mask[chosen]}

  def eval_batches(self, split: str, batch_size: int) -> Iterator[dict]:
    return _eval_rows(*self.splits[split], batch_size)

  def sample(self, count: int) -> tuple[np.ndarray, np.ndarray]:
    signals, mask = self.splits['train']
    stride = max(1, len(signals) // count)
    return signals[::stride][:count], mask[::stride][:count]


def from_config(data_config, workdir: str):
  """The windows a pre-training config asks for: config.data.recordings (raw files),
  else config.data.dir or the synthetic cohort (as for fine-tuning)."""
  if data_config.recordings:
    return RecordingWindows(data_config.recordings, unlabelled.UnlabelledOptions(
        channels=tuple(data_config.channels), sample_rate_hz=data_config.sample_rate_hz,
        window_seconds=data_config.window_seconds, normalisation=data_config.normalisation,
        pad_channels=data_config.pad_channels,
        validation_fraction=data_config.validation_fraction))
  return PreparedWindows(datasets.get_builder(data_config, workdir), data_config.cache)
