"""A source of records -> accepted windows, their split and a report of what was dropped.

Sources: 'synthetic' (the built-in cohort), 'mimic3' (a folder of WFDB records),
'vitaldb' (a folder of .vital files); 'pulsedb' (PulseDB's own files, already windowed:
blocks of their segments, input_pipeline/pulsedb_plan.py). A record that cannot be read
is reported by name with the reason and skipped; every candidate window is kept in the
report with its verdict.

Everything here works one record at a time (`process_record`, a pure function of a
`RecordTask` and the options): `window_job` hands the records and that function to
input_pipeline/beam_prepare.py, which maps it over records with Apache Beam to write
datasets; `prepare` runs it in this process and keeps the windows in memory (10 kB each:
100,000 windows take 1 GB) for small cohorts and tests.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import os

import numpy as np
from tqdm import tqdm

from input_pipeline import jobs, mimic3, pulsedb_plan, splits, synthetic, vitaldb_files
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


@dataclasses.dataclass(frozen=True)
class RecordTask:
  """One record to read: the unit of parallel work. Known before any signal is read."""
  index: int  # position in the source's sorted record list
  path: str  # what the reader opens (a file path; the subject index for synthetic)
  name: str  # the record's name in reports and keys (its path relative to the input)
  subject: str  # its subject, from the name (MIMIC-III pNNNNNN, the .vital file's stem)
  split: str  # protocol 'subject': the subject's split; protocol 'random': ''


@dataclasses.dataclass
class RecordResult:
  """What one record gave: every candidate window, the split of each, or the reason the
  record could not be used."""
  task: RecordTask
  windows: list[Window]
  splits: list[str]  # per window: its split when accepted, else ''
  failure: str = ''

  def examples(self) -> list[tuple[str, str, dict]]:
    """(split, window_key, example: the dataset's features) of each accepted window."""
    return [(split, window_key(self.task, w), {
        'signals': w.signals, 'sbp': w.sbp_mmhg, 'dbp': w.dbp_mmhg, 'start_s': w.start_s,
        'subject': w.subject, 'record': w.record, 'source': w.source, 'lead': w.lead})
            for w, split in zip(self.windows, self.splits) if split]

  def verdicts(self) -> list[tuple[str, str, str]]:
    """(reject reason or '', split or '', subject) of every candidate window."""
    return [(w.reject, split, w.subject) for w, split in zip(self.windows, self.splits)]

  def report_rows(self) -> list[list[str]]:
    """windows.csv rows (REPORT_COLUMNS) of every candidate window."""
    return [[w.record, w.subject, f'{w.start_s:.3f}', w.lead, f'{w.sbp_mmhg:.3f}',
             f'{w.dbp_mmhg:.3f}', w.reject or 'accepted', split]
            for w, split in zip(self.windows, self.splits)]


def _subject_of(source: str, path: str) -> str:
  if source == 'synthetic':
    return f's{int(path):04d}'
  if source == 'mimic3':
    return mimic3.subject_of(path)
  return os.path.basename(path).removesuffix('.vital')


def record_tasks(options: PrepareOptions) -> list[RecordTask]:
  """Every record of the source, in a deterministic order, with its subject and, for the
  subject protocol, its subject's split (whole subjects, from the list of names)."""
  splits.check_protocol(options.protocol)
  if options.source == 'synthetic':
    paths = [str(i) for i in range(options.cohort.num_subjects)]
    names = [f'synthetic_{i:04d}' for i in range(options.cohort.num_subjects)]
  elif options.source in ('mimic3', 'vitaldb'):
    if not options.input_dir or not os.path.isdir(options.input_dir):
      raise FileNotFoundError(f'{options.source}: input folder not found: {options.input_dir}')
    find = mimic3.find_records if options.source == 'mimic3' else vitaldb_files.find_records
    paths = find(options.input_dir)
    names = [os.path.relpath(p, options.input_dir) for p in paths]
  else:
    raise ValueError(f'unknown record source {options.source!r}; expected one of '
                     f'{SOURCES[:-1]} (PulseDB files are read by pulsedb_plan)')
  if not paths:
    raise FileNotFoundError(f'{options.source}: no records found in {options.input_dir}')
  subjects = [_subject_of(options.source, p) for p in paths]
  of = (splits.assign_subjects(subjects, options.fractions, options.seed)
        if options.protocol == 'subject' else {})
  return [RecordTask(i, p, n, s, of.get(s, ''))
          for i, (p, n, s) in enumerate(zip(paths, names, subjects))]


def load_record(task: RecordTask, options: PrepareOptions) -> Record:
  """Reads the record of `task` (RecordError if it cannot be used)."""
  if options.source == 'synthetic':
    return synthetic.subject(int(task.path), options.cohort)[0]
  if options.source == 'mimic3':
    return mimic3.read_record(task.path, options.channels)
  return vitaldb_files.read_vital(task.path, options.tracks)


def window_key(task: RecordTask, window: Window) -> str:
  """A window's unique, stable name: its record's name and start (s)."""
  return f'{task.name}:{window.start_s:.3f}'


def process_record(task: RecordTask, options: PrepareOptions) -> RecordResult:
  """Reads, windows, judges and splits one record: a pure function of (task, options).

  Any error while reading or windowing fails the record as a whole (no window of it is
  kept), with the reason; it never stops the other records.
  """
  try:
    record = load_record(task, options)
    if record.subject != task.subject:
      raise splits.SubjectLeakError(f'{task.name}: read as subject {record.subject}, listed '
                                    f'as {task.subject}: the split by name would be wrong')
    windows = list(windows_of(record, options.rules))
  except RecordError as e:
    return RecordResult(task, [], [], str(e))
  except Exception as e:  # pylint: disable=broad-except  (one bad record must not stop a job)
    return RecordResult(task, [], [], f'{task.name}: failed while windowing '
                                      f'({type(e).__name__}: {e})')
  split_of = lambda w: task.split or splits.hash_split(window_key(task, w), options.fractions,
                                                       options.seed)
  return RecordResult(task, windows, [split_of(w) if w.accepted else '' for w in windows])


def window_job(options: PrepareOptions) -> jobs.WindowJob:
  """The source's windowing job: its records (PulseDB: blocks of its files) and the pure
  function of each (see input_pipeline/jobs.py)."""
  if options.source == 'pulsedb':
    return pulsedb_plan.window_job(options)
  return jobs.WindowJob(units=record_tasks(options),
                        process=functools.partial(process_record, options=options),
                        summarise=functools.partial(_summary, options=options),
                        split_names=splits.SPLITS, unit='record')


def _summary(total: jobs.Summary, options: PrepareOptions) -> dict:
  return total.to_dict(options, splits.SPLITS, REJECT_REASONS)


@dataclasses.dataclass
class Prepared:
  """Accepted windows (arrays over N windows), their split, and the full report: the
  whole dataset in memory (10 kB a window), for small sources and tests. Datasets are
  written by input_pipeline/beam_prepare.py, which streams the same per-record results."""
  signals: np.ndarray  # (N, 2, 1250) float32, [ECG, PPG] scaled to [0, 1]
  sbp: np.ndarray  # (N,) float32 mmHg
  dbp: np.ndarray  # (N,) float32 mmHg
  subject: np.ndarray  # (N,) str
  record: np.ndarray  # (N,) str
  source: np.ndarray  # (N,) str
  lead: np.ndarray  # (N,) str
  start_s: np.ndarray  # (N,) float32, window start within its record
  key: np.ndarray  # (N,) str, window_key: the dataset's example keys
  split: dict[str, np.ndarray]  # split name -> indices into the N windows
  results: list[RecordResult]  # per record, in order (signals dropped)
  options: PrepareOptions

  def summary(self) -> dict:
    return _summary(jobs.total(self.results), self.options)

  @property
  def candidates(self) -> list[Window]:
    return [w for r in self.results for w in r.windows]

  @property
  def failures(self) -> list[tuple[str, str]]:
    return [(r.task.name, r.failure) for r in self.results if r.failure]


def prepare(options: PrepareOptions = PrepareOptions(), progress: bool = True) -> Prepared:
  """Reads every record in this process and returns all accepted windows in memory."""
  accepted, keys, names, results = [], [], [], []
  bar = tqdm(record_tasks(options), desc=f'{options.source} records', unit='record',
             disable=not progress)
  for task in bar:
    result = process_record(task, options)
    for w, split in zip(result.windows, result.splits):
      if split:
        accepted.append(w)
        keys.append(window_key(task, w))
        names.append(split)
    results.append(dataclasses.replace(
        result, windows=[dataclasses.replace(w, signals=None) for w in result.windows]))
    bar.set_postfix(windows=len(accepted), failed=sum(bool(r.failure) for r in results))
  column = lambda attr, dtype: np.array([getattr(w, attr) for w in accepted], dtype)
  subject = column('subject', str)
  split = {name: np.flatnonzero(np.array(names, object) == name) for name in splits.SPLITS}
  if options.protocol == 'subject':
    splits.check_subject_disjoint(subject, split)
  return Prepared(
      signals=(np.stack([w.signals for w in accepted]) if accepted
               else np.zeros((0, 2, 1250), np.float32)),
      sbp=column('sbp_mmhg', np.float32), dbp=column('dbp_mmhg', np.float32),
      subject=subject, record=column('record', str), source=column('source', str),
      lead=column('lead', str), start_s=column('start_s', np.float32),
      key=np.array(keys, str), split=split, results=results, options=options)


def write_reports(prepared: Prepared, directory: str) -> tuple[str, str]:
  """Writes summary.json and windows.csv into `directory`; returns their paths."""
  os.makedirs(directory, exist_ok=True)
  summary_path = os.path.join(directory, 'summary.json')
  with open(summary_path, 'w') as f:
    json.dump(prepared.summary(), f, indent=2)
  csv_path = os.path.join(directory, 'windows.csv')
  with open(csv_path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(REPORT_COLUMNS)
    for result in prepared.results:
      writer.writerows(result.report_rows())
  return summary_path, csv_path
