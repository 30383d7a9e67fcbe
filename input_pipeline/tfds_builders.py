"""TensorFlow Datasets builders of labelled ECG + PPG windows.

  cerebro_bp_synthetic  the built-in synthetic cohort (no download)
  cerebro_bp_mimic3     MIMIC-III waveform records from a manual directory
  cerebro_bp_vitaldb    VitalDB .vital files from a manual directory

Each has the configs 'subject' (subject-independent, calibration-free split) and 'random'
(the paper's random-window split); both write train / validation / test. A config can
also be passed with other `PrepareOptions` (cohort size, fractions, seed, channels).
Features: signals (2, 1250) float32 [ECG, PPG] in [0, 1]; sbp, dbp (mmHg); subject,
record, source, lead (text); start_s (s).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import numpy as np
import tensorflow_datasets as tfds

from input_pipeline import prepare as prepare_lib

_DESCRIPTION = ('10-s windows of ECG lead II and PPG at 125 Hz (PulseDB-style filtering, '
                'beat labels and quality rules) with SBP and DBP labels from invasive ABP.')


@dataclasses.dataclass
class WindowsConfig(tfds.core.BuilderConfig):
  """A builder config carrying the options that decide the windows and the split."""
  options: prepare_lib.PrepareOptions = prepare_lib.PrepareOptions()


def _configs(source: str) -> list[WindowsConfig]:
  return [WindowsConfig(name=protocol, description=f'{protocol} split',
                        options=prepare_lib.PrepareOptions(source=source, protocol=protocol))
          for protocol in ('subject', 'random')]


class _WindowsBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared logic; `prepared` lets a caller hand over windows it already computed."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}

  def __init__(self, *, prepared: prepare_lib.Prepared | None = None, **kwargs):
    self._prepared = prepared
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=_DESCRIPTION,
        features=tfds.features.FeaturesDict({
            'signals': tfds.features.Tensor(shape=(2, 1250), dtype=np.float32),
            'sbp': tfds.features.Scalar(dtype=np.float32, doc='systolic BP, mmHg'),
            'dbp': tfds.features.Scalar(dtype=np.float32, doc='diastolic BP, mmHg'),
            'subject': tfds.features.Text(),
            'record': tfds.features.Text(),
            'source': tfds.features.Text(),
            'lead': tfds.features.Text(),
            'start_s': tfds.features.Scalar(dtype=np.float32, doc='window start, s'),
        }),
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


BUILDERS = {'synthetic': CerebroBpSynthetic, 'mimic3': CerebroBpMimic3,
            'vitaldb': CerebroBpVitaldb}


def config_hash(options: prepare_lib.PrepareOptions) -> str:
  """8 hex digits identifying the options (the input folder aside)."""
  text = repr(dataclasses.replace(options, input_dir=None))
  return hashlib.sha256(text.encode()).hexdigest()[:8]


def build(options: prepare_lib.PrepareOptions, data_dir: str,
          prepared: prepare_lib.Prepared | None = None) -> tfds.core.DatasetBuilder:
  """Writes the dataset of `options` under data_dir (reusing `prepared` windows if given).

  The config is the registered 'subject' / 'random' one when `options` equal its options
  (the input folder aside), else '<protocol>_<hash of the options>'.
  """
  builder_cls = BUILDERS[options.source]
  registered = {c.name: c for c in builder_cls.BUILDER_CONFIGS}
  same = dataclasses.replace(options, input_dir=None) == registered[options.protocol].options
  config = options.protocol if same else WindowsConfig(
      name=f'{options.protocol}_{config_hash(options)}',
      description=f'{options.protocol} split, custom options', options=options)
  builder = builder_cls(data_dir=data_dir, config=config, prepared=prepared)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=options.input_dir))
  return builder


def prepare_dataset(options: prepare_lib.PrepareOptions, output_dir: str,
                    progress: bool = True) -> tuple[prepare_lib.Prepared, str | None]:
  """Records -> windows -> summary.json, windows.csv, options.json and the TFDS dataset
  in `output_dir` (what scripts/prepare_data.py does). Returns (prepared, the dataset's
  folder, or None when no window was accepted: then only the reports are written)."""
  prepared = prepare_lib.prepare(options, progress=progress)
  prepare_lib.write_reports(prepared, output_dir)
  with open(os.path.join(output_dir, 'options.json'), 'w') as f:
    json.dump(dataclasses.asdict(options), f, indent=2)
  if len(prepared.sbp) == 0:
    return prepared, None
  return prepared, str(build(options, output_dir, prepared).data_dir)
