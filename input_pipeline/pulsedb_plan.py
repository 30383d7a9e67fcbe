"""PulseDB's files -> a windowing job (input_pipeline/jobs.py): blocks of segments as the
units of parallel work, their splits decided from names before any signal is read.

Listing (`window_job`) opens each file for its layout and its rows' subject keys only.
The split of every row is then known:
  pulsedb  the official files: Train -> 'train' minus whole subjects carved out as
           'validation' (a seeded fraction of Train's subjects of the selected sources);
           CalBased_Test -> 'test_calbased' (calibration-based: subjects also in
           training); CalFree_Test -> 'test_calfree', AAMI_Test -> 'test_aami', AAMI_Cal ->
           'calibration_aami' (calibration-free: asserted disjoint from train and
           validation, from the names when listing and again over the windows written).
  random   the paper's split: each segment by a seeded hash of its key '<file>:<row>'
           (80/10/10 with seed 42 by default, in expectation).
  subject  whole subjects of all files shuffled and cut by the fractions (disjointness
           asserted).

A unit of work (`BlockTask`) is at most BLOCK rows of one file (subset files: rows
within one range [k * BLOCK, (k + 1) * BLOCK), read contiguously); `process_block` reads
it, judges every row (pulsedb.verdicts: PulseDB's segments come filtered and labelled)
and returns its usable rows as examples of their split. A file that cannot be listed is
named with the reason and left out whole; a block that cannot be read is named (file
and rows) and left out, the rest of its file kept.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np
from tqdm import tqdm

from input_pipeline import jobs, matlab_v73, pulsedb, splits, windows

BLOCK = 1024  # segments per unit of work: 10 MB of float32 ECG + PPG, 30 MB as stored
READ_ERRORS = (pulsedb.PulseDbError, matlab_v73.MatFileError, OSError, KeyError)
# Splits of the 'pulsedb' protocol whose subjects must not train (calibration-free).
HELD_OUT = ('test_calfree', 'test_aami', 'calibration_aami')


@dataclasses.dataclass(frozen=True)
class PulseDbOptions:
  """PulseDB-only choices of a dataset."""
  sources: tuple[str, ...] = pulsedb.SOURCES  # 'mimic' and/or 'vitaldb'
  validation_fraction: float = 0.1  # protocol 'pulsedb': share of Train's subjects


@dataclasses.dataclass(frozen=True, eq=False)
class BlockTask:
  """Rows of one file to read, with their subjects and splits: the unit of work."""
  index: int  # position among all files' blocks (the report's order)
  file: pulsedb.PulseFile
  file_name: str  # the file's name in reports and keys (its path relative to the input)
  rows: np.ndarray  # (n,) increasing row numbers (rows of the selected sources)
  subjects: np.ndarray  # (n,) their subject keys
  splits: np.ndarray  # (n,) their split by subject; '' = by the hash of the key (random)

  @property
  def name(self) -> str:
    return f'{self.file_name} rows {self.rows[0]}-{self.rows[-1]}'


@dataclasses.dataclass
class BlockResult:
  """What one block gave (jobs.py's result): its rows' verdicts and splits."""
  task: BlockTask
  block: pulsedb.Block | None
  reasons: np.ndarray  # (n,) reject reason per row, '' where usable
  splits: np.ndarray  # (n,) split of each usable row, '' for the others
  failure: str = ''

  def _key(self, i: int) -> str:
    return f'{self.task.file_name}:{self.task.rows[i]}'

  def examples(self) -> list[tuple[str, str, dict]]:
    if self.block is None:
      return []
    block, signals = self.block, windows.minmax_scale(self.block.signals)
    return [(self.splits[i], self._key(i), {
        'signals': signals[i], 'sbp': block.sbp[i], 'dbp': block.dbp[i],
        'subject': block.subject[i], 'record': self._key(i),
        'source': pulsedb.source_of_key(block.subject[i]), 'lead': 'II', 'start_s': np.nan,
        'gender': block.extras['gender'][i], **{k: block.extras[k][i]
                                                for k in pulsedb.NUMERIC_EXTRAS}})
            for i in np.flatnonzero(self.splits != '')]

  def verdicts(self) -> list[tuple[str, str, str]]:
    return list(zip(self.reasons.tolist(), self.splits.tolist(), self.task.subjects.tolist()))

  def report_rows(self) -> list[list[str]]:
    if self.block is None:
      return []
    return [[self._key(i), self.task.subjects[i], '', 'II', f'{self.block.sbp[i]:.3f}',
             f'{self.block.dbp[i]:.3f}', self.reasons[i] or 'accepted', self.splits[i]]
            for i in range(len(self.task.rows))]


def process_block(task: BlockTask, options) -> BlockResult:
  """Reads and judges one block (options: prepare.PrepareOptions): a pure function. Any
  error fails the block as a whole, with the reason; it never stops the other blocks."""
  try:
    (block,) = pulsedb.blocks(task.file, task.rows, task.subjects, BLOCK)
    reasons = pulsedb.verdicts(block)
  except Exception as e:  # pylint: disable=broad-except  (one bad block must not stop a job)
    return BlockResult(task, None, np.zeros(0, str), np.zeros(0, str), _reason(e))
  split = np.array([s or splits.hash_split(f'{task.file_name}:{row}', options.fractions,
                                           options.seed)
                    for s, row in zip(task.splits.tolist(), task.rows.tolist())], dtype=object)
  split[reasons != ''] = ''
  return BlockResult(task, block, reasons, split.astype(str))


def _reason(e: Exception) -> str:
  return str(e) if isinstance(e, pulsedb.PulseDbError) else f'{type(e).__name__}: {e}'


@dataclasses.dataclass(frozen=True)
class _Listing:
  """What summary.json needs of the listing (besides the blocks' Summary)."""
  kind: str
  files: int  # files listed
  failures: tuple[tuple[str, str], ...]  # (file name, reason) of files that were not
  other_sources: int  # rows of files listed that belong to sources not selected
  split_names: tuple[str, ...]
  block_files: tuple[str, ...]  # per block index: its file's name


def check_held_out(subjects_of: dict[str, set]) -> None:
  """Raises splits.SubjectLeakError if train and validation share a subject, or if a
  calibration-free split shares one with either ({split: subjects}, protocol pulsedb)."""
  seen = subjects_of.get('train', set()) | subjects_of.get('validation', set())
  if subjects_of.get('train', set()) & subjects_of.get('validation', set()):
    raise splits.SubjectLeakError('a subject is in both train and validation')
  for name in HELD_OUT:
    shared = sorted(subjects_of.get(name, set()) & seen)
    if shared:
      raise splits.SubjectLeakError(f'{name} shares {len(shared)} subject(s) with train or '
                                    f'validation (e.g. {shared[0]}): it is not calibration-free')


def _official_splits(listed, fraction: float, seed: int, failures) -> list[np.ndarray]:
  """Protocol pulsedb: each listed file's rows' splits."""
  roles = [f.role for f, _, _, _ in listed]
  if 'train' not in roles:
    unreadable = ''.join(f'; {name}: {why}' for name, why in failures)
    raise pulsedb.PulseDbError(
        'protocol pulsedb needs Train_Subset.mat (or VitalDB_Train_Subset.mat) among the '
        f'readable files; found {", ".join(sorted(roles)) or "none"}{unreadable}')
  train_subjects = listed[roles.index('train')][3]
  of = splits.assign_subjects(train_subjects, (1 - fraction, fraction, 0.0), seed)
  result = [np.array([of[s] for s in subjects.tolist()], dtype=str) if f.role == 'train'
            else np.full(len(subjects), f.role) for f, _, _, subjects in listed]
  subjects_of = {}
  for split, (_, _, _, subjects) in zip(result, listed):
    for name in np.unique(split).tolist():
      subjects_of.setdefault(name, set()).update(subjects[split == name].tolist())
  check_held_out(subjects_of)
  return result


def window_job(options) -> jobs.WindowJob:
  """The job of the PulseDB files at options.input_dir (options: prepare.PrepareOptions):
  one BlockTask per BLOCK rows of the selected sources. Raises PulseDbError (no PulseDB
  files, an official split without Train) or SubjectLeakError before any signal is read."""
  sources = options.pulsedb.sources
  unknown = sorted(set(sources) - set(pulsedb.SOURCES))
  if unknown or not sources:
    raise ValueError(f'PulseDB sources must be some of {pulsedb.SOURCES}, got {sources}')
  found = pulsedb.find_files(options.input_dir)
  kind = found[0].kind
  if options.protocol == 'pulsedb' and kind != 'subset':
    raise pulsedb.PulseDbError(
        f'{options.input_dir}: protocol pulsedb uses the official subset files (*_Subset.mat); '
        f'{kind} files have no official split: use --protocol random or subject')
  if options.protocol != 'pulsedb':
    splits.check_protocol(options.protocol)
  base = options.input_dir if os.path.isdir(options.input_dir) else os.path.dirname(
      options.input_dir)
  codes = [pulsedb.SOURCE_CODE[s] for s in sources]
  listed, failures, other = [], [], 0  # listed: (file, name, rows, their subjects)
  for pf in tqdm(found, desc='listing PulseDB files', unit='file', leave=False):
    name = os.path.relpath(pf.path, base)
    try:
      subjects = pulsedb.subjects_of(pf)
    except READ_ERRORS as e:
      failures.append((name, _reason(e)))
      continue
    rows = np.flatnonzero(np.isin(np.array([k[-1] for k in subjects.tolist()]), codes))
    listed.append((pf, name, rows, subjects[rows]))
    other += len(subjects) - len(rows)
  if options.protocol == 'pulsedb':
    row_splits = _official_splits(listed, options.pulsedb.validation_fraction, options.seed,
                                  failures)
    split_names = ('train', 'validation', *(r for r in pulsedb.SUBSET_SPLITS.values()
                                             if r != 'train' and r in {f.role for f, *_ in listed}))
  elif options.protocol == 'subject':
    of = splits.assign_subjects(np.concatenate([s for *_, s in listed] or [np.zeros(0, str)]),
                                options.fractions, options.seed)
    row_splits = [np.array([of[s] for s in subjects.tolist()], dtype=str)
                  for *_, subjects in listed]
    split_names = splits.SPLITS
  else:
    row_splits = [np.full(len(rows), '') for _, _, rows, _ in listed]
    split_names = splits.SPLITS
  tasks, block_files = [], []
  for (pf, name, rows, subjects), split in zip(listed, row_splits):
    starts = np.flatnonzero(np.diff(rows // BLOCK, prepend=-1)) if pf.kind == 'subset' else \
        np.arange(0, len(rows), BLOCK)
    for part in np.split(np.arange(len(rows)), starts[1:]) if len(rows) else []:
      tasks.append(BlockTask(len(tasks), pf, name, rows[part], subjects[part], split[part]))
      block_files.append(name)
  listing = _Listing(kind, len(listed), tuple(failures), other, tuple(split_names),
                     tuple(block_files))
  return jobs.WindowJob(units=tasks, process=functools.partial(process_block, options=options),
                        summarise=functools.partial(_summary, options=options, listing=listing),
                        split_names=listing.split_names, unit='block')


def _summary(total: jobs.Summary, options, listing: _Listing) -> dict:
  """summary.json: the keys of records' (a file being a record; a block that failed is
  a failure of its own) plus 'pulsedb' (input kind, sources, segments of other sources,
  test_calbased windows of validation subjects)."""
  result = total.to_dict(options, listing.split_names, pulsedb.REJECT_REASONS)
  if options.protocol == 'pulsedb':
    check_held_out({name: total.subjects(name) for name in listing.split_names})
  of_validation = total.subjects('validation')
  calbased = total.subject_windows.get('test_calbased', {})
  return {
      **result,
      'records_read': listing.files - len({listing.block_files[i] for i, _, _ in total.failures}),
      'records_failed': len(listing.failures) + len(total.failures),
      'failures': [{'record': name, 'reason': why} for name, why in listing.failures] +
                  result['failures'],
      'pulsedb': {'kind': listing.kind, 'sources': list(options.pulsedb.sources),
                  'validation_fraction': options.pulsedb.validation_fraction,
                  'segments_of_other_sources': listing.other_sources,
                  'test_calbased_windows_of_validation_subjects': int(sum(
                      calbased.get(s, 0) for s in of_validation))},
  }
