"""10-s windows of a `Record` with SBP/DBP labels and PulseDB's quality verdicts.

Each record is cut into non-overlapping 10-s windows (1250 samples at 125 Hz) from its
first sample. A window is accepted only if it passes every rule below, checked in this
order; the first rule it fails is its reject reason:

  nan                  a NaN (gap or absent channel) in ECG, PPG or ABP, raw or filtered
  ecg_lead_change      no ECG lead covers the whole window, though some lead is present at
                       every sample (the lead changes inside the window)
  flat_line            more than 1 s of constant amplitude in any signal
  clipping             more than 3 consecutive samples equal to the window's max (ECG,
                       PPG, ABP) or min (ECG, ABP). The PPG minimum is exempt: the slow
                       diastolic trough of a 12-bit PPG holds one level for up to 10
                       samples at 125 Hz on clean real data; that is not clipping
  abp_range            raw ABP outside 20-250 mmHg
  too_few_beats        fewer than 4 ABP systolic peaks
  heart_rate           heart rate from the ABP beats outside 30-200 bpm
  sbp_le_dbp           SBP <= DBP
  ppg_skewness         skewness of the filtered PPG < 0
  ppg_abp_correlation  max Pearson correlation of filtered PPG and ABP over lags
                       within +-1 s < 0.9

With several ECG leads (in order of preference), a window uses the first lead that is
present throughout it and passes the ECG's own checks (NaN, flat line, clipping); if none
does, the first lead present throughout it, whose fault is then the verdict.

Labels: SBP = mean raw ABP at the systolic peaks, DBP = mean raw ABP at the feet (mmHg).
Model inputs: the filtered ECG and PPG, each min-max scaled to [0, 1] per window.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np
from scipy import fft

from input_pipeline import beats
from input_pipeline.records import FS, Record

WINDOW_SECONDS = 10.0
WINDOW = int(WINDOW_SECONDS * FS)  # 1250 samples

REJECT_REASONS = ('nan', 'ecg_lead_change', 'flat_line', 'clipping', 'abp_range',
                  'too_few_beats', 'heart_rate', 'sbp_le_dbp', 'ppg_skewness',
                  'ppg_abp_correlation')
# Columns of windows.csv, the report of every candidate window (any source).
REPORT_COLUMNS = ('record', 'subject', 'start_s', 'lead', 'sbp_mmhg', 'dbp_mmhg', 'status',
                  'split')


@dataclasses.dataclass(frozen=True)
class QualityRules:
  """Thresholds of the quality rules (defaults: PulseDB's, plus plausibility checks)."""
  flat_seconds: float = 1.0  # longest allowed run of constant amplitude
  max_extreme_run: int = 3  # longest allowed run of samples at the window min / max
  abp_range_mmhg: tuple[float, float] = (20.0, 250.0)
  min_beats: int = 4
  heart_rate_bpm: tuple[float, float] = (30.0, 200.0)
  min_ppg_skewness: float = 0.0
  min_ppg_abp_correlation: float = 0.9
  max_lag_seconds: float = 1.0


@dataclasses.dataclass
class Window:
  """One candidate window and its verdict.

  signals: (2, 1250) float32 [ECG, PPG] scaled to [0, 1], or None where the ECG or PPG
    has a gap (rejected windows keep theirs, so that a model can still be run on them).
  sbp_mmhg / dbp_mmhg: labels (NaN when they could not be computed).
  reject: '' when accepted, else one of REJECT_REASONS.
  """
  record: str
  subject: str
  source: str
  start_s: float
  lead: str
  sbp_mmhg: float
  dbp_mmhg: float
  reject: str
  signals: np.ndarray | None = None

  @property
  def accepted(self) -> bool:
    return not self.reject


def _longest_run(mask: np.ndarray) -> int:
  """Length of the longest run of True in a 1-D bool array."""
  if not mask.any():
    return 0
  edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
  return int((edges[1::2] - edges[::2]).max())


def _has_run_longer(mask: np.ndarray, limit: float) -> np.ndarray:
  """(..., T) bool -> (...): whether each series has a run of True longer than `limit`;
  counts first, since no run is longer than the count (most windows stop there)."""
  longer = np.count_nonzero(mask, axis=-1) > limit
  for index in zip(*np.nonzero(longer)):
    longer[index] = _longest_run(mask[index]) > limit
  return longer


def _is_flat(x: np.ndarray, seconds: float) -> np.ndarray:
  """(..., T) -> (...): more than `seconds` of constant amplitude."""
  # n equal consecutive samples = n - 1 zero differences.
  return _has_run_longer(np.diff(x, axis=-1) == 0, seconds * FS - 1)


def _is_clipped(x: np.ndarray, max_run: int, check_min: bool = True) -> np.ndarray:
  """(..., T) -> (...): more than `max_run` consecutive samples at the maximum (or the
  minimum)."""
  clipped = _has_run_longer(x == x.max(axis=-1, keepdims=True), max_run)
  if check_min:
    clipped |= _has_run_longer(x == x.min(axis=-1, keepdims=True), max_run)
  return clipped


def max_lagged_correlation(a: np.ndarray, b: np.ndarray, max_lag: int) -> np.ndarray:
  """max over |lag| <= max_lag of Pearson r(a[t], b[t + lag]) on the overlap, for each
  pair of rows of (..., n) `a` and `b`; -1 where no lag has variance in both.

  All lags and rows at once: the products sum_t a[t] b[t + lag] from FFTs of length at
  least n + max_lag (no product wraps around), the overlaps' sums and sums of squares
  from cumulative sums. (np.correlate, row by row, took a fifth of the windowing; the FFT
  moves r by about 1e-15.)
  """
  n = a.shape[-1]
  lags = np.arange(-max_lag, max_lag + 1)
  size = fft.next_fast_len(n + max_lag, real=True)
  products = fft.irfft(np.conj(fft.rfft(a, size)) * fft.rfft(b, size), size)
  sxy = products[..., lags % size]
  count = n - np.abs(lags)
  zero = np.zeros((*a.shape[:-1], 1))
  ca, ca2 = (np.concatenate([zero, np.cumsum(v, axis=-1)], axis=-1) for v in (a, a * a))
  cb, cb2 = (np.concatenate([zero, np.cumsum(v, axis=-1)], axis=-1) for v in (b, b * b))
  a_lo, a_hi = np.maximum(0, -lags), n - np.maximum(0, lags)  # a's overlap [a_lo, a_hi)
  b_lo, b_hi = np.maximum(0, lags), n - np.maximum(0, -lags)  # b's overlap
  sx, sx2 = ca[..., a_hi] - ca[..., a_lo], ca2[..., a_hi] - ca2[..., a_lo]
  sy, sy2 = cb[..., b_hi] - cb[..., b_lo], cb2[..., b_hi] - cb2[..., b_lo]
  var_x, var_y = sx2 - sx * sx / count, sy2 - sy * sy / count
  valid = (var_x > 1e-12 * np.abs(sx2)) & (var_y > 1e-12 * np.abs(sy2))
  with np.errstate(invalid='ignore', divide='ignore'):
    r = (sxy - sx * sy / count) / np.sqrt(var_x * var_y)
  return np.where(valid, r, -1.0).max(axis=-1)


def skewness(x: np.ndarray) -> np.ndarray:
  """Sample skewness m3 / m2^1.5 along the last axis (scipy.stats.skew's biased
  estimate; NaN when constant), without scipy's per-call axis and NaN-policy handling,
  which cost a third of the checks' time per window."""
  centred = x - x.mean(axis=-1, keepdims=True)
  m2 = np.mean(centred * centred, axis=-1)
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.mean(centred * centred * centred, axis=-1) / m2**1.5


def minmax_scale(x: np.ndarray) -> np.ndarray:
  """(..., T) -> float32, each series scaled to [0, 1] along its last axis (zeros where
  it is constant): the model's input scaling of ECG and PPG windows."""
  lo = x.min(axis=-1, keepdims=True)
  span = x.max(axis=-1, keepdims=True) - lo
  return ((x - lo) / np.where(span > 0, span, 1)).astype(np.float32)


def _row_spans(rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
  """(number of values, index of the first) of each of n rows, from the sorted row of
  each value."""
  return np.bincount(rows, minlength=n), np.searchsorted(rows, np.arange(n))


def _row_means(values: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
  """(n,) mean of the values of each row (NaN for a row without any); `rows` (sorted)
  gives each value's row. Rows with equally many values are averaged together as the
  rows of one matrix, which numpy sums exactly as np.mean sums each alone."""
  count, start = _row_spans(rows, n)
  out = np.full(n, np.nan)
  for size in np.unique(count[count > 0]):
    which = np.flatnonzero(count == size)
    out[which] = values[start[which, None] + np.arange(size)].mean(axis=1)
  return out


def _row_medians(values: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
  """(n,) np.median of the values of each row (NaN for a row without any)."""
  if not len(values):
    return np.full(n, np.nan)
  order = np.lexsort((values, rows))
  values, rows = values[order], rows[order]
  count, start = _row_spans(rows, n)
  low = values[np.minimum(start + (count - 1) // 2, len(values) - 1)]
  high = values[np.minimum(start + count // 2, len(values) - 1)]
  return np.where(count > 0, (low + high) / 2, np.nan)


def _labels(raw_abp: np.ndarray, peaks: np.ndarray, feet: np.ndarray):
  """(SBP, DBP, heart rate bpm, number of peaks) of each row of (n, T) raw ABP from its
  beats (beats.abp_beats_flat); SBP, DBP and heart rate NaN where a row has under 2 peaks.
  """
  n, length = raw_abp.shape
  flat = raw_abp.ravel()
  peak_rows = peaks // length
  same_window = peak_rows[1:] == peak_rows[:-1]  # consecutive peaks of one window
  intervals = np.diff(peaks)[same_window]  # samples between systolic peaks
  heart_rate = 60.0 * FS / _row_medians(intervals, peak_rows[1:][same_window], n)
  count = np.bincount(peak_rows, minlength=n)
  labels = [_row_means(flat[peaks], peak_rows, n), _row_means(flat[feet], feet // length, n),
            heart_rate]
  for label in labels:
    label[count < 2] = np.nan
  return (*labels, count)


def _ecg_passes(raw: np.ndarray, filtered: np.ndarray, rules: QualityRules) -> np.ndarray:
  """(..., n, T) ECG windows -> (..., n): True where a lead's window passes the ECG-only
  rules (no NaN, no flat line, no clipping)."""
  return (np.isfinite(raw).all(axis=-1) & np.isfinite(filtered).all(axis=-1) &
          ~_is_flat(raw, rules.flat_seconds) & ~_is_clipped(raw, rules.max_extreme_run))


class _Verdicts:
  """Reject reasons of n windows, filled rule by rule; a window keeps its first."""

  def __init__(self, n: int):
    self.reasons = np.full(n, '', dtype=object)

  def reject(self, fails: np.ndarray, reason: str) -> None:
    self.reasons[self.open & fails] = reason

  @property
  def open(self) -> np.ndarray:
    """Windows that passed every rule so far."""
    return self.reasons == ''


def _judge(raw: dict, filtered: dict, rules: QualityRules):
  """Reject reasons and SBP / DBP (mmHg) of n windows from their raw and filtered
  signals, dicts of (n, 1250) arrays with keys 'ecg', 'ppg', 'abp'."""
  n = len(raw['abp'])
  verdicts = _Verdicts(n)
  verdicts.reject(~np.all([np.isfinite(v).all(axis=-1)
                           for v in (*raw.values(), *filtered.values())], axis=0), 'nan')
  verdicts.reject(np.any([_is_flat(v, rules.flat_seconds) for v in raw.values()], axis=0),
                  'flat_line')
  verdicts.reject(np.any([_is_clipped(v, rules.max_extreme_run, check_min=k != 'ppg')
                          for k, v in raw.items()], axis=0), 'clipping')
  lo, hi = rules.abp_range_mmhg
  verdicts.reject((raw['abp'].min(axis=-1) < lo) | (raw['abp'].max(axis=-1) > hi),
                  'abp_range')
  sbp, dbp, heart_rate, count = (np.full(n, np.nan) for _ in range(4))
  rows = np.flatnonzero(verdicts.open)
  sbp[rows], dbp[rows], heart_rate[rows], count[rows] = _labels(
      raw['abp'][rows], *beats.abp_beats_flat(raw['abp'][rows], filtered['abp'][rows]))
  verdicts.reject(count < rules.min_beats, 'too_few_beats')
  low_bpm, high_bpm = rules.heart_rate_bpm
  verdicts.reject(~((low_bpm <= heart_rate) & (heart_rate <= high_bpm)), 'heart_rate')
  verdicts.reject(sbp <= dbp, 'sbp_le_dbp')
  rows = np.flatnonzero(verdicts.open)
  skew = np.full(n, np.nan)
  skew[rows] = skewness(filtered['ppg'][rows])
  verdicts.reject(skew < rules.min_ppg_skewness, 'ppg_skewness')
  rows = np.flatnonzero(verdicts.open)
  correlation = np.full(n, np.nan)
  correlation[rows] = max_lagged_correlation(filtered['ppg'][rows], filtered['abp'][rows],
                                             int(round(rules.max_lag_seconds * FS)))
  verdicts.reject(correlation < rules.min_ppg_abp_correlation, 'ppg_abp_correlation')
  return verdicts.reasons, sbp, dbp


def _choose_leads(raw_ecg: np.ndarray, filtered_ecg: np.ndarray, rules: QualityRules):
  """Per window, the row of the lead it uses (see the module doc), or -1 when no lead is
  present throughout the window. raw_ecg, filtered_ecg: (L, n, 1250) -> (n,) int."""
  present = np.isfinite(raw_ecg).all(axis=-1)  # (L, n)
  usable = _ecg_passes(raw_ecg, filtered_ecg, rules)  # present, and more
  return np.where(usable.any(axis=0), usable.argmax(axis=0),
                  np.where(present.any(axis=0), present.argmax(axis=0), -1))


def _cut(x: np.ndarray, n: int) -> np.ndarray:
  """(..., T) -> (..., n, 1250): the first n windows of `x`, one per row (a view)."""
  return x[..., :n * WINDOW].reshape(*x.shape[:-1], n, WINDOW)


def windows_of(record: Record, rules: QualityRules = QualityRules()) -> Iterator[Window]:
  """Every non-overlapping 10-s window of `record`, accepted or not, in time order. The
  rules run on all of a record's windows at once (numpy's per-call cost dominates one
  1250-sample window)."""
  n = record.num_samples // WINDOW
  ecg = np.stack([beats.filter_ecg(lead) for lead in record.ecg])  # (L, T)
  raw = {'ppg': _cut(record.ppg, n), 'abp': _cut(record.abp, n)}
  filtered = {k: _cut(beats.filter_pulse(getattr(record, k)), n) for k in ('ppg', 'abp')}
  raw_ecg, filtered_ecg = _cut(record.ecg, n), _cut(ecg, n)  # (L, n, 1250)
  leads = _choose_leads(raw_ecg, filtered_ecg, rules)
  windows = np.arange(n)
  row = np.maximum(leads, 0)
  reasons, sbp, dbp = _judge({'ecg': raw_ecg[row, windows], **raw},
                             {'ecg': filtered_ecg[row, windows], **filtered}, rules)
  finite_pulses = np.all([np.isfinite(v).all(axis=-1)
                          for v in (*raw.values(), *filtered.values())], axis=0)
  lead_change = ((leads < 0) & (reasons == 'nan') & finite_pulses &
                 np.isfinite(raw_ecg).any(axis=0).all(axis=-1))
  reasons[lead_change] = 'ecg_lead_change'
  inputs = np.stack([filtered_ecg[row, windows], filtered['ppg']], axis=1)  # (n, 2, 1250)
  has_signals = np.isfinite(inputs).all(axis=(1, 2))
  with np.errstate(invalid='ignore'):
    signals = minmax_scale(inputs)
  for k in range(n):
    yield Window(record=record.record, subject=record.subject, source=record.source,
                 start_s=k * WINDOW / FS, lead=record.leads[leads[k]] if leads[k] >= 0 else '',
                 sbp_mmhg=float(sbp[k]), dbp_mmhg=float(dbp[k]), reject=reasons[k],
                 signals=signals[k] if has_signals[k] else None)
