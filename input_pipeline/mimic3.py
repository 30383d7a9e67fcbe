"""MIMIC-III waveform records (local WFDB files) -> `Record`s at 125 Hz.

Handles single-segment and multi-segment records (a master header listing segments, a
`_layout` segment and `~` gap segments), multi-rate records (read with
`smooth_frames=False`, each channel at its own rate), NaN gaps, and channels present in
only some segments (NaN where absent). Channels are chosen by name, case-insensitively:
every lead of `ecg_leads` that the record has (windowing then uses, per window, the first
listed lead that passes the ECG checks), the first of `ppg_names`, the first of
`abp_names`.
"""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np
import wfdb

from input_pipeline.records import FS, Record, RecordError, resample


@dataclasses.dataclass(frozen=True)
class ChannelNames:
  """Signal names to look for, in order of preference (matched case-insensitively)."""
  ecg_leads: tuple[str, ...] = ('II',)
  ppg_names: tuple[str, ...] = ('PLETH',)
  abp_names: tuple[str, ...] = ('ABP', 'ART')


_SUBJECT_RE = re.compile(r'p\d{6}')


def subject_of(record_path: str) -> str:
  """MIMIC-III subject id ('p000020') from the record name or its folders."""
  found = _SUBJECT_RE.findall(record_path)
  return found[-1] if found else os.path.basename(record_path)


def _index(names: list[str], wanted: str) -> int | None:
  lower = [n.strip().lower() for n in names]
  return lower.index(wanted.lower()) if wanted.lower() in lower else None


def _read_segment(path: str, names: ChannelNames) -> dict[str, np.ndarray]:
  """One single-segment WFDB record -> {ECG lead name | 'ppg' | 'abp': (T,) at 125 Hz}
  for every listed lead present and the first PPG and ABP name present."""
  rec = wfdb.rdrecord(path, smooth_frames=False)
  if rec.e_p_signal is None:
    raise RecordError(f'{path}: no signals')
  length = int(round(rec.sig_len / rec.fs * FS))
  out = {}

  def channel(index: int) -> np.ndarray:
    values = resample(rec.e_p_signal[index], rec.fs * rec.samps_per_frame[index])
    fitted = np.full(length, np.nan)
    fitted[:min(length, len(values))] = values[:length]
    return fitted

  signal_names = list(rec.sig_name or [])
  for lead in names.ecg_leads:
    index = _index(signal_names, lead)
    if index is not None:
      out[lead] = channel(index)
  for role, wanted in (('ppg', names.ppg_names), ('abp', names.abp_names)):
    index = next((i for i in map(lambda n: _index(signal_names, n), wanted) if i is not None),
                 None)
    out[role] = channel(index) if index is not None else np.full(length, np.nan)
  return out


def read_record(path: str, names: ChannelNames = ChannelNames()) -> Record:
  """Reads a WFDB record (path without extension) into a 125 Hz `Record`.

  Raises:
    RecordError naming the record and the problem (unreadable header or signal file,
    no ECG / PPG / ABP channel in any segment).
  """
  directory = os.path.dirname(path)
  try:
    header = wfdb.rdheader(path)
    segments = (list(zip(header.seg_name, header.seg_len))
                if isinstance(header, wfdb.MultiRecord) else [(None, header.sig_len)])
    parts = []  # per segment: {name: (T_segment,) array}
    for seg_name, seg_len in segments:
      if seg_name is None:
        parts.append(_read_segment(path, names))
      elif seg_name == '~' or seg_len == 0 or seg_name.endswith('_layout'):
        if seg_len:  # a gap: no signal for seg_len frames
          gap = np.full(int(round(seg_len / header.fs * FS)), np.nan)
          parts.append({'ppg': gap, 'abp': gap})
      else:
        parts.append(_read_segment(os.path.join(directory, seg_name), names))
  except RecordError:
    raise
  except Exception as e:  # wfdb raises many types for corrupt or truncated files
    raise RecordError(f'{path}: cannot read WFDB record ({type(e).__name__}: {e})') from e

  joined = lambda name: (np.concatenate([p.get(name, np.full(len(p['ppg']), np.nan))
                                         for p in parts]) if parts else np.zeros(0))
  ppg, abp = joined('ppg'), joined('abp')
  leads = tuple(lead for lead in names.ecg_leads if any(lead in p for p in parts))
  ecg = np.stack([joined(lead) for lead in leads]) if leads else np.zeros((0, len(ppg)))
  for role, values, wanted in (('ECG', ecg, names.ecg_leads), ('PPG', ppg, names.ppg_names),
                               ('ABP', abp, names.abp_names)):
    if not np.isfinite(values).any():
      raise RecordError(f'{path}: missing a required signal: {role} (looked for '
                        f'{", ".join(wanted)})')
  return Record(record=os.path.basename(path), subject=subject_of(path), source='mimic3',
                ecg=ecg, ppg=ppg, abp=abp, leads=leads)


def find_records(directory: str) -> list[str]:
  """Top-level WFDB records under `directory` (paths without extension), sorted.

  Segment headers named by a multi-segment master header, and `_layout` headers, are not
  records of their own.
  """
  headers = []
  for root, _, files in os.walk(directory):
    headers += [os.path.join(root, f[:-4]) for f in files if f.endswith('.hea')]
  segments = set()
  for path in headers:
    try:
      header = wfdb.rdheader(path)
    except Exception:  # reported when the record itself is read
      continue
    if isinstance(header, wfdb.MultiRecord):
      segments.update(os.path.join(os.path.dirname(path), s) for s in header.seg_name)
  return sorted(p for p in headers if p not in segments and not p.endswith('_layout'))


# ADC gains (units per mV, per PPG unit, per mmHg) that keep 16-bit samples in range.
_WRITE_GAINS = {'ecg': 1000.0, 'ppg': 10000.0, 'abp': 100.0}


def write_record(record: Record, directory: str) -> str:
  """Writes a Record as a 125 Hz, 16-bit WFDB record (its ECG leads, PLETH, ABP).

  NaN samples are written as WFDB's missing value. Returns the record path without
  extension (what `read_record` takes).
  """
  count = len(record.leads)
  wfdb.wrsamp(record.record, fs=FS, units=['mV'] * count + ['NU', 'mmHg'],
              sig_name=[*record.leads, 'PLETH', 'ABP'],
              p_signal=np.concatenate([record.ecg, [record.ppg, record.abp]]).T,
              fmt=['16'] * (count + 2), adc_gain=[_WRITE_GAINS['ecg']] * count + [
                  _WRITE_GAINS['ppg'], _WRITE_GAINS['abp']], baseline=[0] * (count + 2),
              write_dir=directory)
  return os.path.join(directory, record.record)
