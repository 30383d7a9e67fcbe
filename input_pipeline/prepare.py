"""A source of records -> accepted windows, their split and a report of what was dropped.

Sources: 'synthetic' (the built-in cohort), 'mimic3' (a folder of WFDB records),
'vitaldb' (a folder of .vital files); 'pulsedb' (PulseDB's own files, already windowed)
streams instead, through input_pipeline/pulsedb_plan.py. A record that cannot be read
is reported by name with the reason and skipped; every candidate window is kept in the
report with its verdict. Accepted windows are held in memory (10 kB each: 100,000 windows take 1 GB).
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import os
from typing import Callable

import numpy as np
from tqdm import tqdm

from input_pipeline import mimic3, pulsedb_plan, splits, synthetic, vitaldb_files
from input_pipeline.records import Record, RecordError
from input_pipeline.windows import REJECT_REASONS, REPORT_COLUMNS, QualityRules, Window, windows_of

SOURCES = ('synthetic', 'mimic3', 'vitaldb', 'pulsedb')


@dataclasses.dataclass(frozen=True)
class PrepareOptions:
  """Everything that decides which windows a dataset holds."""
  source: str = 'synthetic'
  input_dir: str | None = None  # folder of records (mimic3, vitaldb) or PulseDB files
  # 'subject' (calibration-free), 'random' (calibration-based) or, for PulseDB's subset
  # files, 'pulsedb' (the official files' splits)
  protocol: str = 'subject'
  fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train, validation, test
  seed: int = 42  # split seed
  cohort: synthetic.CohortConfig = synthetic.CohortConfig()
  channels: mimic3.ChannelNames = mimic3.ChannelNames()
  tracks: vitaldb_files.TrackNames = vitaldb_files.TrackNames()
  rules: QualityRules = QualityRules()
  pulsedb: pulsedb_plan.PulseDbOptions = pulsedb_plan.PulseDbOptions()


@dataclasses.dataclass
class Prepared:
  """Accepted windows (arrays over N windows), their split, and the full report."""
  signals: np.ndarray  # (N, 2, 1250) float32, [ECG, PPG] scaled to [0, 1]
  sbp: np.ndarray  # (N,) float32 mmHg
  dbp: np.ndarray  # (N,) float32 mmHg
  subject: np.ndarray  # (N,) str
  record: np.ndarray  # (N,) str
  source: np.ndarray  # (N,) str
  lead: np.ndarray  # (N,) str
  start_s: np.ndarray  # (N,) float32, window start within its record
  split: dict[str, np.ndarray]  # split name -> indices into the N windows
  candidates: list[Window]  # every candidate window (signals dropped), in order
  failures: list[tuple[str, str]]  # (record, reason) of records that could not be read
  records_read: int
  options: PrepareOptions

  def summary(self) -> dict:
    rejects = collections.Counter(w.reject for w in self.candidates if w.reject)
    return {
        'source': self.options.source, 'input_dir': self.options.input_dir,
        'protocol': self.options.protocol, 'fractions': list(self.options.fractions),
        'seed': self.options.seed,
        'records_read': self.records_read, 'records_failed': len(self.failures),
        'failures': [{'record': r, 'reason': why} for r, why in self.failures],
        'candidate_windows': len(self.candidates), 'windows_kept': int(len(self.sbp)),
        'rejects': {reason: rejects.get(reason, 0) for reason in REJECT_REASONS},
        'splits': {name: {'windows': int(len(idx)),
                          'subjects': int(len(np.unique(self.subject[idx])))}
                   for name, idx in self.split.items()},
    }


def record_loaders(options: PrepareOptions) -> list[tuple[str, Callable[[], Record]]]:
  """(name, load) for every record of the source, in a deterministic order."""
  if options.source == 'synthetic':
    return [(f'synthetic_{i:04d}', lambda i=i: synthetic.subject(i, options.cohort)[0])
            for i in range(options.cohort.num_subjects)]
  if options.source not in SOURCES or options.source == 'pulsedb':
    raise ValueError(f'unknown record source {options.source!r}; expected one of '
                     f'{SOURCES[:-1]} (PulseDB files are read by pulsedb_plan)')
  if not options.input_dir or not os.path.isdir(options.input_dir):
    raise FileNotFoundError(f'{options.source}: input folder not found: {options.input_dir}')
  if options.source == 'mimic3':
    paths = mimic3.find_records(options.input_dir)
    return [(p, lambda p=p: mimic3.read_record(p, options.channels)) for p in paths]
  paths = vitaldb_files.find_records(options.input_dir)
  return [(p, lambda p=p: vitaldb_files.read_vital(p, options.tracks)) for p in paths]


def prepare(options: PrepareOptions = PrepareOptions(), progress: bool = True) -> Prepared:
  """Reads every record, windows and labels it, and splits the accepted windows."""
  loaders = record_loaders(options)
  if not loaders:
    raise FileNotFoundError(f'{options.source}: no records found in {options.input_dir}')
  accepted, candidates, failures = [], [], []
  bar = tqdm(loaders, desc=f'{options.source} records', unit='record', disable=not progress)
  for name, load in bar:
    try:
      record = load()
    except RecordError as e:
      failures.append((name, str(e)))
      continue
    for window in windows_of(record, options.rules):
      if window.accepted:
        accepted.append(window)
      candidates.append(dataclasses.replace(window, signals=None))
    bar.set_postfix(windows=len(accepted), failed=len(failures))
  column = lambda attr, dtype: np.array([getattr(w, attr) for w in accepted], dtype)
  subject = column('subject', str)
  return Prepared(
      signals=(np.stack([w.signals for w in accepted]) if accepted
               else np.zeros((0, 2, 1250), np.float32)),
      sbp=column('sbp_mmhg', np.float32), dbp=column('dbp_mmhg', np.float32),
      subject=subject, record=column('record', str), source=column('source', str),
      lead=column('lead', str), start_s=column('start_s', np.float32),
      split=splits.make_split(options.protocol, subject, options.fractions, options.seed),
      candidates=candidates, failures=failures, records_read=len(loaders) - len(failures),
      options=options)


def write_reports(prepared: Prepared, directory: str) -> tuple[str, str]:
  """Writes summary.json and windows.csv into `directory`; returns their paths."""
  os.makedirs(directory, exist_ok=True)
  summary_path = os.path.join(directory, 'summary.json')
  with open(summary_path, 'w') as f:
    json.dump(prepared.summary(), f, indent=2)
  split_of = {}
  for name, indices in prepared.split.items():
    for i in indices:
      split_of[(prepared.record[i], float(prepared.start_s[i]))] = name
  csv_path = os.path.join(directory, 'windows.csv')
  with open(csv_path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(REPORT_COLUMNS)
    for w in prepared.candidates:
      writer.writerow([w.record, w.subject, f'{w.start_s:.3f}', w.lead,
                       f'{w.sbp_mmhg:.3f}', f'{w.dbp_mmhg:.3f}', w.reject or 'accepted',
                       split_of.get((w.record, float(np.float32(w.start_s))), '')])
  return summary_path, csv_path
