"""Train / validation / test splits of windows, by subject or at random.

- 'subject' (calibration-free): the list of subjects (names, known before any signal is
  read) is shuffled and cut by the fractions, exactly; every window of a subject lands in
  its subject's split. Disjointness is checked in code and a violation raises
  `SubjectLeakError`.
- 'random' (the paper's calibration-based protocol): each window goes to a split by a
  seeded stable hash of its key (80/10/10 with seed 42 by default, in expectation), so
  one window's split never depends on the others, on their order or on the number of
  workers; one subject's windows appear in several splits.
- 'pulsedb' (PulseDB's subset files only): the official files' splits, see
  input_pipeline/pulsedb_plan.py.
Both are deterministic functions of their inputs and seed.
"""

from __future__ import annotations

import hashlib

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


def _unit(key: str, seed: int) -> float:
  """A seeded stable hash of `key` (BLAKE2b, not Python's salted hash) in [0, 1)."""
  digest = hashlib.blake2b(f'{seed}:{key}'.encode(), digest_size=8).digest()
  return int.from_bytes(digest, 'big') / 2.0**64


def _by_unit(units, fractions) -> np.ndarray:
  """Split index (into SPLITS) of each hash unit, cutting [0, 1) by `fractions`."""
  _cut(1, fractions)  # checks the fractions
  bounds = np.cumsum(fractions)[:-1]
  return np.searchsorted(bounds, np.asarray(units, float), side='right')


def hash_split(key: str, fractions=(0.8, 0.1, 0.1), seed: int = 42) -> str:
  """The split of the item `key` under the random protocol."""
  return SPLITS[int(_by_unit([_unit(key, seed)], fractions)[0])]


def random_split(keys, fractions=(0.8, 0.1, 0.1), seed: int = 42):
  """{'train'|'validation'|'test': sorted indices into `keys`}, as `hash_split` decides."""
  index = _by_unit([_unit(str(k), seed) for k in keys], fractions)
  return {name: np.flatnonzero(index == i) for i, name in enumerate(SPLITS)}


def assign_subjects(subjects, fractions=(0.8, 0.1, 0.1), seed: int = 42) -> dict[str, str]:
  """{subject: split} for the distinct `subjects`: shuffled with `seed` and cut by
  `fractions` of subjects (every split with a non-zero fraction gets one when there are
  enough). Depends only on the set of subjects, not on their order."""
  unique = np.unique(np.asarray(subjects, str))
  order = np.random.default_rng(seed).permutation(len(unique))
  groups = np.split(unique[order], _cut(len(unique), fractions))
  return {str(s): name for name, group in zip(SPLITS, groups) for s in group}


def subject_split(subjects, fractions=(0.8, 0.1, 0.1), seed: int = 42):
  """{'train'|'validation'|'test': sorted window indices}, with disjoint subjects.

  subjects: (N,) subject id of each window. Fractions apply to subjects, not windows.
  """
  subjects = np.asarray(subjects, str)
  of = assign_subjects(subjects, fractions, seed)
  names = np.array([of[s] for s in subjects], object)
  split = {name: np.flatnonzero(names == name) for name in SPLITS}
  check_subject_disjoint(subjects, split)
  return split


def check_subject_disjoint(subjects, split) -> None:
  """Raises SubjectLeakError if any subject has windows in two splits.

  subjects: (N,) subject of each window; split: {name: indices into the N windows}.
  """
  subjects = np.asarray(subjects)
  check_disjoint({name: set(subjects[indices].tolist()) for name, indices in split.items()})


def check_disjoint(subjects_of: dict) -> None:
  """Raises SubjectLeakError if a subject is in two of the sets {split: subjects}."""
  seen = {}
  for name, subjects in subjects_of.items():
    for subject in sorted(subjects):
      if subject in seen:
        raise SubjectLeakError(f'subject {subject} is in both {seen[subject]} and {name}')
      seen[subject] = name


def make_split(protocol: str, subjects, keys, fractions, seed: int):
  """Dispatches on protocol: 'subject' (by `subjects`) or 'random' (by `keys`, the items'
  unique names)."""
  check_protocol(protocol)
  if protocol == 'subject':
    return subject_split(subjects, fractions, seed)
  return random_split(keys, fractions, seed)


def check_protocol(protocol: str) -> None:
  """Raises ValueError unless `protocol` is 'subject' or 'random'."""
  if protocol in ('subject', 'random'):
    return
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

