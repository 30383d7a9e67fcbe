"""MIMIC-III waveform records (local WFDB files) -> `Record`s at 125 Hz.

Handles single-segment and multi-segment records (a master header listing segments, a
`_layout` segment and `~` gap segments), multi-rate records (read with
`smooth_frames=False`, each channel at its own rate), NaN gaps, and channels present in
only some segments (NaN where absent). Channels are chosen by name, case-insensitively:
the first ECG lead of `ecg_leads` present in each segment (the lead is recorded per
sample), the first of `ppg_names`, the first of `abp_names`.
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


def _pick(names: list[str], wanted: tuple[str, ...]) -> tuple[int, str] | tuple[None, None]:
  lower = [n.strip().lower() for n in names]
  for name in wanted:
    if name.lower() in lower:
      return lower.index(name.lower()), name
  return None, None


def _read_segment(path: str, names: ChannelNames, leads: list[str]):
  """One single-segment WFDB record -> (ecg, ppg, abp, lead index) at 125 Hz."""
  rec = wfdb.rdrecord(path, smooth_frames=False)
  if rec.e_p_signal is None:
    raise RecordError(f'{path}: no signals')
  duration = rec.sig_len / rec.fs
  length = int(round(duration * FS))
  out = []
  lead = -1
  for role, wanted in (('ecg', names.ecg_leads), ('ppg', names.ppg_names),
                       ('abp', names.abp_names)):
    index, name = _pick(list(rec.sig_name or []), wanted)
    if index is None:
      out.append(np.full(length, np.nan))
      continue
    if role == 'ecg':
      if name not in leads:
        leads.append(name)
      lead = leads.index(name)
    rate = rec.fs * rec.samps_per_frame[index]
    values = resample(rec.e_p_signal[index], rate)
    fitted = np.full(length, np.nan)
    fitted[:min(length, len(values))] = values[:length]
    out.append(fitted)
  return out[0], out[1], out[2], lead


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
    parts, leads = [], []
    for seg_name, seg_len in segments:
      seconds = seg_len / header.fs
      if seg_name is None:
        parts.append(_read_segment(path, names, leads))
      elif seg_name == '~' or seg_len == 0 or seg_name.endswith('_layout'):
        if seg_len:  # a gap: no signal for seg_len frames
          gap = np.full(int(round(seconds * FS)), np.nan)
          parts.append((gap, gap, gap, -1))
      else:
        parts.append(_read_segment(os.path.join(directory, seg_name), names, leads))
  except RecordError:
    raise
  except Exception as e:  # wfdb raises many types for corrupt or truncated files
    raise RecordError(f'{path}: cannot read WFDB record ({type(e).__name__}: {e})') from e

  ecg, ppg, abp = (np.concatenate([p[i] for p in parts]) if parts else np.zeros(0)
                   for i in range(3))
  lead = np.concatenate([np.full(len(p[0]), p[3], np.int8) for p in parts]) if parts else (
      np.zeros(0, np.int8))
  lead[~np.isfinite(ecg)] = -1
  for role, values, wanted in (('ECG', ecg, names.ecg_leads), ('PPG', ppg, names.ppg_names),
                               ('ABP', abp, names.abp_names)):
    if not np.isfinite(values).any():
      raise RecordError(f'{path}: missing a required signal: {role} (looked for '
                        f'{", ".join(wanted)})')
  return Record(record=os.path.basename(path), subject=subject_of(path), source='mimic3',
                ecg=ecg, ppg=ppg, abp=abp, ecg_lead=lead, leads=tuple(leads))


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
  """Writes a Record as a 125 Hz, 16-bit WFDB record (signals II, PLETH, ABP).

  NaN samples are written as WFDB's missing value. Returns the record path without
  extension (what `read_record` takes).
  """
  wfdb.wrsamp(record.record, fs=FS, units=['mV', 'NU', 'mmHg'], sig_name=['II', 'PLETH', 'ABP'],
              p_signal=np.stack([record.ecg, record.ppg, record.abp], axis=1),
              fmt=['16'] * 3, adc_gain=list(_WRITE_GAINS.values()), baseline=[0] * 3,
              write_dir=directory)
  return os.path.join(directory, record.record)
