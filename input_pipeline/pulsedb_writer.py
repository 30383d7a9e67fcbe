"""Writes files in PulseDB's layouts (MATLAB v7.3 subsets and segment files, the paper's
CSV export) from arrays: test inputs, benchmarks, and a synthetic stand-in for PulseDB.

Signals are given in the model's order, (N, 3, 1250) float64 [ECG_F, PPG_F, ABP]
(MATLAB N x 3 x 1250, which h5py stores as (1250, 3, N)); labels in mmHg.
"""

from __future__ import annotations

import csv
import os
from typing import Iterable

import numpy as np

from input_pipeline import matlab_v73, prepare
from input_pipeline.pulsedb import SAMPLES


def write_subset(path: str, blocks: Iterable[np.ndarray], count: int, sbp, dbp, subjects,
                 age=None, gender=None, height=None, weight=None, bmi=None,
                 compression: str | None = 'gzip') -> None:
  """A `Subset` file: `blocks` yields (n, 3, 1250) signal rows adding up to `count`
  (written as they come: the file may be larger than memory); the other fields are
  (count,) arrays (subjects: 'pXXXXXX_S' keys, gender 'M'/'F'). Height, weight and BMI
  are left out when None (files from before 2022-12)."""
  column = lambda values: np.asarray(values, float)[:, None]  # MATLAB N x 1
  optional = {'Height': height, 'Weight': weight, 'BMI': bmi}
  with matlab_v73.Writer(path) as w:
    group = w.struct(w.root, 'Subset', {
        'Subject': w.cell(subjects),
        'Signals': w.unfilled((count, 3, SAMPLES), chunks=(min(count, 64), 3, SAMPLES)[::-1],
                              compression=compression),
        'SBP': column(sbp), 'DBP': column(dbp),
        'Age': column(age if age is not None else np.full(count, 60.0)),
        'Gender': w.cell(gender if gender is not None else ['M'] * count),
        **{name: column(v) for name, v in optional.items() if v is not None}})
    signals = group['Signals']
    start = 0
    for block in blocks:
      block = np.asarray(block, np.float64)
      signals[:, :, start:start + len(block)] = block.transpose(2, 1, 0)
      start += len(block)
    if start != count:
      raise ValueError(f'blocks gave {start} rows, expected {count}')


def write_segments(path: str, signals: np.ndarray, sbp, dbp, age: float = 60.0,
                   gender: str = 'M', demographics: dict | None = None,
                   empty: Iterable[tuple[int, str]] = ()) -> None:
  """A segment file (`Subj_Wins`, N x 1 struct array) of one subject: signals (N, 3,
  1250), sbp/dbp (N,). demographics: {'Height': cm, 'Weight': kg, 'BMI': ...} as in
  VitalDB's files (None for MIMIC's). empty: (row, field) pairs stored as MATLAB empties.
  """
  n = len(signals)
  value = lambda x: np.atleast_2d(np.asarray(x, float))  # MATLAB 1 x k
  fields = {'ECG_F': [value(s[0]) for s in signals], 'PPG_F': [value(s[1]) for s in signals],
            'ABP_Raw': [value(s[2]) for s in signals],
            'SegSBP': [value(v) for v in sbp], 'SegDBP': [value(v) for v in dbp],
            'Age': [value(age)] * n, 'Gender': [gender] * n}
  for name, v in (demographics or {}).items():
    fields[name] = [value(v)] * n
  for row, name in empty:
    fields[name][row] = None
  with matlab_v73.Writer(path) as w:
    w.struct_array(w.root, 'Subj_Wins', fields)


def write_csv(path: str, signals: np.ndarray, sbp, dbp) -> None:
  """The paper's per-subject CSV: ECG_F_1..1250, PPG_F_1..1250, SegDBP_AVG, SegSBP_AVG
  (and a BMI column, which readers ignore). NaN is written as an empty cell."""
  header = ([f'ECG_F_{i}' for i in range(1, SAMPLES + 1)] +
            [f'PPG_F_{i}' for i in range(1, SAMPLES + 1)] + ['SegDBP_AVG', 'SegSBP_AVG', 'BMI'])
  text = lambda x: '' if not np.isfinite(x) else repr(float(x))
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(header)
    for s, systolic, diastolic in zip(signals, sbp, dbp):
      writer.writerow([text(x) for x in (*s[0], *s[1], diastolic, systolic)] + ['24.5'])


def write_synthetic_subsets(directory: str, cohort, calfree_fraction: float = 0.25,
                            calbased_fraction: float = 0.2) -> dict[str, int]:
  """PulseDB-style subset files from the synthetic cohort (a stand-in for PulseDB to try
  the import, the notebook and the 'pulsedb' protocol on): Train_Subset.mat and
  CalBased_Test_Subset.mat share subjects (the last `calbased_fraction` of each
  subject's windows are CalBased), CalFree_Test_Subset.mat holds the last
  `calfree_fraction` of the subjects. Subject i becomes key p<i>_<i % 2>. ABP is not
  kept by the synthetic windows: channel 2 is zeros. Returns {file name: rows}."""
  windows = prepare.prepare(prepare.PrepareOptions(cohort=cohort), progress=False)
  index = np.array([int(s[1:]) for s in windows.subject])
  keys = np.array([f'p{i:06d}_{i % 2}' for i in index])
  order = np.argsort(keys, kind='stable')  # PulseDB's rows are grouped by sorted key
  calfree = index >= np.quantile(np.unique(index), 1 - calfree_fraction)
  position = np.zeros(len(index))
  for i in np.unique(index):
    mine = np.flatnonzero(index == i)
    position[mine] = np.arange(len(mine)) / len(mine)
  parts = {'Train_Subset.mat': ~calfree & (position < 1 - calbased_fraction),
           'CalBased_Test_Subset.mat': ~calfree & (position >= 1 - calbased_fraction),
           'CalFree_Test_Subset.mat': calfree}
  os.makedirs(directory, exist_ok=True)
  for name, chosen in parts.items():
    rows = order[chosen[order]]
    signals = np.concatenate([windows.signals[rows].astype(np.float64),
                              np.zeros((len(rows), 1, SAMPLES))], axis=1)
    write_subset(os.path.join(directory, name), [signals], len(rows), windows.sbp[rows],
                 windows.dbp[rows], keys[rows], age=40.0 + index[rows] % 40,
                 gender=['F' if i % 3 else 'M' for i in index[rows]])
  return {name: int(chosen.sum()) for name, chosen in parts.items()}
