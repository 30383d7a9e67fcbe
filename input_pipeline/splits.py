"""Train / validation / test splits of windows, by subject or at random.

- 'subject' (calibration-free): subjects are shuffled and cut by the fractions; every
  window of a subject lands in the same split. Disjointness is checked in code and a
  violation raises `SubjectLeakError`.
- 'random' (the paper's calibration-based protocol): windows are shuffled and cut
  80/10/10 with seed 42 by default; one subject's windows appear in several splits.
- 'pulsedb' (PulseDB's subset files only): the official files' splits, see
  input_pipeline/pulsedb_plan.py.
Both are deterministic functions of their inputs and seed.
"""

from __future__ import annotations

import numpy as np

SPLITS = ('train', 'validation', 'test')
PROTOCOLS = ('subject', 'random', 'pulsedb')
_CALIBRATION_BASED = 'calibration-based: subjects also in training'
_CALIBRATION_FREE = 'calibration-free: subjects not in training'


class SubjectLeakError(AssertionError):
  """A subject's windows in two splits of a subject-independent split."""


def _cut(n: int, fractions) -> list[int]:
  """Boundaries cutting n items by `fractions` (which must sum to 1).

  Every split with a non-zero fraction gets at least one item when n allows it (taken
  from the largest split), so small cohorts still have a validation and a test split.
  """
  fractions = np.asarray(fractions, float)
  if len(fractions) != len(SPLITS) or (fractions < 0).any() or abs(fractions.sum() - 1) > 1e-6:
    raise ValueError(f'split fractions must be 3 non-negative numbers summing to 1, '
                     f'got {fractions.tolist()}')
  counts = np.diff(np.concatenate([[0], np.round(np.cumsum(fractions) * n)])).astype(int)
  if n >= (fractions > 0).sum():
    for i in np.flatnonzero((fractions > 0) & (counts == 0)):
      counts[i] += 1
      counts[np.argmax(counts)] -= 1
  return np.cumsum(counts)[:-1].tolist()


def random_split(num_windows: int, fractions=(0.8, 0.1, 0.1), seed: int = 42):
  """{'train'|'validation'|'test': sorted window indices}, shuffled over windows."""
  order = np.random.default_rng(seed).permutation(num_windows)
  return {name: np.sort(part) for name, part in zip(SPLITS, np.split(order, _cut(
      num_windows, fractions)))}


def subject_split(subjects, fractions=(0.8, 0.1, 0.1), seed: int = 42):
  """{'train'|'validation'|'test': sorted window indices}, with disjoint subjects.

  subjects: (N,) subject id of each window. Fractions apply to subjects, not windows.
  """
  subjects = np.asarray(subjects)
  unique = np.unique(subjects)
  order = np.random.default_rng(seed).permutation(len(unique))
  groups = np.split(unique[order], _cut(len(unique), fractions))
  split = {name: np.flatnonzero(np.isin(subjects, group)) for name, group in zip(SPLITS, groups)}
  check_subject_disjoint(subjects, split)
  return split


def check_subject_disjoint(subjects, split) -> None:
  """Raises SubjectLeakError if any subject has windows in two splits."""
  subjects = np.asarray(subjects)
  seen = {}
  for name, indices in split.items():
    for subject in np.unique(subjects[indices]):
      if subject in seen:
        raise SubjectLeakError(f'subject {subject} is in both {seen[subject]} and {name}')
      seen[subject] = name


def make_split(protocol: str, subjects, fractions, seed: int):
  """Dispatches on protocol: 'subject' or 'random'."""
  if protocol == 'subject':
    return subject_split(subjects, fractions, seed)
  if protocol == 'random':
    return random_split(len(subjects), fractions, seed)
  if protocol == 'pulsedb':
    raise ValueError('protocol pulsedb takes its splits from PulseDB\'s subset files: '
                     'use it with --source pulsedb')
  raise ValueError(f'unknown split protocol {protocol!r}; expected one of {PROTOCOLS}')


def split_kind(protocol: str, split: str) -> str:
  """What a split of a dataset built with `protocol` measures, for reports."""
  if split == 'train':
    return 'training'
  if split == 'calibration_aami':
    return 'calibration windows of the AAMI test subjects (not in training)'
  if protocol == 'random' or split == 'test_calbased':
    return _CALIBRATION_BASED
  if protocol in ('subject', 'pulsedb'):
    return _CALIBRATION_FREE
  return f'protocol {protocol or "unknown"}'

