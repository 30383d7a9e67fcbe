"""A windowing job -> windows with Apache Beam: every unit on some worker, nothing held whole.

The unit of parallel work is a record (MIMIC-III, VitalDB, the synthetic cohort) or a
block of PulseDB segments, listed up front from names by the source's job
(`prepare.window_job`, input_pipeline/jobs.py); each is mapped through the job's pure
`process` (read, window, judge, split) on whichever worker Beam gives it. Its outputs
stream to files in a work folder:

  <split>/windows-*.tfrecord   accepted windows of each split (`encode_example`)
  report/rows-*                windows.csv rows, one line per unit, for `merge_report`
  summary.json                 `jobs.Summary` combined over units (Beam combiner), made
                               summary.json by the job, which also checks that no
                               subject has windows in two splits where the protocol keeps
                               subjects apart (SubjectLeakError otherwise)

The TFDS builders (input_pipeline/tfds_builders.py) then write the non-empty splits'
windows as the dataset: on a distributed runner in a second Beam pipeline, locally by
streaming them through TFDS's writer in this process (the local runners hold a Beam
shuffle, which TFDS's Beam writer needs, in memory; TFDS's own writer spills to disk
beyond 1 GB, and writing is cheap next to windowing). Which split a window lands in
never depends on the number of workers or the runner (splits are decided per subject
from the list of names, or per window by a hash of its key), and TFDS orders examples by
a hash of their keys, so 1, 2 or 100 workers write the same dataset.

Runner: `beam_options(workers, extra)`: Beam's DirectRunner in this process (1 worker) or
in N processes; any other runner (Dataflow, Flink, Spark) through its pipeline options.
Files are read and written through Beam's FileSystems, so the work folder can be a
bucket; this module does not import TensorFlow (each worker process would pay 6 s and
700 MB for it).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shlex

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from tqdm import tqdm

from input_pipeline import jobs, prepare
from input_pipeline.windows import REPORT_COLUMNS

_REPORT = 'report'
_SUMMARY = 'summary'


def beam_options(workers: int = 1, extra: str = '') -> PipelineOptions:
  """Pipeline options: `extra` (a command line of Beam options, e.g. '--runner=DataflowRunner
  --project=P --region=R --temp_location=gs://B/tmp') or else the DirectRunner on
  `workers` local processes (this process itself when 1)."""
  args = shlex.split(extra or '')
  if not any(a.startswith('--runner') for a in args):
    args = ['--runner=DirectRunner', f'--direct_num_workers={workers}',
            f'--direct_running_mode={"multi_processing" if workers > 1 else "in_memory"}',
            *args]
  return PipelineOptions(args)


def encode_example(key: str, example: dict) -> bytes:
  """One accepted window (the dataset's features) as bytes: a JSON line of its key,
  numbers and texts, then its signals (2, 1250) float32 little-endian. Floats survive the
  round trip exactly (as float32, what the dataset stores)."""
  head = {'key': key, **{k: float(v) if isinstance(v, (float, np.floating)) else str(v)
                         for k, v in example.items() if k != 'signals'}}
  return json.dumps(head).encode() + b'\n' + np.asarray(example['signals'], '<f4').tobytes()


def decode_example(data: bytes) -> tuple[str, dict]:
  """(key, example) of `encode_example`'s bytes, as the TFDS builders' features want it."""
  head, signals = data.split(b'\n', 1)
  head = json.loads(head)
  return head.pop('key'), {
      'signals': np.frombuffer(signals, '<f4').reshape(2, 1250).astype(np.float32),
      **{k: np.float32(v) if isinstance(v, float) else v for k, v in head.items()}}


class _ProcessUnits(beam.DoFn):
  """Unit of work -> accepted windows (tagged by split), its report line and Summary."""

  def __init__(self, job: jobs.WindowJob, desc: str, progress: bool):
    self._process = job.process
    self._total = len(job.units)
    self._unit = job.unit
    self._desc = desc
    self._progress = progress
    self._bar = None

  def setup(self):
    self._bar = tqdm(total=self._total, unit=self._unit, smoothing=0.1,
                     disable=not self._progress, desc=f'{self._desc} (worker {os.getpid()})')

  def process(self, unit):
    result = self._process(unit)
    for split, key, example in result.examples():
      yield beam.pvalue.TaggedOutput(split, encode_example(key, example))
    rows = json.dumps(result.report_rows())
    yield beam.pvalue.TaggedOutput(_REPORT, f'{unit.index}\t{rows}')
    yield beam.pvalue.TaggedOutput(_SUMMARY, jobs.Summary().add(result))
    self._bar.update(1)
    self._bar.set_postfix(failed=None if not result.failure else unit.name)

  def teardown(self):
    if self._bar is not None:
      self._bar.close()


class _CombineSummaries(beam.CombineFn):
  """Merges per-unit `jobs.Summary`s."""

  def create_accumulator(self):
    return jobs.Summary()

  def add_input(self, accumulator, summary):
    return accumulator.merge(summary)

  def merge_accumulators(self, accumulators):
    merged = jobs.Summary()
    for accumulator in accumulators:
      merged.merge(accumulator)
    return merged

  def extract_output(self, accumulator):
    return accumulator


def _write_json(value: dict, path: str) -> None:
  with FileSystems.create(path) as f:
    f.write(json.dumps(value, indent=2).encode())


def write_windows(options: prepare.PrepareOptions, work_dir: str,
                  pipeline_options: PipelineOptions | None = None, progress: bool = True) -> dict:
  """Runs the windowing pipeline over every unit of `options`' source into `work_dir` (see
  the module docstring); returns the summary (summary.json's content)."""
  job = prepare.window_job(options)
  summary_path = os.path.join(work_dir, 'summary.json')
  summarise = job.summarise  # the lambda below must not carry the units with it
  with beam.Pipeline(options=pipeline_options or beam_options()) as pipeline:
    outputs = (pipeline
               | 'Units' >> beam.Create(job.units)
               | 'Spread' >> beam.Reshuffle()
               | 'Windows' >> beam.ParDo(_ProcessUnits(job, f'{options.source} {job.unit}s',
                                                      progress))
               .with_outputs(*job.split_names, _REPORT, _SUMMARY))
    for split in job.split_names:
      _ = outputs[split] | f'Write_{split}' >> beam.io.WriteToTFRecord(
          os.path.join(work_dir, split, 'windows'), file_name_suffix='.tfrecord')
    _ = outputs[_REPORT] | 'WriteReport' >> beam.io.WriteToText(
        os.path.join(work_dir, _REPORT, 'rows'))
    _ = (outputs[_SUMMARY]
         | 'Summarise' >> beam.CombineGlobally(_CombineSummaries())
         | 'SummaryJson' >> beam.Map(lambda s: _write_json(summarise(s), summary_path)))
  with FileSystems.open(summary_path) as f:
    return json.load(f)


def window_files(work_dir: str, split: str) -> str:
  """The file pattern of `split`'s windows in `work_dir`."""
  return os.path.join(work_dir, split, 'windows*.tfrecord')


def matching(pattern: str) -> list[str]:
  """The paths matching `pattern` (local or, with Beam's extras, a bucket), sorted."""
  return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


def is_distributed(pipeline_options: PipelineOptions) -> bool:
  """Whether the options name a runner other than the local DirectRunner."""
  runner = pipeline_options.view_as(StandardOptions).runner
  return runner is not None and 'direct' not in str(runner).lower()


def merge_report(work_dir: str, csv_path: str) -> None:
  """Writes windows.csv from the report shards, records in their listed order. Holds one
  (record, shard, offset) triple per record in memory, never the rows themselves."""
  where = []
  shards = matching(os.path.join(work_dir, _REPORT, 'rows*'))
  for shard, path in enumerate(shards):
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
      offset = 0
      for line in f:
        where.append((int(line.split(b'\t', 1)[0]), shard, offset))
        offset += len(line)
  where.sort()
  files = [FileSystems.open(p, compression_type=CompressionTypes.UNCOMPRESSED) for p in shards]
  try:
    with FileSystems.create(csv_path) as out:
      out.write(_csv_text([REPORT_COLUMNS]).encode())
      for _, shard, offset in where:
        files[shard].seek(offset)
        rows = json.loads(files[shard].readline().split(b'\t', 1)[1])
        out.write(_csv_text(rows).encode())
  finally:
    for f in files:
      f.close()


def _csv_text(rows: list[list[str]]) -> str:
  buffer = io.StringIO()
  csv.writer(buffer).writerows(rows)
  return buffer.getvalue()
