"""Windows, labels and quality rules; the synthetic cohort; the real ICU recording."""

import dataclasses

import numpy as np
import pytest

from input_pipeline import mimic3, prepare, splits, synthetic, vitaldb_files, windows
from input_pipeline.windows import WINDOW, max_lagged_correlation, skewness, windows_of

FS = 125


@pytest.fixture(scope='module')
def subject():
  record, beats = synthetic.subject(1, synthetic.CohortConfig(minutes_per_subject=3,
                                                              artifact_rate=0.0))
  return record, beats


def test_labels_match_known_beat_values(subject):
  """SBP/DBP = mean of the generator's per-beat values in the window, within 1 mmHg."""
  record, beats = subject
  checked = 0
  for w in windows_of(record):
    assert w.accepted, w.reject
    inside = (beats.peak_s >= w.start_s) & (beats.peak_s < w.start_s + 10)
    feet = (beats.foot_s > beats.peak_s[inside].min()) & (beats.foot_s < w.start_s + 10)
    assert w.sbp_mmhg == pytest.approx(beats.sbp[inside].mean(), abs=1.0)
    assert w.dbp_mmhg == pytest.approx(beats.dbp[feet].mean(), abs=1.0)
    checked += 1
  assert checked == 18


def test_model_inputs_are_scaled_ecg_and_ppg(subject):
  record, _ = subject
  w = next(windows_of(record))
  assert w.signals.shape == (2, WINDOW) and w.signals.dtype == np.float32
  np.testing.assert_allclose(w.signals.min(axis=1), 0.0)
  np.testing.assert_allclose(w.signals.max(axis=1), 1.0)
  # Channel 0 follows the ECG (sharp R peaks), channel 1 the PPG (smooth pulses).
  assert np.abs(np.diff(w.signals[0])).max() > 3 * np.abs(np.diff(w.signals[1])).max()


def _verdict(record, window_index=2):
  return list(windows_of(record))[window_index].reject


def _edited(record, **signals):
  return dataclasses.replace(record, **{k: v.copy() for k, v in signals.items()})


@pytest.mark.parametrize('edit,reason', [
    ('gap', 'nan'), ('lead', 'ecg_lead_change'), ('flat', 'flat_line'),
    ('clip', 'clipping'), ('flush', 'abp_range'), ('slow', 'too_few_beats'),
    ('inverted', 'ppg_skewness'), ('foreign_ppg', 'ppg_abp_correlation')])
def test_each_quality_rule_rejects_its_artifact(subject, edit, reason):
  record, _ = subject
  window = slice(2 * WINDOW, 3 * WINDOW)
  assert _verdict(record) == ''
  r = _edited(record, ecg=record.ecg, ppg=record.ppg, abp=record.abp)
  noise = np.random.default_rng(0).normal(0, 0.3, WINDOW)
  if edit == 'gap':
    r.abp[window.start + 100:window.start + 110] = np.nan
  elif edit == 'lead':  # lead II for the first 600 samples, then lead V
    second = r.ecg.copy()
    r.ecg[0, window.start + 600:window.stop] = np.nan
    second[0, window.start:window.start + 600] = np.nan
    r = dataclasses.replace(r, ecg=np.concatenate([r.ecg, second]), leads=('II', 'V'))
  elif edit == 'flat':
    r.ppg[window.start + 200:window.start + 400] = r.ppg[window.start + 200]
  elif edit == 'clip':
    top = np.percentile(r.abp[window], 90)
    r.abp[window] = np.minimum(r.abp[window], top)
  elif edit == 'flush':  # noisy, so that it is not also a flat line
    r.abp[window.start + 300:window.start + 500] = 280.0 + noise[:200]
  elif edit == 'slow':  # one beat in 10 s: a pulse every 5 s is too few beats
    t = np.arange(WINDOW) / FS
    r.abp[window] = 80 + 40 * np.exp(-((t % 5.0) - 2.5) ** 2 / 0.02) + noise
  elif edit == 'inverted':
    r.ppg[window] = -r.ppg[window]
  else:  # a PPG from another subject: wrong rhythm for this ABP
    other, _ = synthetic.subject(7, synthetic.CohortConfig(minutes_per_subject=3,
                                                           artifact_rate=0.0))
    r.ppg[window] = other.ppg[window]
  assert _verdict(r) == reason


def test_cohort_is_deterministic_and_varied():
  config = synthetic.CohortConfig(num_subjects=3, minutes_per_subject=0.5)
  a, b = list(synthetic.cohort(config)), list(synthetic.cohort(config))
  for (ra, _), (rb, _) in zip(a, b):
    np.testing.assert_array_equal(ra.abp, rb.abp)
  means = [np.nanmean(r.abp) for r, _ in a]
  assert len(set(np.round(means, 3))) == 3
  other = synthetic.subject(0, dataclasses.replace(config, seed=1))[0]
  assert not np.array_equal(other.abp, a[0][0].abp)


def test_cohort_has_rejects_and_physiological_labels():
  prepared = prepare.prepare(prepare.PrepareOptions(cohort=synthetic.CohortConfig(
      num_subjects=12, minutes_per_subject=3)), progress=False)
  rejects = prepared.summary()['rejects']
  assert 0.8 < len(prepared.sbp) / len(prepared.candidates) < 0.99
  assert sum(rejects.values()) > 0 and sum(v > 0 for v in rejects.values()) >= 3
  assert 75 < prepared.sbp.min() and prepared.sbp.max() < 205
  assert 35 < prepared.dbp.min() and prepared.dbp.max() < 115
  assert (prepared.sbp - prepared.dbp).min() > 15


def test_bp_is_learnable_and_seen_subjects_are_easier():
  """A ridge regression on spectral features of the windows beats the mean predictor on
  subjects it never saw, and does clearly better on other windows of subjects it saw
  (the calibration-based split), as on real data. Averaged over three split seeds."""
  prepared = prepare.prepare(prepare.PrepareOptions(cohort=synthetic.CohortConfig(
      num_subjects=24, minutes_per_subject=3)), progress=False)
  spectra = np.fft.rfft(prepared.signals, axis=-1)[:, :, 1:120]
  cross = spectra[:, 0] * np.conj(spectra[:, 1])  # its phase holds the ECG-PPG delay
  x = np.concatenate([np.abs(spectra).reshape(len(cross), -1), cross.real, cross.imag], 1)
  x = (x - x.mean(0)) / (x.std(0) + 1e-6)
  y = np.stack([prepared.sbp, prepared.dbp], 1)
  ratio = {}  # model MAE / mean-predictor MAE, per protocol, for SBP and DBP
  for protocol in ('subject', 'random'):
    ratios = []
    for seed in (1, 2, 3):
      split = splits.make_split(protocol, prepared.subject, prepared.key, (0.7, 0.0, 0.3), seed)
      train, test = split['train'], split['test']
      w = np.linalg.solve(x[train].T @ x[train] + 30 * np.eye(x.shape[1]),
                          x[train].T @ (y[train] - y[train].mean(0)))
      model_mae = np.abs(x[test] @ w + y[train].mean(0) - y[test]).mean(0)
      ratios.append(model_mae / np.abs(y[train].mean(0) - y[test]).mean(0))
    ratio[protocol] = np.mean(ratios, axis=0)
  assert np.all(ratio['subject'] < 0.95), ratio
  assert np.all(ratio['random'] < ratio['subject'] - 0.1), ratio


@pytest.fixture(scope='module')
def real_forms(real_data):
  return {
      'wfdb multi-rate': mimic3.read_record(str(real_data / 'mixedsignals' / 'mixedsignals')),
      'wfdb 125 Hz': mimic3.read_record(str(real_data / 'derived' / 'mixedsignals_125hz')),
      'vital': vitaldb_files.read_vital(str(real_data / 'derived' /
                                            'mixedsignals_125hz.vital')),
  }


def test_real_recording_windows_and_labels(real_forms):
  labels = {}
  for form, record in real_forms.items():
    windows = list(windows_of(record))
    accepted = [w for w in windows if w.accepted]
    assert len(windows) == 23 and 20 <= len(accepted) <= 23, form
    assert windows[0].reject == 'nan'  # the first window holds a gap
    sbp = np.array([w.sbp_mmhg for w in accepted])
    dbp = np.array([w.dbp_mmhg for w in accepted])
    assert 150 <= sbp.min() and sbp.max() <= 165, form
    assert 85 <= dbp.min() and dbp.max() <= 95, form
    labels[form] = {w.start_s: (w.sbp_mmhg, w.dbp_mmhg) for w in accepted}
  reference = labels['wfdb multi-rate']
  for form, got in labels.items():
    assert set(got) == set(reference), form
    diff = np.array([np.subtract(got[s], reference[s]) for s in reference])
    assert np.abs(diff).max() < 1.0, form


def test_each_window_uses_the_first_listed_lead_that_passes_the_ecg_checks(real_data):
  """The real record has leads II and III. A window whose lead II is unusable (a flat
  stretch here, NaN there) uses lead III instead of being lost; the lead is recorded."""
  path = str(real_data / 'mixedsignals' / 'mixedsignals')
  record = mimic3.read_record(path, mimic3.ChannelNames(ecg_leads=('II', 'III')))
  assert record.leads == ('II', 'III') and record.ecg.shape == (2, record.num_samples)
  assert np.nanmax(np.abs(record.ecg[0] - record.ecg[1])) > 0.1  # two different leads
  flat, gap = slice(5 * WINDOW + 200, 5 * WINDOW + 400), slice(8 * WINDOW + 10, 8 * WINDOW + 20)
  record.ecg[0, flat] = record.ecg[0, flat.start]
  record.ecg[0, gap] = np.nan
  windows = list(windows_of(record))
  assert (windows[5].reject, windows[5].lead) == ('', 'III')
  assert (windows[8].reject, windows[8].lead) == ('', 'III')
  assert {w.lead for i, w in enumerate(windows) if w.accepted and i not in (5, 8)} == {'II'}
  only_ii = dataclasses.replace(record, ecg=record.ecg[:1], leads=('II',))
  verdicts = [w.reject for w in windows_of(only_ii)]
  assert verdicts[5] == 'flat_line' and verdicts[8] == 'nan'


def _lagged_correlation_by_definition(a, b, max_lag):
  best = -1.0
  for lag in range(-max_lag, max_lag + 1):
    x, y = (a[:len(a) - lag], b[lag:]) if lag >= 0 else (a[-lag:], b[:len(b) + lag])
    if x.std() > 0 and y.std() > 0:
      best = max(best, float(np.corrcoef(x, y)[0, 1]))
  return best


def test_lagged_correlation_equals_its_definition():
  rng = np.random.default_rng(0)
  t = np.arange(1250) / FS
  for _ in range(20):
    a = np.sin(2 * np.pi * rng.uniform(0.8, 2) * t) + rng.normal(0, rng.uniform(0.05, 1), 1250)
    b = 3 * np.roll(a, rng.integers(-100, 100)) + rng.normal(0, 0.3, 1250) + 100
    assert max_lagged_correlation(a, b, 125) == pytest.approx(
        _lagged_correlation_by_definition(a, b, 125), abs=1e-9)
  flat = np.full(1250, 2.0)
  assert max_lagged_correlation(flat, b, 125) == -1.0  # no variance, no correlation


def test_labels_of_all_windows_are_numpys_mean_and_median_of_each():
  """The per-window means (SBP, DBP) and medians (beat intervals) computed for all windows
  at once equal np.mean and np.median of each window's own values, to the last bit."""
  rng = np.random.default_rng(3)
  counts = rng.integers(0, 30, 60)
  counts[[0, 7, 59]] = 0  # windows without beats
  rows = np.repeat(np.arange(60), counts)
  values = rng.normal(100, 30, len(rows))
  intervals = rng.integers(40, 200, len(rows))  # in no order within a window
  means = windows._row_means(values, rows, 60)  # pylint: disable=protected-access
  medians = windows._row_medians(intervals, rows, 60)  # pylint: disable=protected-access
  for k in range(60):
    if counts[k]:
      assert means[k] == np.mean(values[rows == k]), k
      assert medians[k] == np.median(intervals[rows == k]), k
    else:
      assert np.isnan(means[k]) and np.isnan(medians[k])
  empty = np.zeros(0)
  assert np.isnan(windows._row_medians(empty, empty.astype(int), 2)).all()  # pylint: disable=protected-access


def test_skewness_is_scipys():
  from scipy import stats  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(7)
  for x in (rng.gamma(2.0, 1.0, 1250) - 2.0, -rng.gamma(3.0, 1.0, 1250), rng.normal(size=64)):
    assert skewness(x) == pytest.approx(float(stats.skew(x)), rel=1e-12)
  assert np.isnan(skewness(np.full(100, 0.5)))


def test_beats_of_stacked_windows_equal_each_windows_own(subject):
  """Batched beat detection: a window's peaks and feet do not depend on its neighbours
  (ranges that would cross a window's edge are dropped per window)."""
  from input_pipeline import beats as beat_detection  # pylint: disable=import-outside-toplevel
  record, _ = subject
  filtered = beat_detection.filter_pulse(record.abp)
  for offset in range(0, 150, 5):  # windows shifted so that beats fall on their edges
    n = (record.num_samples - offset) // WINDOW
    rows = [x[offset:offset + n * WINDOW].reshape(n, WINDOW) for x in (record.abp, filtered)]
    stacked_peaks, stacked_feet = beat_detection.abp_beats_flat(*rows)
    for k in range(n):
      peaks, feet = beat_detection.abp_beats(rows[0][k], rows[1][k])
      assert 10 <= len(peaks) == len(feet) + 1
      window = slice(k * WINDOW, (k + 1) * WINDOW)
      in_window = lambda flat: flat[(flat >= window.start) & (flat < window.stop)] - window.start
      np.testing.assert_array_equal(in_window(stacked_peaks), peaks)
      np.testing.assert_array_equal(in_window(stacked_feet), feet)


@pytest.mark.parametrize('width', [1, 14, 83])
def test_moving_average_is_numpys_same_mode_convolution(width):
  from input_pipeline import beats as beat_detection  # pylint: disable=import-outside-toplevel
  x = np.random.default_rng(width).gamma(2.0, 3.0, (3, 1250))
  expected = np.stack([np.convolve(row, np.ones(width) / width, mode='same') for row in x])
  np.testing.assert_allclose(beat_detection._moving_average(x, width), expected, rtol=1e-12,
                             atol=1e-12)
