"""A record's aligned ECG, PPG and ABP at 125 Hz, and resampling to 125 Hz.

Every reader (MIMIC-III WFDB, VitalDB .vital, the synthetic cohort) produces `Record`s;
everything downstream (windows, labels, splits) reads only this.
"""

from __future__ import annotations

import dataclasses
import fractions

import numpy as np
from scipy import signal

FS = 125.0  # Hz, the rate of every window (PulseDB's)


class RecordError(ValueError):
  """A record that cannot be used (unreadable, missing a required signal, ...)."""


@dataclasses.dataclass
class Record:
  """One record's signals on a common 125 Hz time base.

  Attributes:
    record: record name (file stem, or WFDB record name).
    subject: subject identifier; windows of one subject never cross a
      subject-independent split.
    source: 'mimic3', 'vitaldb' or 'synthetic'.
    ecg: float64 (L, T) at 125 Hz in mV, one row per ECG lead of `leads` (in order of
      preference; each window uses the first lead that is usable throughout it).
    ppg, abp: float64 (T,) at 125 Hz; PPG in device units, ABP in mmHg.
    NaN wherever a signal is absent or has a gap.
    leads: names of the ECG leads, one per row of `ecg`.
  """

  record: str
  subject: str
  source: str
  ecg: np.ndarray
  ppg: np.ndarray
  abp: np.ndarray
  leads: tuple[str, ...]

  def __post_init__(self):
    if self.ecg.ndim != 2 or len(self.ecg) != len(self.leads):
      raise RecordError(f'{self.record}: ECG of shape {self.ecg.shape} for leads {self.leads}; '
                        'expected one row per lead')
    lengths = {self.ecg.shape[1], len(self.ppg), len(self.abp)}
    if len(lengths) != 1:
      raise RecordError(f'{self.record}: signals of different lengths {sorted(lengths)}')

  @property
  def num_samples(self) -> int:
    return len(self.abp)


def resample(x: np.ndarray, fs_in: float, fs_out: float = FS) -> np.ndarray:
  """Resamples (T,) `x` from fs_in to fs_out Hz with an anti-aliasing polyphase filter.

  NaN gaps are bridged by linear interpolation for the filter, then put back (widened by
  the filter's reach) so that no output sample pretends to be measured data.
  """
  x = np.asarray(x, np.float64)
  if abs(fs_in - fs_out) < 1e-9 * fs_out:
    return x.copy()
  if len(x) == 0:
    return x.copy()
  ratio = fractions.Fraction(fs_out / fs_in).limit_denominator(100_000)
  if abs(float(ratio) - fs_out / fs_in) > 1e-6 * fs_out / fs_in:
    raise RecordError(f'cannot resample {fs_in} Hz to {fs_out} Hz with a rational ratio')
  up, down = ratio.numerator, ratio.denominator
  missing = ~np.isfinite(x)
  filled = x
  if missing.any():
    if missing.all():
      return np.full(int(np.ceil(len(x) * up / down)), np.nan)
    idx = np.arange(len(x))
    filled = x.copy()
    filled[missing] = np.interp(idx[missing], idx[~missing], x[~missing])
  out = signal.resample_poly(filled, up, down, padtype='line')
  if missing.any():
    # An output sample is invalid if any input sample within the filter's reach is.
    reach = int(np.ceil(10 * max(up, down) / up)) + 1
    bad = np.convolve(missing.astype(float), np.ones(2 * reach + 1), 'same') > 0
    src = np.minimum((np.arange(len(out)) * down / up).round().astype(int), len(x) - 1)
    out[bad[src]] = np.nan
  return out
