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


def _has_run_longer(mask: np.ndarray, limit: float) -> bool:
  """Whether `mask` has a run of True longer than `limit`; counts first, since no run
  is longer than the count (most windows stop there)."""
  return np.count_nonzero(mask) > limit and _longest_run(mask) > limit


def _is_flat(x: np.ndarray, seconds: float) -> bool:
  # n equal consecutive samples = n - 1 zero differences.
  return _has_run_longer(np.diff(x) == 0, seconds * FS - 1)


def _is_clipped(x: np.ndarray, max_run: int, check_min: bool = True) -> bool:
  return _has_run_longer(x == x.max(), max_run) or (
      check_min and _has_run_longer(x == x.min(), max_run))


def max_lagged_correlation(a: np.ndarray, b: np.ndarray, max_lag: int) -> float:
  """max over |lag| <= max_lag of Pearson r(a[t], b[t + lag]) on the overlap.

  All lags at once: the products from one cross-correlation, the overlaps' sums and
  sums of squares from cumulative sums.
  """
  n = len(a)
  lags = np.arange(-max_lag, max_lag + 1)
  # sum_t a[t] b[t + k] for the wanted lags only: b padded by max_lag zeros on each side
  # (the full cross-correlation costs n / (2 max_lag + 1) times more).
  sxy = np.correlate(np.pad(b, max_lag), a, mode='valid')
  count = n - np.abs(lags)
  ca, ca2 = (np.concatenate([[0.0], np.cumsum(v)]) for v in (a, a * a))
  cb, cb2 = (np.concatenate([[0.0], np.cumsum(v)]) for v in (b, b * b))
  a_lo, a_hi = np.maximum(0, -lags), n - np.maximum(0, lags)  # a's overlap [a_lo, a_hi)
  b_lo, b_hi = np.maximum(0, lags), n - np.maximum(0, -lags)  # b's overlap
  sx, sx2 = ca[a_hi] - ca[a_lo], ca2[a_hi] - ca2[a_lo]
  sy, sy2 = cb[b_hi] - cb[b_lo], cb2[b_hi] - cb2[b_lo]
  var_x, var_y = sx2 - sx * sx / count, sy2 - sy * sy / count
  valid = (var_x > 1e-12 * np.abs(sx2)) & (var_y > 1e-12 * np.abs(sy2))
  if not valid.any():
    return -1.0
  r = (sxy - sx * sy / count)[valid] / np.sqrt(var_x[valid] * var_y[valid])
  return float(r.max())


def skewness(x: np.ndarray) -> float:
  """Sample skewness m3 / m2^1.5 of a 1-D series (scipy.stats.skew's biased estimate;
  NaN when constant), without scipy's per-call axis and NaN-policy handling, which cost
  a third of the checks' time per window."""
  centred = x - x.mean()
  m2 = np.mean(centred * centred)
  with np.errstate(invalid='ignore', divide='ignore'):
    return float(np.mean(centred * centred * centred) / m2**1.5)


def minmax_scale(x: np.ndarray) -> np.ndarray:
  """(..., T) -> float32, each series scaled to [0, 1] along its last axis (zeros where
  it is constant): the model's input scaling of ECG and PPG windows."""
  lo = x.min(axis=-1, keepdims=True)
  span = x.max(axis=-1, keepdims=True) - lo
  return ((x - lo) / np.where(span > 0, span, 1)).astype(np.float32)


def label_abp(raw_abp: np.ndarray, filtered_abp: np.ndarray):
  """(SBP, DBP, number of beats, heart rate bpm) of one ABP window."""
  peaks, feet = beats.abp_beats(raw_abp, filtered_abp)
  if len(peaks) < 2:
    return np.nan, np.nan, len(peaks), np.nan
  heart_rate = 60.0 * FS / float(np.median(np.diff(peaks)))
  return float(raw_abp[peaks].mean()), float(raw_abp[feet].mean()), len(peaks), heart_rate


def _ecg_fault(raw: np.ndarray, filtered: np.ndarray, rules: QualityRules) -> str:
  """The first ECG-only rule one lead's window fails ('' if none)."""
  if not (np.isfinite(raw).all() and np.isfinite(filtered).all()):
    return 'nan'
  if _is_flat(raw, rules.flat_seconds):
    return 'flat_line'
  if _is_clipped(raw, rules.max_extreme_run):
    return 'clipping'
  return ''


def judge(raw: dict, filtered: dict, rules: QualityRules):
  """(reject reason or '', SBP, DBP) for one window's raw and filtered signals."""
  nan = np.nan
  if any(not np.isfinite(v).all() for v in (*raw.values(), *filtered.values())):
    return 'nan', nan, nan
  if any(_is_flat(v, rules.flat_seconds) for v in raw.values()):
    return 'flat_line', nan, nan
  if any(_is_clipped(v, rules.max_extreme_run, check_min=k != 'ppg') for k, v in raw.items()):
    return 'clipping', nan, nan
  lo, hi = rules.abp_range_mmhg
  if raw['abp'].min() < lo or raw['abp'].max() > hi:
    return 'abp_range', nan, nan
  sbp, dbp, count, heart_rate = label_abp(raw['abp'], filtered['abp'])
  if count < rules.min_beats:
    return 'too_few_beats', sbp, dbp
  if not rules.heart_rate_bpm[0] <= heart_rate <= rules.heart_rate_bpm[1]:
    return 'heart_rate', sbp, dbp
  if sbp <= dbp:
    return 'sbp_le_dbp', sbp, dbp
  if skewness(filtered['ppg']) < rules.min_ppg_skewness:
    return 'ppg_skewness', sbp, dbp
  lag = int(round(rules.max_lag_seconds * FS))
  if max_lagged_correlation(filtered['ppg'], filtered['abp'], lag) < rules.min_ppg_abp_correlation:
    return 'ppg_abp_correlation', sbp, dbp
  return '', sbp, dbp


def _choose_lead(raw_ecg: np.ndarray, filtered_ecg: np.ndarray, rules: QualityRules):
  """Row of the lead a window uses (see the module doc), or None when no lead is present
  throughout the window. raw_ecg, filtered_ecg: (L, 1250)."""
  present = [k for k in range(len(raw_ecg)) if np.isfinite(raw_ecg[k]).all()]
  return next((k for k in present if not _ecg_fault(raw_ecg[k], filtered_ecg[k], rules)),
              present[0] if present else None)


def windows_of(record: Record, rules: QualityRules = QualityRules()) -> Iterator[Window]:
  """Every non-overlapping 10-s window of `record`, accepted or not, in time order."""
  ecg = np.stack([beats.filter_ecg(lead) for lead in record.ecg])  # (L, T)
  filtered = {'ppg': beats.filter_pulse(record.ppg), 'abp': beats.filter_pulse(record.abp)}
  raw = {'ppg': record.ppg, 'abp': record.abp}
  for start in range(0, record.num_samples - WINDOW + 1, WINDOW):
    part = slice(start, start + WINDOW)
    k = _choose_lead(record.ecg[:, part], ecg[:, part], rules)
    row = 0 if k is None else k
    reject, sbp, dbp = judge({'ecg': record.ecg[row, part], **{n: v[part] for n, v in raw.items()}},
                             {'ecg': ecg[row, part], **{n: v[part] for n, v in filtered.items()}},
                             rules)
    if k is None and reject == 'nan' and np.isfinite(record.ecg[:, part]).any(0).all() and all(
        np.isfinite(v[part]).all() for v in (*raw.values(), *filtered.values())):
      reject = 'ecg_lead_change'
    lead = record.leads[k] if k is not None else ''
    inputs = (ecg[row, part], filtered['ppg'][part])
    signals = (minmax_scale(np.stack(inputs))
               if all(np.isfinite(x).all() for x in inputs) else None)
    yield Window(record=record.record, subject=record.subject, source=record.source,
                 start_s=start / FS, lead=lead, sbp_mmhg=sbp, dbp_mmhg=dbp, reject=reject,
                 signals=signals)
