"""Records -> labelled 10-s ECG + PPG windows as a TFDS dataset, with a report.

  python scripts/prepare_data.py --source synthetic --output data/synthetic
  python scripts/prepare_data.py --source mimic3 --input mimic3wdb/ --output data/mimic3
  python scripts/prepare_data.py --source vitaldb --input vital_files/ --output data/vitaldb
  python scripts/prepare_data.py --source pulsedb --input PulseDB/ --output data/pulsedb \
      --protocol pulsedb

--source pulsedb reads PulseDB's subset files (*_Subset.mat), its segment files
(PulseDB_MIMIC/, PulseDB_Vital/) or the paper's CSV export (MIMIC*.csv, Vital*.csv),
recognised from the file names; the segments are kept as PulseDB made them.

Writes into --output: the TFDS dataset (<builder>/<config>/<version>/), summary.json
(records read and failed, windows kept, rejects by reason, subjects and windows per
split) and windows.csv (one row per candidate window with its verdict and split).
Records that cannot be read are named with the reason and skipped.

Records are windowed with Apache Beam, one record per task, and stream to the dataset:
--workers N runs N local processes; --beam_options runs the same pipeline on Dataflow,
Flink or Spark (README: "Preparing data at scale").
"""

import os
import sys

import tensorflow as tf
from absl import flags

from cerebro_jax import cli
from input_pipeline import (beam_prepare, mimic3, prepare, pulsedb, pulsedb_plan, splits,
                            synthetic, tfds_builders, vitaldb_files)

_SOURCE = flags.DEFINE_enum('source', 'synthetic', prepare.SOURCES, 'Where the records come from.')
_INPUT = flags.DEFINE_string('input', None, 'Folder of records (WFDB for mimic3, .vital for '
                             'vitaldb) or of PulseDB files (pulsedb; a single file too), '
                             'searched recursively. Not used for synthetic.')
_OUTPUT = flags.DEFINE_string('output', None, 'Folder for the dataset and the reports.',
                              required=True)
_PROTOCOL = flags.DEFINE_enum('protocol', 'subject', splits.PROTOCOLS,
                              'subject: disjoint subjects per split (calibration-free); '
                              'random: random windows, the paper\'s calibration-based split; '
                              'pulsedb: PulseDB\'s official subset files (train, validation '
                              'carved out of Train by subject, test_calbased, test_calfree, '
                              'test_aami, calibration_aami).')
_FRACTIONS = flags.DEFINE_list('fractions', ['0.8', '0.1', '0.1'],
                               'Train, validation, test fractions (of subjects for the '
                               'subject protocol, of windows for random).')
_SEED = flags.DEFINE_integer('seed', 42, 'Split seed.')
_PULSEDB_SOURCES = flags.DEFINE_multi_enum(
    'pulsedb_sources', list(pulsedb.SOURCES), pulsedb.SOURCES,
    'PulseDB: keep the segments of these sources (subject keys ending in _0 for MIMIC-III, '
    '_1 for VitalDB); repeat the flag or give mimic,vitaldb.')
_VALIDATION_FRACTION = flags.DEFINE_float(
    'validation_fraction', pulsedb_plan.PulseDbOptions.validation_fraction,
    'PulseDB, protocol pulsedb: share of Train_Subset\'s subjects carved out as the '
    'validation split (whole subjects, seeded by --seed).', lower_bound=0.0, upper_bound=0.9)
_SUBJECTS = flags.DEFINE_integer('subjects', 48, 'Synthetic cohort: number of subjects.',
                                 lower_bound=1)
_MINUTES = flags.DEFINE_float('minutes', 6.0, 'Synthetic cohort: minutes per subject.',
                              lower_bound=0.2)
_COHORT_SEED = flags.DEFINE_integer('cohort_seed', 0, 'Synthetic cohort: generator seed.')
_ECG_LEADS = flags.DEFINE_list('ecg_leads', list(mimic3.ChannelNames.ecg_leads),
                               'MIMIC-III: ECG leads in order of preference (e.g. II,I,III,V).')
_PPG_NAMES = flags.DEFINE_list('ppg_names', list(mimic3.ChannelNames.ppg_names),
                               'MIMIC-III: PPG signal names.')
_ABP_NAMES = flags.DEFINE_list('abp_names', list(mimic3.ChannelNames.abp_names),
                               'MIMIC-III: arterial pressure signal names.')
_ECG_TRACK = flags.DEFINE_string('ecg_track', vitaldb_files.TrackNames.ecg, 'VitalDB ECG track.')
_PPG_TRACK = flags.DEFINE_string('ppg_track', vitaldb_files.TrackNames.ppg, 'VitalDB PPG track.')
_ABP_TRACK = flags.DEFINE_string('abp_track', vitaldb_files.TrackNames.abp,
                                 'VitalDB arterial pressure track.')
_WORKERS = flags.DEFINE_integer(
    'workers', 1, 'Local processes that window the records or PulseDB\'s blocks of segments '
    '(Apache Beam\'s DirectRunner; 1: this process).', lower_bound=1)
_BEAM_OPTIONS = flags.DEFINE_string(
    'beam_options', '', 'Apache Beam pipeline options, passed through as one string, e.g. '
    '"--runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp '
    '--extra_package=dist/cerebro_bp-0.1.0.tar.gz" (see the README); with a --runner, '
    '--workers is not used. --output must then be storage the workers can write to.')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace an existing dataset in --output.')


def options_from_flags() -> prepare.PrepareOptions:
  return prepare.PrepareOptions(
      source=_SOURCE.value, input_dir=_INPUT.value, protocol=_PROTOCOL.value,
      fractions=tuple(float(f) for f in _FRACTIONS.value), seed=_SEED.value,
      cohort=synthetic.CohortConfig(num_subjects=_SUBJECTS.value,
                                    minutes_per_subject=_MINUTES.value, seed=_COHORT_SEED.value),
      channels=mimic3.ChannelNames(tuple(_ECG_LEADS.value), tuple(_PPG_NAMES.value),
                                   tuple(_ABP_NAMES.value)),
      tracks=vitaldb_files.TrackNames(_ECG_TRACK.value, _PPG_TRACK.value, _ABP_TRACK.value),
      pulsedb=pulsedb_plan.PulseDbOptions(
          sources=tuple(s for s in pulsedb.SOURCES if s in _PULSEDB_SOURCES.value),
          validation_fraction=_VALIDATION_FRACTION.value))


def print_summary(summary: dict) -> None:
  unit = 'files' if summary['source'] == 'pulsedb' else 'records'
  print(f"{unit} read: {summary['records_read']}, failed: {summary['records_failed']}")
  for failure in summary['failures']:
    print(f"  skipped {failure['record']}: {failure['reason']}")
  print(f"windows: {summary['candidate_windows']} candidates, {summary['windows_kept']} kept")
  for reason, count in summary['rejects'].items():
    if count:
      print(f'  rejected {reason}: {count}')
  for name, split in summary['splits'].items():
    print(f"  {name}: {split['windows']} windows from {split['subjects']} subjects")


def failure_hint(summary: dict) -> str:
  """The unreadable records and why, and what to try, for the final error message."""
  failures = summary['failures']
  if not failures:
    return ''
  text = f"\n{len(failures)} of {len(failures) + summary['records_read']} input(s) could not " \
         'be used:\n' + '\n'.join(f"  {f['record']}: {f['reason']}" for f in failures[:10])
  if len(failures) > 10:
    text += f'\n  ... and {len(failures) - 10} more (summary.json lists all)'
  if any('required signal: ECG' in f['reason'] for f in failures):
    text += ('\nrecords without the ECG lead looked for: add fallback leads in order of '
             'preference, e.g. --ecg_leads=II,I,III,V')
  return text


def main(argv):
  del argv
  try:
    options = options_from_flags()
    builder_dir = os.path.join(_OUTPUT.value, tfds_builders.BUILDERS[options.source].name)
    if tf.io.gfile.exists(builder_dir):
      if not _OVERWRITE.value:
        raise FileExistsError(f'{builder_dir} exists; pass --overwrite to replace it')
      tf.io.gfile.rmtree(builder_dir)
    summary, dataset_dir = tfds_builders.prepare_dataset(
        options, _OUTPUT.value,
        pipeline_options=beam_prepare.beam_options(_WORKERS.value, _BEAM_OPTIONS.value))
  except (FileNotFoundError, FileExistsError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print_summary(summary)
  reports = ', '.join(os.path.join(_OUTPUT.value, f) for f in ('summary.json', 'windows.csv'))
  if dataset_dir is None:
    print(f'error: no window passed the quality checks; see {reports}{failure_hint(summary)}',
          file=sys.stderr)
    return 1
  print(f'dataset: {dataset_dir}')
  print(f'report: {reports}')
  return 0


if __name__ == '__main__':
  cli.run(main)
