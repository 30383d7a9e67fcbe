"""PulseDB's files -> blocks of its 10-s segments with labels, subject keys and verdicts.

Three kinds of input, recognised from the file names:
  subset    `*_Subset.mat` (MATLAB v7.3): variable `Subset`, a 1 x 1 struct with
            Signals (h5py (1250, 3, N): ECG_F, PPG_F, ABP_Raw), SBP, DBP, Age, Gender and
            optionally Height, Weight, BMI; the official Train / CalBased_Test /
            CalFree_Test / AAMI_Test / AAMI_Cal files (and their `VitalDB_` versions).
  segments  `pXXXXXX.mat` (MATLAB v7.3) in `PulseDB_MIMIC/` or `PulseDB_Vital/`: variable
            `Subj_Wins`, an N x 1 struct array with ECG_F, PPG_F, SegSBP, SegDBP, Age,
            Gender (VitalDB also Height, Weight, BMI).
  csv       the paper's per-subject export `MIMIC*.csv` / `Vital*.csv`: columns
            ECG_F_1..1250, PPG_F_1..1250, SegDBP_AVG, SegSBP_AVG.

PulseDB's segments are already filtered, checked and labelled: nothing is re-filtered or
re-labelled; ECG and PPG are min-max scaled to [0, 1] per segment again (harmless, it
guards against rounding) and ABP is never read. Subject keys are `pXXXXXX_S` with
S = 0 for MIMIC-III and 1 for VitalDB, so that equal ids of the two sources never merge.
Files are read in contiguous blocks of segments: memory does not grow with file size.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
from typing import Iterator

import h5py
import numpy as np

from input_pipeline import matlab_v73

SAMPLES = 1250  # 10 s at 125 Hz
SOURCES = ('mimic', 'vitaldb')
SOURCE_CODE = {'mimic': '0', 'vitaldb': '1'}
KINDS = ('subset', 'segments', 'csv')
# Subset file name (without 'VitalDB_' and '_Subset.mat') -> split of the 'pulsedb' protocol.
SUBSET_SPLITS = {'Train': 'train', 'CalBased_Test': 'test_calbased',
                 'CalFree_Test': 'test_calfree', 'AAMI_Test': 'test_aami',
                 'AAMI_Cal': 'calibration_aami'}
REJECT_REASONS = ('empty', 'nan', 'flat_signal', 'sbp_le_dbp', 'label_range')
LABEL_RANGE_MMHG = (20.0, 250.0)
NUMERIC_EXTRAS = ('age', 'height', 'weight', 'bmi')  # years, cm, kg, kg/m^2; NaN if absent
_MATLAB_NAMES = {'age': 'Age', 'height': 'Height', 'weight': 'Weight', 'bmi': 'BMI',
                 'gender': 'Gender'}
_KEY_RE = re.compile(r'^p\d+_[01]$')
_ID_RE = re.compile(r'p\d+', re.IGNORECASE)
EXPECTED = ('PulseDB subset files (*_Subset.mat, variable Subset), segment files '
            '(PulseDB_MIMIC/ or PulseDB_Vital/ with pXXXXXX.mat, variable Subj_Wins) or the '
            "paper's CSV export (MIMIC*.csv / Vital*.csv with ECG_F_1..1250, PPG_F_1..1250, "
            'SegDBP_AVG, SegSBP_AVG)')


class PulseDbError(ValueError):
  """Input that is not PulseDB's layout; the message names the file and what was expected."""


@dataclasses.dataclass(frozen=True)
class PulseFile:
  """One input file. role: the subset's split name ('' for other kinds); source:
  'mimic' / 'vitaldb' for segment and CSV files ('' for subsets: per row, from the key)."""
  path: str
  kind: str
  role: str = ''
  source: str = ''


@dataclasses.dataclass
class Block:
  """A contiguous run of one file's segments (n rows).

  rows: (n,) row numbers in the file (0-based); signals: (n, 2, 1250) float64 [ECG_F,
  PPG_F] as stored (NaN where empty); sbp, dbp: (n,) mmHg; subject: (n,) keys;
  empty: (n,) True where MATLAB stored an empty signal or label; extras: 'age',
  'height', 'weight', 'bmi' (n,) float (NaN if absent) and 'gender' (n,) str.
  """
  file: PulseFile
  rows: np.ndarray
  signals: np.ndarray
  sbp: np.ndarray
  dbp: np.ndarray
  subject: np.ndarray
  empty: np.ndarray
  extras: dict


def subject_key(file_id: str, source: str) -> str:
  """'p000123' + 'vitaldb' -> 'p000123_1'."""
  return f'{file_id}_{SOURCE_CODE[source]}'


def source_of_key(key: str) -> str:
  return SOURCES[int(key[-1])]


def _classify(path: str) -> PulseFile | None:
  name = os.path.basename(path)
  folders = path.replace('\\', '/').lower().split('/')[:-1]
  if name.endswith('_Subset.mat'):
    stem = name[:-len('_Subset.mat')].removeprefix('VitalDB_')
    if stem not in SUBSET_SPLITS:
      raise PulseDbError(f'{path}: unknown PulseDB subset {stem!r}; expected one of '
                         f'{", ".join(f"{s}_Subset.mat" for s in SUBSET_SPLITS)}')
    return PulseFile(path, 'subset', role=SUBSET_SPLITS[stem])
  if re.fullmatch(r'p\d+\.mat', name):
    source = ('mimic' if 'pulsedb_mimic' in folders else
              'vitaldb' if 'pulsedb_vital' in folders else '')
    return PulseFile(path, 'segments', source=source)
  if name.endswith('.csv') and name.startswith(('MIMIC', 'Vital')):
    return PulseFile(path, 'csv', source='mimic' if name.startswith('MIMIC') else 'vitaldb')
  return None


def find_files(path: str) -> list[PulseFile]:
  """PulseDB files at `path` (a file, or a folder searched recursively), sorted by path.

  Raises PulseDbError when there are none, when kinds are mixed (a subset repeats the
  segment files' windows) or when two subset files hold the same split.
  """
  if os.path.isfile(path):
    paths = [path]
  elif os.path.isdir(path):
    paths = sorted(os.path.join(root, f) for root, _, files in os.walk(path) for f in files)
  else:
    raise FileNotFoundError(f'pulsedb: input not found: {path}')
  found = [f for f in map(_classify, paths) if f is not None]
  if not found:
    raise PulseDbError(f'{path}: no PulseDB files found; expected {EXPECTED}')
  kinds = sorted({f.kind for f in found})
  if len(kinds) > 1:
    raise PulseDbError(f'{path}: holds {" and ".join(kinds)} files, which repeat the same '
                       'segments; point --input at one kind')
  roles = [f.role for f in found if f.role]
  for role in set(roles):
    if roles.count(role) > 1:
      raise PulseDbError(f'{path}: several subset files hold the {role} split: ' + ', '.join(
          f.path for f in found if f.role == role) + '; keep one (VitalDB_* subsets are '
          'part of the combined ones)')
  return found


# ----------------------------------------------------------------------------- subsets


def _subset_group(file: h5py.File, path: str) -> h5py.Group:
  group = file.get('Subset')
  if group is None or matlab_v73.matlab_class(group) != 'struct':
    raise PulseDbError(f'{path}: no struct variable Subset (found {", ".join(file)})')
  missing = [f for f in ('Signals', 'SBP', 'DBP', 'Subject') if f not in group]
  if missing:
    raise PulseDbError(f'{path}: Subset lacks the field(s) {", ".join(missing)}')
  return group


def _signals_dataset(group, count: int, path: str) -> h5py.Dataset:
  signals = group['Signals']
  if signals.ndim != 3 or signals.shape[:2] != (SAMPLES, 3) or signals.shape[2] != count:
    raise PulseDbError(
        f'{path}: Subset.Signals has shape {signals.shape} in h5py, expected '
        f'({SAMPLES}, 3, {count}) (MATLAB {count} x 3 x {SAMPLES}: ECG_F, PPG_F, ABP_Raw)')
  return signals


def _subset_subjects(path: str) -> np.ndarray:
  with matlab_v73.open_file(path) as f:
    group = _subset_group(f, path)
    keys = matlab_v73.read_strings(f, group['Subject'], f'{path}: Subset.Subject')
    _signals_dataset(group, len(keys), path)  # the layout, before any signal is read
  bad = [k for k in keys if not _KEY_RE.match(k)]
  if bad:
    raise PulseDbError(f'{path}: subject keys must look like pXXXXXX_0 (MIMIC) or '
                       f'pXXXXXX_1 (VitalDB); found {bad[0]!r} ({len(bad)} such rows)')
  return np.array(keys, dtype=str)


def _subset_blocks(pf: PulseFile, rows: np.ndarray, subjects: np.ndarray,
                   block_size: int) -> Iterator[Block]:
  with matlab_v73.open_file(pf.path) as f:
    group = _subset_group(f, pf.path)
    count = group['Subject'].size
    signals = _signals_dataset(group, count, pf.path)
    present = {'SBP', 'DBP', *(m for m in _MATLAB_NAMES.values()
                                if m in group and not matlab_v73.is_empty(group[m]))}
    for start in range(0, count, block_size):
      at = slice(*np.searchsorted(rows, [start, start + block_size]))
      wanted = rows[at]
      if not len(wanted):
        continue
      lo, hi = int(wanted[0]), int(wanted[-1]) + 1  # one contiguous read per block

      def column(name, lo=lo, hi=hi, wanted=wanted):  # only this block's values
        if name not in present:
          return np.full(len(wanted), np.nan)
        return matlab_v73.read_column(group[name], count, f'{pf.path}: Subset.{name}', lo,
                                      hi)[wanted - lo]

      part = np.asarray(signals[:, 0:2, lo:hi], np.float64).transpose(2, 1, 0)[wanted - lo]
      gender = ([''] * len(wanted) if 'Gender' not in present else
                matlab_v73.read_strings(
                    f, matlab_v73.column_values(group['Gender'], lo, hi)[wanted - lo],
                    f'{pf.path}: Subset.Gender'))
      yield Block(file=pf, rows=wanted, signals=part, sbp=column('SBP'), dbp=column('DBP'),
                  subject=subjects[at], empty=np.zeros(len(wanted), bool),
                  extras={**{k: column(_MATLAB_NAMES[k]) for k in NUMERIC_EXTRAS},
                          'gender': np.array(gender, dtype=str)})


# ----------------------------------------------------------------------- segment files

_SEGMENT_FIELDS = {'ECG_F', 'PPG_F', 'SegSBP', 'SegDBP'}


def _segments_group(file: h5py.File, path: str) -> h5py.Group:
  group = file.get('Subj_Wins')
  if group is None or matlab_v73.matlab_class(group) != 'struct':
    raise PulseDbError(f'{path}: no struct array variable Subj_Wins (found {", ".join(file)})')
  missing = sorted(_SEGMENT_FIELDS - set(group))
  if missing:
    raise PulseDbError(f'{path}: Subj_Wins lacks the field(s) {", ".join(missing)}')
  return group


def segments_source(pf: PulseFile) -> str:
  """The file's source: its folder (PulseDB_MIMIC / PulseDB_Vital), else its fields
  (only VitalDB's segment files have Height, Weight and BMI)."""
  if pf.source:
    return pf.source
  with matlab_v73.open_file(pf.path) as f:
    return 'vitaldb' if 'Height' in _segments_group(f, pf.path) else 'mimic'


def _segments_count(path: str) -> int:
  with matlab_v73.open_file(path) as f:
    group = _segments_group(f, path)
    sizes = {group[n].size for n in _SEGMENT_FIELDS}
    if len(sizes) != 1:
      raise PulseDbError(f'{path}: Subj_Wins fields have different lengths {sorted(sizes)}')
    return sizes.pop()


def _segment_value(file, ref, length: int | None):
  """(values, empty) of one struct-array element: `length` samples or a scalar."""
  ds = file[ref]
  if matlab_v73.is_empty(ds):
    return None, True
  values = np.asarray(ds[()], np.float64).ravel()
  if len(values) != (length or 1):
    raise PulseDbError(f'{file.filename}: a segment field holds {len(values)} values, '
                       f'expected {length or 1}')
  return values, False


def _segment_blocks(pf: PulseFile, rows: np.ndarray, subjects: np.ndarray,
                    block_size: int) -> Iterator[Block]:
  with matlab_v73.open_file(pf.path) as f:
    group = _segments_group(f, pf.path)
    refs = {n: np.asarray(group[n][()]).ravel() for n in
            (*_SEGMENT_FIELDS, *(m for m in _MATLAB_NAMES.values() if m in group))}
    for start in range(0, len(rows), block_size):
      wanted = rows[start:start + block_size]
      n = len(wanted)
      signals = np.full((n, 2, SAMPLES), np.nan)
      values = {k: np.full(n, np.nan) for k in ('SegSBP', 'SegDBP', *NUMERIC_EXTRAS)}
      gender, empty = [''] * n, np.zeros(n, bool)
      for i, row in enumerate(wanted):
        for c, name in enumerate(('ECG_F', 'PPG_F')):
          x, e = _segment_value(f, refs[name][row], SAMPLES)
          empty[i] |= e
          if x is not None:
            signals[i, c] = x
        for key, name in (('SegSBP', 'SegSBP'), ('SegDBP', 'SegDBP'),
                          *((k, _MATLAB_NAMES[k]) for k in NUMERIC_EXTRAS)):
          if name in refs:
            x, e = _segment_value(f, refs[name][row], None)
            empty[i] |= e and key.startswith('Seg')
            if x is not None:
              values[key][i] = x[0]
        if 'Gender' in refs:
          gender[i] = matlab_v73.read_string(f[refs['Gender'][row]])
      yield Block(file=pf, rows=wanted, signals=signals, sbp=values['SegSBP'],
                  dbp=values['SegDBP'], subject=subjects[start:start + block_size], empty=empty,
                  extras={**{k: values[k] for k in NUMERIC_EXTRAS},
                          'gender': np.array(gender, dtype=str)})


# --------------------------------------------------------------------------------- CSV

_CSV_LABELS = ('SegSBP_AVG', 'SegDBP_AVG')


def _csv_columns(path: str, header: list[str]) -> dict[str, np.ndarray]:
  index = {name.strip(): i for i, name in enumerate(header)}
  wanted = {'ecg': [f'ECG_F_{i}' for i in range(1, SAMPLES + 1)],
            'ppg': [f'PPG_F_{i}' for i in range(1, SAMPLES + 1)],
            'labels': list(_CSV_LABELS)}
  missing = [n for names in wanted.values() for n in names if n not in index]
  if missing:
    raise PulseDbError(f'{path}: not the paper\'s PulseDB CSV export: missing {len(missing)} '
                       f'column(s) such as {missing[0]}; expected ECG_F_1..{SAMPLES}, '
                       f'PPG_F_1..{SAMPLES}, SegDBP_AVG, SegSBP_AVG')
  return {k: np.array([index[n] for n in names]) for k, names in wanted.items()}


def _csv_subject(path: str, source: str) -> str:
  stem = os.path.splitext(os.path.basename(path))[0]
  found = _ID_RE.findall(stem)
  return subject_key(found[-1].lower() if found else stem, source)


def _csv_count(path: str) -> int:
  """Data rows of the export (its non-blank lines after the header), without parsing
  them: the blocks parse every row anyway."""
  with open(path, newline='') as f:
    _csv_columns(path, next(csv.reader([f.readline()]), []))
    return sum(1 for line in f if line.strip())


def _csv_blocks(pf: PulseFile, rows: np.ndarray, subjects: np.ndarray,
                block_size: int) -> Iterator[Block]:
  wanted_rows = set(rows.tolist())
  with open(pf.path, newline='') as f:
    reader = csv.reader(f)
    columns = _csv_columns(pf.path, next(reader))
    needed = max(max(c) for c in columns.values()) + 1
    buffer, numbers = [], []

    def block():
      values = np.array(buffer, np.float64)
      idx = np.array(numbers)
      return Block(file=pf, rows=idx,
                   signals=np.stack([values[:, columns['ecg']], values[:, columns['ppg']]], 1),
                   sbp=values[:, columns['labels'][0]], dbp=values[:, columns['labels'][1]],
                   subject=subjects[np.searchsorted(rows, idx)],
                   empty=np.zeros(len(idx), bool),
                   extras={**{k: np.full(len(idx), np.nan) for k in NUMERIC_EXTRAS},
                           'gender': np.full(len(idx), '', dtype=str)})

    row_number = -1
    for row in reader:
      if not row:
        continue
      row_number += 1
      if row_number not in wanted_rows:
        continue
      if len(row) < needed:
        raise PulseDbError(f'{pf.path}: row {row_number + 2} has {len(row)} values, the '
                           f'header {needed} or more (truncated file?)')
      buffer.append([_number(row[i]) for i in range(needed)])
      numbers.append(row_number)
      if len(buffer) == block_size:
        yield block()
        buffer, numbers = [], []
    if buffer:
      yield block()


def _number(text: str) -> float:
  try:
    return float(text)
  except ValueError:
    return np.nan  # an empty or non-numeric cell: the row is rejected as 'nan'


# ------------------------------------------------------------------------------- common


def subjects_of(pf: PulseFile) -> np.ndarray:
  """(N,) subject key of every row of the file (cheap: names, not signals). Checks the
  file's layout on the way (PulseDbError, matlab_v73.MatFileError, OSError)."""
  if pf.kind == 'subset':
    return _subset_subjects(pf.path)
  if pf.kind == 'segments':
    stem = os.path.splitext(os.path.basename(pf.path))[0]
    return np.full(_segments_count(pf.path), subject_key(stem, segments_source(pf)))
  return np.full(_csv_count(pf.path), _csv_subject(pf.path, pf.source))


def blocks(pf: PulseFile, rows: np.ndarray, subjects: np.ndarray,
           block_size: int = 1024) -> Iterator[Block]:
  """The file's rows `rows` (sorted, increasing) in blocks of at most block_size rows
  (subset files: of rows within one range [k * block_size, (k + 1) * block_size)).

  subjects: the key of each of `rows` (from subjects_of).
  Raises PulseDbError, matlab_v73.MatFileError or OSError (h5py) for files that are
  corrupt or not PulseDB's layout.
  """
  rows = np.asarray(rows, np.int64)
  if len(rows) and np.any(np.diff(rows) <= 0):
    raise ValueError('rows must be strictly increasing')  # h5py needs increasing indices
  reader = {'subset': _subset_blocks, 'segments': _segment_blocks, 'csv': _csv_blocks}[pf.kind]
  return reader(pf, rows, subjects, block_size)


def verdicts(block: Block) -> np.ndarray:
  """(n,) reject reason per row ('' when usable), the first failing rule in
  REJECT_REASONS order: a MATLAB empty; a non-finite sample or label; a constant ECG or
  PPG; SBP <= DBP; a label outside 20-250 mmHg."""
  finite = np.isfinite(block.signals).all(axis=(1, 2)) & np.isfinite(block.sbp) & np.isfinite(
      block.dbp)
  with np.errstate(invalid='ignore'):
    span = block.signals.max(axis=2) - block.signals.min(axis=2)  # (n, 2)
    lo, hi = LABEL_RANGE_MMHG
    labels = np.stack([block.sbp, block.dbp])
    failing = {'empty': block.empty, 'nan': ~finite, 'flat_signal': (span <= 0).any(axis=1),
               'sbp_le_dbp': block.sbp <= block.dbp,
               'label_range': ((labels < lo) | (labels > hi)).any(axis=0)}
  reasons = np.full(len(block.rows), '', dtype=object)
  for reason in REJECT_REASONS:
    reasons[(reasons == '') & failing[reason]] = reason
  return reasons.astype(str)

