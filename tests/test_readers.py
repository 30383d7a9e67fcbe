"""MIMIC-III (WFDB) and VitalDB (.vital) readers on small files written here."""

import numpy as np
import pytest
import vitaldb
import wfdb
from scipy import signal

from input_pipeline import mimic3, prepare, synthetic, vitaldb_files
from input_pipeline.records import RecordError, resample
from input_pipeline.windows import windows_of

FS = 125


@pytest.fixture(scope='module')
def clean():
  """A 2-minute synthetic subject without artifacts: its record and window labels."""
  record, _ = synthetic.subject(3, synthetic.CohortConfig(minutes_per_subject=2,
                                                          artifact_rate=0.0))
  labels = {w.start_s: (w.sbp_mmhg, w.dbp_mmhg) for w in windows_of(record) if w.accepted}
  assert len(labels) >= 10
  return record, labels


def _labels(record):
  return {w.start_s: (w.sbp_mmhg, w.dbp_mmhg) for w in windows_of(record) if w.accepted}


def _assert_same_labels(got, expected, tolerance=0.5):
  assert set(got) == set(expected)
  for start, (sbp, dbp) in expected.items():
    assert got[start] == pytest.approx((sbp, dbp), abs=tolerance), start


# WFDB gains per signal (ADC units per physical unit): 16-bit samples hold +-327 mmHg.
GAIN = {'II': 1000.0, 'V': 1000.0, 'PLETH': 10000.0, 'Pleth': 10000.0, 'ABP': 100.0}
UNIT = {'II': 'mV', 'V': 'mV', 'PLETH': 'NU', 'Pleth': 'NU', 'ABP': 'mmHg'}


def _write(directory, name, signals: dict, fs=FS):
  """wrsamp of name -> (T,) arrays; NaN becomes WFDB's missing-sample value."""
  wfdb.wrsamp(name, fs=fs, units=[UNIT[s] for s in signals], sig_name=list(signals),
              p_signal=np.stack(list(signals.values()), axis=1), fmt=['16'] * len(signals),
              adc_gain=[GAIN[s] for s in signals], baseline=[0] * len(signals),
              write_dir=str(directory))
  return str(directory / name)


def test_single_segment_record_round_trip(tmp_path, clean):
  record, labels = clean
  path = _write(tmp_path, 'p000123-rec', {'II': record.ecg[0], 'PLETH': record.ppg,
                                          'ABP': record.abp})
  read = mimic3.read_record(path)
  assert read.subject == 'p000123' and read.leads == ('II',) and read.source == 'mimic3'
  np.testing.assert_allclose(read.abp, record.abp, atol=0.006)
  _assert_same_labels(_labels(read), labels, tolerance=0.01)


def test_multi_rate_record_is_resampled_per_channel(tmp_path, clean):
  record, labels = clean
  ecg_250 = signal.resample_poly(record.ecg[0], 2, 1)
  abp_500 = signal.resample_poly(record.abp, 4, 1)
  names = ['II', 'Pleth', 'ABP']
  wfdb.wrsamp('multirate', fs=FS, units=[UNIT[s] for s in names], sig_name=names,
              e_p_signal=[ecg_250, record.ppg, abp_500], samps_per_frame=[2, 1, 4],
              fmt=['16'] * 3, adc_gain=[GAIN[s] for s in names], baseline=[0] * 3,
              write_dir=str(tmp_path))
  read = mimic3.read_record(str(tmp_path / 'multirate'))
  assert read.num_samples == record.num_samples
  middle = slice(100, -100)
  assert np.abs(read.abp[middle] - record.abp[middle]).max() < 1.0
  _assert_same_labels(_labels(read), labels)


def _master_header(directory, name, segments, fs=FS):
  total = sum(n for _, n in segments)
  lines = [f'{name}/{len(segments)} 3 {fs} {total}'] + [f'{s} {n}' for s, n in segments]
  (directory / f'{name}.hea').write_text('\n'.join(lines) + '\n')
  return str(directory / name)


def test_multi_segment_record_with_gap_and_changing_channels(tmp_path, clean):
  record, _ = clean
  n = 30 * FS  # 30-s segments
  a = slice(0, n)
  _write(tmp_path, 'seg_a', {'II': record.ecg[0, a], 'PLETH': record.ppg[a], 'ABP': record.abp[a]})
  b = slice(2 * n, 3 * n)
  _write(tmp_path, 'seg_b', {'II': record.ecg[0, b], 'PLETH': record.ppg[b]})  # no ABP here
  c = slice(3 * n, 4 * n)
  _write(tmp_path, 'seg_c', {'V': record.ecg[0, c], 'PLETH': record.ppg[c], 'ABP': record.abp[c]})
  path = _master_header(tmp_path, 'p000042-multi', [('seg_a', n), ('~', n), ('seg_b', n),
                                                    ('seg_c', n)])
  assert mimic3.find_records(str(tmp_path)) == [path]

  read = mimic3.read_record(path, mimic3.ChannelNames(ecg_leads=('II', 'V')))
  assert read.num_samples == 4 * n and read.leads == ('II', 'V')
  assert np.isnan(read.abp[n:3 * n]).all() and np.isfinite(read.abp[a]).all()
  verdicts = {w.start_s: (w.reject, w.lead) for w in windows_of(read)}
  assert all(verdicts[s][0] == 'nan' for s in (30, 40, 50, 60, 70, 80))  # gap, then no ABP
  assert {verdicts[s][1] for s in (0, 10, 20) if not verdicts[s][0]} == {'II'}
  assert {verdicts[s][1] for s in (90, 100, 110) if not verdicts[s][0]} == {'V'}
  np.testing.assert_allclose(read.abp[c], record.abp[c], atol=0.006)

  # With lead II only, the last segment has no ECG: its windows are NaN, not lead V.
  only_ii = mimic3.read_record(path)
  assert np.isnan(only_ii.ecg[0, c]).all() and only_ii.leads == ('II',)


def test_nan_gaps_reject_only_their_windows(tmp_path, clean):
  record, labels = clean
  ppg = record.ppg.copy()
  ppg[25 * FS:27 * FS] = np.nan
  read = mimic3.read_record(_write(tmp_path, 'gappy', {'II': record.ecg[0], 'PLETH': ppg,
                                                       'ABP': record.abp}))
  verdicts = {w.start_s: w.reject for w in windows_of(read)}
  assert verdicts[20.0] == 'nan'
  kept = {s for s, reason in verdicts.items() if not reason}
  assert kept == set(labels) - {20.0}


@pytest.mark.parametrize('absent,role', [('ABP', 'ABP'), ('PLETH', 'PPG'), ('II', 'ECG')])
def test_missing_required_signal_is_named(tmp_path, clean, absent, role):
  record, _ = clean
  signals = {'II': record.ecg[0], 'PLETH': record.ppg, 'ABP': record.abp}
  del signals[absent]
  path = _write(tmp_path, 'partial', signals)
  with pytest.raises(RecordError, match=f'partial: missing a required signal: {role}'):
    mimic3.read_record(path)


def test_truncated_and_corrupt_records_are_named(tmp_path, clean):
  record, _ = clean
  path = _write(tmp_path, 'truncated', {'II': record.ecg[0], 'PLETH': record.ppg,
                                        'ABP': record.abp})
  data = (tmp_path / 'truncated.dat').read_bytes()
  (tmp_path / 'truncated.dat').write_bytes(data[:len(data) // 3])
  with pytest.raises(RecordError, match='truncated: cannot read WFDB record'):
    mimic3.read_record(path)
  (tmp_path / 'garbled.hea').write_text('this is not a header\n')
  with pytest.raises(RecordError, match='garbled: cannot read WFDB record'):
    mimic3.read_record(str(tmp_path / 'garbled'))


def test_prepare_skips_bad_records_and_goes_on(tmp_path, clean):
  record, labels = clean
  _write(tmp_path, 'good', {'II': record.ecg[0], 'PLETH': record.ppg, 'ABP': record.abp})
  _write(tmp_path, 'no_abp', {'II': record.ecg[0], 'PLETH': record.ppg})
  prepared = prepare.prepare(prepare.PrepareOptions(source='mimic3', input_dir=str(tmp_path),
                                                    protocol='random'), progress=False)
  assert prepared.summary()['records_read'] == 1 and len(prepared.sbp) == len(labels)
  [(name, reason)] = prepared.failures
  assert name.endswith('no_abp') and 'missing a required signal: ABP' in reason


def _write_vital(path, record, fs=500, names=('SNUADC/ECG_II', 'SNUADC/PLETH', 'SNUADC/ART'),
                 gap=None):
  vf = vitaldb.VitalFile()
  for name, values in zip(names, (record.ecg[0], record.ppg, record.abp)):
    wave = signal.resample_poly(values, fs // FS, 1)
    start = 1_700_000_000.0
    if gap is None:
      recs = [{'dt': start, 'val': wave.astype(np.float32)}]
    else:  # two blocks with a hole of `gap` seconds between them
      half = len(wave) // 2
      skip = int(gap * fs)
      recs = [{'dt': start, 'val': wave[:half].astype(np.float32)},
              {'dt': start + (half + skip) / fs, 'val': wave[half + skip:].astype(np.float32)}]
    vf.add_track(name, recs, srate=fs, unit='')
  vf.to_vital(str(path))
  return str(path)


def test_vital_file_at_500_hz(tmp_path, clean):
  record, labels = clean
  read = vitaldb_files.read_vital(_write_vital(tmp_path / '0007.vital', record))
  assert read.subject == '0007' and read.source == 'vitaldb' and read.leads == ('II',)
  assert abs(read.num_samples - record.num_samples) <= 1
  _assert_same_labels(_labels(read), labels)
  assert vitaldb_files.find_records(str(tmp_path)) == [str(tmp_path / '0007.vital')]


def test_vital_gaps_become_nan(tmp_path, clean):
  record, _ = clean
  read = vitaldb_files.read_vital(_write_vital(tmp_path / 'gap.vital', record, gap=5.0))
  middle = record.num_samples // 2
  assert np.isnan(read.abp[middle + 50:middle + 5 * FS - 50]).all()
  assert np.isfinite(read.abp[:middle - 50]).all()


def test_vital_unknown_tracks_and_corrupt_files(tmp_path, clean):
  record, _ = clean
  path = _write_vital(tmp_path / 'other.vital', record,
                      names=('Solar8000/ECG', 'SNUADC/PLETH', 'SNUADC/ART'))
  with pytest.raises(RecordError, match=r"unknown or missing track names \['SNUADC/ECG_II'\]"
                                        r".*Solar8000/ECG"):
    vitaldb_files.read_vital(path)
  read = vitaldb_files.read_vital(path, vitaldb_files.TrackNames(ecg='Solar8000/ECG'))
  assert read.leads == ('ECG',)
  corrupt = tmp_path / 'corrupt.vital'
  corrupt.write_bytes(b'\x1f\x8b' + bytes(100))
  with pytest.raises(RecordError, match='corrupt.vital'):
    vitaldb_files.read_vital(str(corrupt))


def test_resampling_keeps_the_signal_and_the_gaps():
  t = np.arange(int(60 * 124.945)) / 124.945
  x = np.sin(2 * np.pi * 1.3 * t)
  x[3000:3100] = np.nan
  y = resample(x, 124.945)
  t_out = np.arange(len(y)) / FS
  finite = np.isfinite(y)
  assert np.abs(y[finite][50:-50] - np.sin(2 * np.pi * 1.3 * t_out[finite][50:-50])).max() < 0.01
  gap = (t_out > 3000 / 124.945) & (t_out < 3100 / 124.945)
  assert np.isnan(y[gap]).all() and finite.mean() > 0.95
