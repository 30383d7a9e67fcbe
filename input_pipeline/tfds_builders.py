"""TensorFlow Datasets builders of labelled ECG + PPG windows.

  cerebro_bp_synthetic  the built-in synthetic cohort (no download)
  cerebro_bp_mimic3     MIMIC-III waveform records from a manual directory
  cerebro_bp_vitaldb    VitalDB .vital files from a manual directory
  cerebro_bp_pulsedb    PulseDB's subset files, segment files or the paper's CSV export

Each has the configs 'subject' (subject-independent, calibration-free split) and 'random'
(the paper's random-window split); both write train / validation / test. PulseDB also
has 'pulsedb': the official files' splits (train, validation carved out of Train by
subject, test_calbased, test_calfree, test_aami, calibration_aami). A config can also
be passed with other `PrepareOptions` (cohort size, fractions, seed, channels); its name
always starts with the protocol ('subject', 'random_1a2b3c4d', ...).
Features: signals (2, 1250) float32 [ECG, PPG] in [0, 1]; sbp, dbp (mmHg); subject,
record, source, lead (text); start_s (s; NaN for PulseDB). PulseDB adds age (years),
gender ('M'/'F'), height (cm), weight (kg), bmi (kg/m^2), NaN or '' where absent.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from input_pipeline import beam_prepare, prepare as prepare_lib, splits

_DESCRIPTION = ('10-s windows of ECG lead II and PPG at 125 Hz (PulseDB-style filtering, '
                'beat labels and quality rules) with SBP and DBP labels from invasive ABP.')


@dataclasses.dataclass
class WindowsConfig(tfds.core.BuilderConfig):
  """A builder config carrying the options that decide the windows and the split."""
  options: prepare_lib.PrepareOptions = prepare_lib.PrepareOptions()


def _configs(source: str, protocols=('subject', 'random')) -> list[WindowsConfig]:
  return [WindowsConfig(name=protocol, description=f'{protocol} split',
                        options=prepare_lib.PrepareOptions(source=source, protocol=protocol))
          for protocol in protocols]


def protocol_of(builder: tfds.core.DatasetBuilder) -> str:
  """The split protocol a prepared dataset was built with ('subject', 'random',
  'pulsedb'): its config name's first part."""
  name = builder.builder_config.name if builder.builder_config else ''
  return next((p for p in splits.PROTOCOLS if name == p or name.startswith(p + '_')), '')


class _WindowsBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared logic: writes the windows that input_pipeline/beam_prepare.py left in
  `windows_dir` (prepare_dataset runs both steps), with Beam on a distributed runner."""

  VERSION = tfds.core.Version('2.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.',
                   '2.0.0': 'Written with Apache Beam; random splits by a hash of the '
                            'window key; keys are <record>:<start_s>.'}

  def __init__(self, *, windows_dir: str | None = None, distributed: bool = False, **kwargs):
    self._windows_dir = windows_dir
    self._distributed = distributed  # write with Beam (else stream through TFDS's writer)
    super().__init__(**kwargs)

  def _features(self) -> dict:
    return {
        # Stored as raw bytes: 17x faster to write than a float list, read the same way.
        'signals': tfds.features.Tensor(shape=(2, 1250), dtype=np.float32,
                                        encoding=tfds.features.Encoding.BYTES),
        'sbp': tfds.features.Scalar(dtype=np.float32, doc='systolic BP, mmHg'),
        'dbp': tfds.features.Scalar(dtype=np.float32, doc='diastolic BP, mmHg'),
        'subject': tfds.features.Text(),
        'record': tfds.features.Text(),
        'source': tfds.features.Text(),
        'lead': tfds.features.Text(),
        'start_s': tfds.features.Scalar(dtype=np.float32, doc='window start, s'),
    }

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=_DESCRIPTION, features=tfds.features.FeaturesDict(self._features()),
        homepage='https://arxiv.org/abs/2502.17460')

  def _options(self, dl_manager) -> prepare_lib.PrepareOptions:
    return self.builder_config.options

  def _split_generators(self, dl_manager):
    if not self._windows_dir:
      raise ValueError(f'{self.name}: build it with tfds_builders.prepare_dataset or '
                       'scripts/prepare_data.py, which first window the records')
    with tf.io.gfile.GFile(os.path.join(self._windows_dir, 'summary.json')) as f:
      counts = json.load(f)['splits']
    return {name: self._generate_examples(beam_prepare.window_files(self._windows_dir, name))
            for name, count in counts.items() if count['windows']}  # TFDS: no empty splits

  def _generate_examples(self, pattern: str):
    if not self._distributed:
      return _read_windows(pattern)
    beam = tfds.core.lazy_imports.apache_beam
    return beam.io.ReadFromTFRecord(pattern) | beam.Map(beam_prepare.decode_example)


def _read_windows(pattern: str):
  """(key, example) of every window in the files of `pattern`, one at a time (read in
  batches of records: 5x faster than tf.data's element-by-element iterator)."""
  for path in beam_prepare.matching(pattern):
    for records in tf.data.TFRecordDataset(path).batch(1024).as_numpy_iterator():
      for data in records:
        yield beam_prepare.decode_example(data)


class _ManualBuilder(_WindowsBuilder, skip_registration=True):
  """Reads its records from `download_config.manual_dir`."""

  def _options(self, dl_manager) -> prepare_lib.PrepareOptions:
    return dataclasses.replace(self.builder_config.options, input_dir=str(dl_manager.manual_dir))


class CerebroBpSynthetic(_WindowsBuilder):
  """Windows of the built-in synthetic cohort."""
  BUILDER_CONFIGS = _configs('synthetic')


class CerebroBpMimic3(_ManualBuilder):
  """Windows of MIMIC-III waveform records (WFDB) from a manual directory."""
  BUILDER_CONFIGS = _configs('mimic3')
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download MIMIC-III Waveform Database Matched Subset records (PhysioNet credentialed
  access, e.g. `wget -r -N -c -np --user USER --ask-password
  https://physionet.org/files/mimic3wdb-matched/1.0/p00/p000020/`) and point
  manual_dir (or `scripts/prepare_data.py --input`) at the folder. Every top-level WFDB
  record below it is read: single- or multi-segment, with signals II, PLETH and ABP.
  """


class CerebroBpVitaldb(_ManualBuilder):
  """Windows of VitalDB .vital files from a manual directory."""
  BUILDER_CONFIGS = _configs('vitaldb')
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download VitalDB case files (https://vitaldb.net/dataset/, files named 0001.vital ...,
  or `vitaldb.VitalFile(case_id).to_vital(path)`) and point manual_dir (or
  `scripts/prepare_data.py --input`) at the folder. Tracks SNUADC/ECG_II, SNUADC/PLETH
  and SNUADC/ART are read at 500 Hz and resampled to 125 Hz.
  """


class CerebroBpPulsedb(_ManualBuilder):
  """PulseDB's segments (subset files, segment files or the paper's CSV export) from a
  manual directory, with the demographics PulseDB gives."""
  BUILDER_CONFIGS = _configs('pulsedb', ('pulsedb', 'random', 'subject'))
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download PulseDB (https://github.com/pulselabteam/PulseDB: the subset files
  Train_Subset.mat, CalBased_Test_Subset.mat, CalFree_Test_Subset.mat, AAMI_Test_Subset.mat,
  AAMI_Cal_Subset.mat, or the segment files PulseDB_MIMIC/ and PulseDB_Vital/), or the
  paper's CSV export (MIMIC*.csv / Vital*.csv), and point manual_dir (or
  `scripts/prepare_data.py --input`) at the folder.
  """

  def _features(self) -> dict:
    extras = {k: tfds.features.Scalar(dtype=np.float32, doc=doc) for k, doc in (
        ('age', 'years'), ('height', 'cm'), ('weight', 'kg'), ('bmi', 'kg/m^2'))}
    return {**super()._features(), **extras, 'gender': tfds.features.Text()}


BUILDERS = {'synthetic': CerebroBpSynthetic, 'mimic3': CerebroBpMimic3,
            'vitaldb': CerebroBpVitaldb, 'pulsedb': CerebroBpPulsedb}


def config_hash(options: prepare_lib.PrepareOptions) -> str:
  """8 hex digits identifying the options (the input folder aside)."""
  text = repr(dataclasses.replace(options, input_dir=None))
  return hashlib.sha256(text.encode()).hexdigest()[:8]


def _config(options: prepare_lib.PrepareOptions):
  """The registered 'subject' / 'random' config when `options` equal its options (the
  input folder aside), else '<protocol>_<hash of the options>'."""
  registered = {c.name: c for c in BUILDERS[options.source].BUILDER_CONFIGS}
  if dataclasses.replace(options, input_dir=None) == registered[options.protocol].options:
    return options.protocol
  return WindowsConfig(name=f'{options.protocol}_{config_hash(options)}',
                       description=f'{options.protocol} split, custom options', options=options)


def build(options: prepare_lib.PrepareOptions, data_dir: str, windows_dir: str,
          pipeline_options=None) -> tfds.core.DatasetBuilder:
  """Writes the dataset of `options` under data_dir from the windows that
  beam_prepare.write_windows left in `windows_dir` (see prepare_dataset)."""
  builder = BUILDERS[options.source](
      data_dir=data_dir, config=_config(options), windows_dir=windows_dir,
      distributed=pipeline_options is not None and beam_prepare.is_distributed(pipeline_options))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=options.input_dir, beam_options=pipeline_options))
  return builder


def prepare_dataset(options: prepare_lib.PrepareOptions, output_dir: str, progress: bool = True,
                    pipeline_options=None) -> tuple[dict, str | None]:
  """Records (or PulseDB files) -> windows -> summary.json, windows.csv, options.json and
  the TFDS dataset in `output_dir` (what scripts/prepare_data.py does).

  The source's units of work (records, PulseDB blocks) are windowed by
  input_pipeline/beam_prepare.py with Apache Beam under `pipeline_options` (default: this
  process) and the dataset written by TFDS (with Beam too on a distributed runner).
  Returns (summary.json's content; the dataset's folder, or None when no window was
  accepted: then only the reports are written).
  """
  tf.io.gfile.makedirs(output_dir)
  with tf.io.gfile.GFile(os.path.join(output_dir, 'options.json'), 'w') as f:
    json.dump(dataclasses.asdict(options), f, indent=2)
  pipeline_options = pipeline_options or beam_prepare.beam_options()
  work_dir = os.path.join(output_dir, '.windows_work')
  if tf.io.gfile.exists(work_dir):
    tf.io.gfile.rmtree(work_dir)
  try:
    summary = beam_prepare.write_windows(options, work_dir, pipeline_options, progress)
    with tf.io.gfile.GFile(os.path.join(output_dir, 'summary.json'), 'w') as f:
      json.dump(summary, f, indent=2)
    beam_prepare.merge_report(work_dir, os.path.join(output_dir, 'windows.csv'))
    if summary['windows_kept'] == 0:
      return summary, None
    return summary, str(build(options, output_dir, work_dir, pipeline_options).data_dir)
  finally:
    if tf.io.gfile.exists(work_dir):
      tf.io.gfile.rmtree(work_dir)
