"""Which PulseDB segments go where: the checks pass, the split, and the reports.

One pass reads every segment of every file once (in blocks) to judge it; it keeps only
labels and verdicts (9 bytes a segment). The split is then made over the usable segments:

  pulsedb  the official files: Train -> 'train' minus whole subjects carved out as
           'validation' (seeded fraction of Train's subjects); CalBased_Test ->
           'test_calbased' (calibration-based: subjects also in training); CalFree_Test
           -> 'test_calfree', AAMI_Test -> 'test_aami', AAMI_Cal -> 'calibration_aami'
           (calibration-free: asserted disjoint from train and validation).
  random   the paper's split: usable segments of all files shuffled 80/10/10 (seed 42).
  subject  whole subjects shuffled and cut by the fractions (disjointness asserted).

A file that cannot be read is named with the reason and left out whole.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import os

import numpy as np
from tqdm import tqdm

from input_pipeline import matlab_v73, pulsedb, splits, windows

BLOCK = 1024  # segments per read: 10 MB of float32 ECG + PPG, 30 MB as stored
READ_ERRORS = (pulsedb.PulseDbError, matlab_v73.MatFileError, OSError, KeyError)
# Splits of the 'pulsedb' protocol whose subjects must not train (calibration-free).
HELD_OUT = ('test_calfree', 'test_aami', 'calibration_aami')


@dataclasses.dataclass(frozen=True)
class PulseDbOptions:
  """PulseDB-only choices of a dataset."""
  sources: tuple[str, ...] = pulsedb.SOURCES  # 'mimic' and/or 'vitaldb'
  validation_fraction: float = 0.1  # protocol 'pulsedb': share of Train's subjects


@dataclasses.dataclass
class FileRows:
  """What the check pass keeps of one file: every row's key, and for the rows of the
  selected sources their labels (mmHg) and verdict ('' = usable)."""
  file: pulsedb.PulseFile
  subjects: np.ndarray  # (N,) keys of all rows
  rows: np.ndarray  # (M,) the selected rows
  sbp: np.ndarray  # (M,) float32
  dbp: np.ndarray  # (M,) float32
  reasons: np.ndarray  # (M,) str, '' where usable


@dataclasses.dataclass
class Plan:
  """The files, their checked rows, and split -> {path: sorted usable rows}."""
  input_dir: str
  protocol: str
  fractions: tuple[float, float, float]
  seed: int
  options: PulseDbOptions
  kind: str
  files: dict[str, FileRows]
  failures: list[tuple[str, str]]
  split: dict[str, dict[str, np.ndarray]]

  def name(self, path: str) -> str:
    """A file's name in reports: its path relative to the input."""
    base = self.input_dir if os.path.isdir(self.input_dir) else os.path.dirname(self.input_dir)
    return os.path.relpath(path, base)

  def subjects(self, split: str) -> set[str]:
    return set().union(*(self.files[p].subjects[r].tolist()
                         for p, r in self.split.get(split, {}).items()))

  def _windows_of_subjects(self, split: str, of: str) -> int:
    """Windows of `split` whose subjects are in split `of`."""
    keys = self.subjects(of)
    return int(sum(np.isin(self.files[p].subjects[r], list(keys)).sum()
                   for p, r in self.split.get(split, {}).items())) if keys else 0

  def summary(self) -> dict:
    """summary.json: the same keys as for records (prepare.Prepared.summary), a file
    being a record, plus 'pulsedb' (input kind, sources, segments of other sources)."""
    reasons = collections.Counter()
    for f in self.files.values():
      reasons.update(dict(zip(*np.unique(f.reasons, return_counts=True))))
    return {
        'source': 'pulsedb', 'input_dir': self.input_dir, 'protocol': self.protocol,
        'fractions': list(self.fractions), 'seed': self.seed,
        'pulsedb': {'kind': self.kind, 'sources': list(self.options.sources),
                    'validation_fraction': self.options.validation_fraction,
                    'segments_of_other_sources': int(sum(
                        len(f.subjects) - len(f.rows) for f in self.files.values())),
                    'test_calbased_windows_of_validation_subjects':
                        self._windows_of_subjects('test_calbased', 'validation')},
        'records_read': len(self.files), 'records_failed': len(self.failures),
        'failures': [{'record': self.name(p), 'reason': why} for p, why in self.failures],
        'candidate_windows': int(sum(len(f.rows) for f in self.files.values())),
        'windows_kept': int(reasons.get('', 0)),
        'rejects': {r: int(reasons.get(r, 0)) for r in pulsedb.REJECT_REASONS},
        'splits': {name: {'windows': int(sum(len(r) for r in parts.values())),
                          'subjects': len(self.subjects(name))}
                   for name, parts in self.split.items()},
    }


def check_file(pf: pulsedb.PulseFile, sources, progress: bool) -> FileRows:
  """Reads every row of the selected sources once and judges it."""
  subjects = pulsedb.subjects_of(pf)
  codes = [pulsedb.SOURCE_CODE[s] for s in sources]
  rows = np.flatnonzero(np.isin(np.array([k[-1] for k in subjects.tolist()]), codes))
  sbp, dbp, reasons = [], [], []
  with tqdm(total=len(rows), desc=f'checking {os.path.basename(pf.path)}', unit='segment',
            disable=not progress, leave=False) as bar:
    for block in pulsedb.blocks(pf, rows, subjects, BLOCK, extras=False):
      sbp.append(block.sbp.astype(np.float32))
      dbp.append(block.dbp.astype(np.float32))
      reasons.append(pulsedb.verdicts(block))
      bar.update(len(block.rows))
  join = lambda parts, dtype: np.concatenate(parts) if parts else np.zeros(0, dtype)
  return FileRows(pf, subjects, rows, join(sbp, np.float32), join(dbp, np.float32),
                  join(reasons, str))


def _pulsedb_split(files: dict[str, FileRows], fraction: float, seed: int, failures):
  by_role = {f.file.role: f for f in files.values()}
  if 'train' not in by_role:
    unreadable = ''.join(f'; {path}: {why}' for path, why in failures)
    raise pulsedb.PulseDbError(
        'protocol pulsedb needs Train_Subset.mat (or VitalDB_Train_Subset.mat) among the '
        f'readable files; found {", ".join(sorted(by_role)) or "none"}{unreadable}')
  train = by_role['train']
  usable = train.rows[train.reasons == '']
  parts = splits.subject_split(train.subjects[usable], (1 - fraction, fraction, 0.0), seed)
  split = {'train': {train.file.path: usable[parts['train']]},
           'validation': {train.file.path: usable[parts['validation']]}}
  for role in pulsedb.SUBSET_SPLITS.values():
    if role in by_role and role != 'train':
      f = by_role[role]
      split[role] = {f.file.path: f.rows[f.reasons == '']}
  return split


def _pooled_split(files: dict[str, FileRows], protocol: str, fractions, seed: int):
  usable = {p: f.rows[f.reasons == ''] for p, f in files.items()}
  subjects = np.concatenate([files[p].subjects[r] for p, r in usable.items()]
                            or [np.zeros(0, str)])
  keys = [f'{os.path.basename(p)}:{row}' for p, r in usable.items() for row in r.tolist()]
  parts = splits.make_split(protocol, subjects, keys, fractions, seed)
  offsets = np.cumsum([0] + [len(r) for r in usable.values()])
  return {name: {p: r[idx[(idx >= lo) & (idx < hi)] - lo]
                 for (p, r), lo, hi in zip(usable.items(), offsets[:-1], offsets[1:])}
          for name, idx in parts.items()}


def check_held_out(plan: Plan) -> None:
  """Raises splits.SubjectLeakError if a calibration-free split shares a subject with
  train or validation (the protocol 'subject' is checked by splits.subject_split)."""
  subjects = {name: plan.subjects(name) for name in plan.split}
  seen = subjects.get('train', set()) | subjects.get('validation', set())
  if subjects.get('train', set()) & subjects.get('validation', set()):
    raise splits.SubjectLeakError('a subject is in both train and validation')
  for name in HELD_OUT:
    shared = sorted(subjects.get(name, set()) & seen)
    if shared:
      raise splits.SubjectLeakError(f'{name} shares {len(shared)} subject(s) with train or '
                                    f'validation (e.g. {shared[0]}): it is not calibration-free')


def plan(input_dir: str, protocol: str, fractions, seed: int,
         options: PulseDbOptions = PulseDbOptions(), progress: bool = True) -> Plan:
  """Finds, checks and splits the PulseDB files at `input_dir`."""
  unknown = sorted(set(options.sources) - set(pulsedb.SOURCES))
  if unknown or not options.sources:
    raise ValueError(f'PulseDB sources must be some of {pulsedb.SOURCES}, got {options.sources}')
  found = pulsedb.find_files(input_dir)
  kind = found[0].kind
  if protocol == 'pulsedb' and kind != 'subset':
    raise pulsedb.PulseDbError(
        f'{input_dir}: protocol pulsedb uses the official subset files (*_Subset.mat); '
        f'{kind} files have no official split: use --protocol random or subject')
  files, failures = {}, []
  for pf in tqdm(found, desc='PulseDB files', unit='file', disable=not progress):
    try:
      files[pf.path] = check_file(pf, options.sources, progress)
    except READ_ERRORS as e:
      failures.append((pf.path, str(e) if isinstance(e, pulsedb.PulseDbError) else
                       f'{type(e).__name__}: {e}'))
  if protocol == 'pulsedb':
    split = _pulsedb_split(files, options.validation_fraction, seed, failures)
  else:
    split = _pooled_split(files, protocol, fractions, seed)
  result = Plan(input_dir, protocol, tuple(fractions), seed, options, kind, files, failures,
                split)
  if protocol == 'pulsedb':
    check_held_out(result)
  return result


def write_reports(plan: Plan, directory: str) -> None:
  """Writes summary.json and windows.csv (every checked segment: 'file:row', subject,
  labels, verdict and split) into `directory`."""
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, 'summary.json'), 'w') as f:
    json.dump(plan.summary(), f, indent=2)
  with open(os.path.join(directory, 'windows.csv'), 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(windows.REPORT_COLUMNS)
    for path, rows in plan.files.items():
      name = plan.name(path)
      split_of = np.full(len(rows.rows), '', object)
      for split_name, parts in plan.split.items():
        split_of[np.searchsorted(rows.rows, parts.get(path, []))] = split_name
      for i, row in enumerate(rows.rows.tolist()):
        writer.writerow([f'{name}:{row}', rows.subjects[row], '', 'II', f'{rows.sbp[i]:.3f}',
                         f'{rows.dbp[i]:.3f}', rows.reasons[i] or 'accepted', split_of[i]])
