"""The dataset a training config asks for: a prepared folder, or the synthetic cohort."""

from __future__ import annotations

import os

import jax
import numpy as np
import tensorflow_datasets as tfds

from cerebro_jax import distributed
from input_pipeline import pipeline, prepare, splits, synthetic, tfds_builders

# Splits that are never evaluated by default: training data and calibration windows.
_NOT_EVALUATED = ('train', 'calibration_aami')


class ProtocolMismatchError(ValueError):
  """The dataset's split protocol is not the one the config's experiment needs."""


def synthetic_options(data_config) -> prepare.PrepareOptions:
  return prepare.PrepareOptions(
      source='synthetic', protocol=data_config.protocol,
      fractions=tuple(data_config.fractions), seed=data_config.split_seed,
      cohort=synthetic.CohortConfig(num_subjects=data_config.num_subjects,
                                    minutes_per_subject=data_config.minutes_per_subject,
                                    seed=data_config.cohort_seed))


def get_builder(data_config, workdir: str) -> tfds.core.DatasetBuilder:
  """The builder of `data_config.dir`, or of <workdir>/data (synthetic, built if absent,
  by process 0 while the others wait)."""
  if data_config.dir:
    return pipeline.load_builder(data_config.dir)
  if data_config.source != 'synthetic':
    raise pipeline.DatasetNotFoundError(
        f'config.data.dir is empty: prepare {data_config.source} records with '
        f'scripts/prepare_data.py --source {data_config.source} --input RECORDS --output DIR '
        'and pass --config.data.dir=DIR')
  data_dir = os.path.join(workdir, 'data')
  distributed.on_main_process(lambda: _build_synthetic(data_config, data_dir),
                              f'building the synthetic cohort in {data_dir}')
  try:
    return pipeline.load_builder(data_dir)
  except pipeline.DatasetNotFoundError as e:
    if jax.process_count() == 1:
      raise
    raise pipeline.DatasetNotFoundError(
        f'{e}. Process 0 built it there: on several hosts the workdir must be on storage '
        'they all share (a bucket or a shared file system)') from e


def _build_synthetic(data_config, data_dir: str) -> None:
  """Builds the synthetic cohort in `data_dir` unless a dataset is there already."""
  try:
    pipeline.load_builder(data_dir)
    return
  except pipeline.DatasetNotFoundError:
    pass
  options = synthetic_options(data_config)
  print(f'Building the synthetic cohort ({options.cohort.num_subjects} subjects) in {data_dir}')
  tfds_builders.prepare_dataset(options, data_dir)


def split_means(builder, split: str = 'train') -> dict[str, float]:
  """Mean SBP and DBP (mmHg) of a split: the mean predictor and the head's start."""
  totals = {'sbp': 0.0, 'dbp': 0.0}
  count = 0
  labels = builder.as_dataset(split=split, decoders={'signals': tfds.decode.SkipDecoding()})
  labels = labels.map(lambda ex: {'sbp': ex['sbp'], 'dbp': ex['dbp']})
  for ex in labels.batch(4096).as_numpy_iterator():
    totals['sbp'] += float(np.sum(ex['sbp'], dtype=np.float64))
    totals['dbp'] += float(np.sum(ex['dbp'], dtype=np.float64))
    count += len(ex['sbp'])
  return {k: v / count for k, v in totals.items()}


def eval_splits(config_splits, builder) -> tuple[str, ...]:
  """config.eval_splits, or when empty: validation and every test split of the dataset
  (test; test_calbased, test_calfree, test_aami for PulseDB's official files)."""
  if config_splits:
    return tuple(config_splits)
  present = list(builder.info.splits)
  return tuple(['validation'] * ('validation' in present) + sorted(
      s for s in present if s not in (*_NOT_EVALUATED, 'validation')))


def test_split(builder) -> str:
  """The dataset's test split: 'test', else the first official PulseDB test split."""
  tests = [s for s in eval_splits((), builder) if s != 'validation']
  if not tests:
    raise pipeline.DatasetNotFoundError(f'{builder.data_dir}: no test split (it has '
                                        f'{", ".join(builder.info.splits)})')
  return 'test' if 'test' in tests else tests[0]


def check_protocol(builder, required) -> None:
  """Raises ProtocolMismatchError when `required` (protocols) does not hold the dataset's."""
  found = tfds_builders.protocol_of(builder)
  if required and found not in required:
    raise ProtocolMismatchError(
        f'this config reproduces an experiment on a {" or ".join(required)} split, but the '
        f'dataset in {builder.data_dir} was built with protocol {found or "unknown"!r} '
        f'({splits.split_kind(found, "test")}), which measures something else. Prepare the '
        f'data with scripts/prepare_data.py --protocol {required[0]}, or pass '
        "--config.data.required_protocols='()' to run it anyway.")
