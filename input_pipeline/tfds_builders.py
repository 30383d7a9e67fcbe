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
import tensorflow_datasets as tfds
from tqdm import tqdm

from input_pipeline import prepare as prepare_lib, pulsedb, pulsedb_plan, splits, windows

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
  """Shared logic; `prepared` lets a caller hand over windows it already computed."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}

  def __init__(self, *, prepared: prepare_lib.Prepared | None = None, **kwargs):
    self._prepared = prepared
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
    prepared = self._prepared or prepare_lib.prepare(self._options(dl_manager))
    return {name: self._generate_examples(prepared, indices)
            for name, indices in prepared.split.items() if len(indices)}  # TFDS: no empty splits

  def _generate_examples(self, prepared: prepare_lib.Prepared, indices):
    for i in indices:
      key = f'{i}:{prepared.record[i]}:{prepared.start_s[i]:.3f}'  # unique even for equal names
      yield key, {'signals': prepared.signals[i], 'sbp': prepared.sbp[i],
                  'dbp': prepared.dbp[i], 'subject': prepared.subject[i],
                  'record': prepared.record[i], 'source': prepared.source[i],
                  'lead': prepared.lead[i], 'start_s': prepared.start_s[i]}


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
  manual directory, streamed in blocks; `plan` hands over an already checked input."""
  BUILDER_CONFIGS = _configs('pulsedb', ('pulsedb', 'random', 'subject'))
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download PulseDB (https://github.com/pulselabteam/PulseDB: the subset files
  Train_Subset.mat, CalBased_Test_Subset.mat, CalFree_Test_Subset.mat, AAMI_Test_Subset.mat,
  AAMI_Cal_Subset.mat, or the segment files PulseDB_MIMIC/ and PulseDB_Vital/), or the
  paper's CSV export (MIMIC*.csv / Vital*.csv), and point manual_dir (or
  `scripts/prepare_data.py --input`) at the folder.
  """

  def __init__(self, *, plan: pulsedb_plan.Plan | None = None, **kwargs):
    self._plan = plan
    super().__init__(**kwargs)

  def _features(self) -> dict:
    extras = {k: tfds.features.Scalar(dtype=np.float32, doc=doc) for k, doc in (
        ('age', 'years'), ('height', 'cm'), ('weight', 'kg'), ('bmi', 'kg/m^2'))}
    return {**super()._features(), **extras, 'gender': tfds.features.Text()}

  def _split_generators(self, dl_manager):
    options = self._options(dl_manager)
    plan = self._plan or pulsedb_plan.plan(options.input_dir, options.protocol,
                                           options.fractions, options.seed, options.pulsedb)
    return {name: self._generate_segments(plan, name, parts)
            for name, parts in plan.split.items() if sum(map(len, parts.values()))}

  def _generate_segments(self, plan: pulsedb_plan.Plan, split: str, parts: dict):
    for path, rows in parts.items():
      checked = plan.files[path]
      name = plan.name(path)
      with tqdm(total=len(rows), desc=f'{split}: {name}', unit='segment', leave=False) as bar:
        for block in pulsedb.blocks(checked.file, rows, checked.subjects, pulsedb_plan.BLOCK):
          signals = windows.minmax_scale(block.signals)
          for i, row in enumerate(block.rows.tolist()):
            yield f'{name}:{row}', {
                'signals': signals[i], 'sbp': block.sbp[i], 'dbp': block.dbp[i],
                'subject': block.subject[i], 'record': f'{name}:{row}',
                'source': pulsedb.source_of_key(block.subject[i]), 'lead': 'II',
                'start_s': np.nan, 'gender': block.extras['gender'][i],
                **{k: block.extras[k][i] for k in pulsedb.NUMERIC_EXTRAS}}
          bar.update(len(block.rows))


BUILDERS = {'synthetic': CerebroBpSynthetic, 'mimic3': CerebroBpMimic3,
            'vitaldb': CerebroBpVitaldb, 'pulsedb': CerebroBpPulsedb}


def config_hash(options: prepare_lib.PrepareOptions) -> str:
  """8 hex digits identifying the options (the input folder aside)."""
  text = repr(dataclasses.replace(options, input_dir=None))
  return hashlib.sha256(text.encode()).hexdigest()[:8]


def build(options: prepare_lib.PrepareOptions, data_dir: str,
          **handed_over) -> tfds.core.DatasetBuilder:
  """Writes the dataset of `options` under data_dir (reusing windows or a PulseDB plan
  already computed: `prepared=` or `plan=`).

  The config is the registered 'subject' / 'random' one when `options` equal its options
  (the input folder aside), else '<protocol>_<hash of the options>'.
  """
  builder_cls = BUILDERS[options.source]
  registered = {c.name: c for c in builder_cls.BUILDER_CONFIGS}
  same = dataclasses.replace(options, input_dir=None) == registered[options.protocol].options
  config = options.protocol if same else WindowsConfig(
      name=f'{options.protocol}_{config_hash(options)}',
      description=f'{options.protocol} split, custom options', options=options)
  builder = builder_cls(data_dir=data_dir, config=config, **handed_over)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=options.input_dir))
  return builder


def prepare_dataset(options: prepare_lib.PrepareOptions, output_dir: str, progress: bool = True
                    ) -> tuple[prepare_lib.Prepared | pulsedb_plan.Plan, str | None]:
  """Records (or PulseDB files) -> windows -> summary.json, windows.csv, options.json and
  the TFDS dataset in `output_dir` (what scripts/prepare_data.py does).

  Returns (the prepared windows, or for PulseDB the checked plan: both have .summary();
  the dataset's folder, or None when no window was accepted: then only the reports are
  written).
  """
  if options.source == 'pulsedb':
    prepared = pulsedb_plan.plan(options.input_dir, options.protocol, options.fractions,
                                 options.seed, options.pulsedb, progress=progress)
    pulsedb_plan.write_reports(prepared, output_dir)
    handed_over = {'plan': prepared}
  else:
    prepared = prepare_lib.prepare(options, progress=progress)
    prepare_lib.write_reports(prepared, output_dir)
    handed_over = {'prepared': prepared}
  with open(os.path.join(output_dir, 'options.json'), 'w') as f:
    json.dump(dataclasses.asdict(options), f, indent=2)
  if prepared.summary()['windows_kept'] == 0:
    return prepared, None
  return prepared, str(build(options, output_dir, **handed_over).data_dir)
