"""Unlabelled recordings for pre-training: EDF and WFDB readers, channels, resampling,
normalisation, padding, held-out windows and bad files."""

import pathlib

import numpy as np
import pytest
import wfdb

from conftest import TEST_DATA
from input_pipeline import unlabelled
from input_pipeline.records import RecordError

SHARED_EEG = pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'eeg' / 'test.edf'
A103L = TEST_DATA / 'unlabelled' / 'a103l.hea'


def test_wfdb_ecg_and_ppg_chosen_resampled_and_scaled():
  options = unlabelled.UnlabelledOptions(channels=('pleth', 'II'))
  read = unlabelled.read_windows(str(A103L), options)
  train, validation = read.splits['train'], read.splits['validation']
  # 330 s at 250 Hz -> 125 Hz: 33 windows of 10 s, the last ceil(3.3) = 4 held out.
  assert train[0].shape == (29, 2, 1250) and validation[0].shape == (4, 2, 1250)
  assert read.channel_names == {str(A103L): ('PLETH', 'II')}
  assert train[1].all() and not read.failed
  np.testing.assert_allclose(train[0].min(axis=2), 0.0)
  np.testing.assert_allclose(train[0].max(axis=2), 1.0, rtol=1e-6)
  # Channel 0 is the PPG: the first window equals the resampled, min-max scaled signal.
  record = wfdb.rdrecord(str(A103L)[:-4], channel_names=['PLETH'])
  ppg = unlabelled.resample(record.p_signal[:, 0], 250.0, 125.0)[:1250]
  np.testing.assert_allclose(train[0][0, 0], (ppg - ppg.min()) / np.ptp(ppg), atol=1e-5)


@pytest.mark.parametrize('how', ['minmax_symmetric', 'zscore'])
def test_other_normalisations(how):
  options = unlabelled.UnlabelledOptions(channels=('V',), window_seconds=5,
                                         normalisation=how)
  signals = unlabelled.read_windows(str(A103L), options).splits['train'][0]
  if how == 'zscore':
    np.testing.assert_allclose(signals.mean(axis=2), 0, atol=1e-4)
    np.testing.assert_allclose(signals.std(axis=2), 1, rtol=1e-4)
  else:
    np.testing.assert_allclose(signals.min(axis=2), -1)
    np.testing.assert_allclose(signals.max(axis=2), 1, rtol=1e-6)


@pytest.mark.skipif(not SHARED_EEG.exists(), reason='../shared/data/eeg/test.edf is absent '
                    '(the shared data is not part of the repository)')
def test_edf_eeg_padded_beside_ecg_ppg():
  options = unlabelled.UnlabelledOptions(sample_rate_hz=256, window_seconds=5, pad_channels=20)
  read = unlabelled.read_windows(f'{SHARED_EEG},{A103L}', options)
  signals, mask = read.splits['train']
  assert signals.shape[1:] == (20, 1280)
  eeg_rows = mask.sum(axis=1) == 16
  # 60 s of EEG: 12 windows of 5 s, 2 held out; 330 s of ECG + PPG: 66 windows, 7 held out.
  assert eeg_rows.sum() == 10 and (mask.sum(axis=1) == 3).sum() == 59
  assert read.channel_names[str(SHARED_EEG)][0] == 'EEG Fp1'
  assert not signals[~mask].any()  # padding is zeros
  with pytest.raises(RecordError, match='more channels than pad_channels=8'):
    unlabelled.read_windows(str(SHARED_EEG), unlabelled.UnlabelledOptions(pad_channels=8))


def test_bad_files_are_named_and_bad_windows_counted(tmp_path):
  (tmp_path / 'broken.edf').write_bytes(b'0       not an edf header')
  (tmp_path / 'gone.hea').write_text('gone 1 125 5000\ngone.dat 16 200 16 0 0 0 0 PLETH\n')
  signal = np.sin(np.linspace(0, 200, 5000))[:, None] * np.ones((1, 2))
  signal[100:200, 0] = np.nan  # a gap in window 0
  signal[2500:3750, 1] = 0.25  # channel 1 flat through window 2
  wfdb.wrsamp('good', fs=125, units=['mV', 'NU'], sig_name=['II', 'PLETH'], p_signal=signal,
              fmt=['16', '16'], write_dir=str(tmp_path))
  read = unlabelled.read_windows(str(tmp_path), unlabelled.UnlabelledOptions())
  assert sorted(pathlib.Path(p).name for p, _ in read.failed) == ['broken.edf', 'gone.hea']
  assert all('cannot read' in why for _, why in read.failed)
  assert read.skipped_windows == {'gap (NaN)': 1, 'flat channel': 1}
  assert len(read.splits['train'][0]) + len(read.splits['validation'][0]) == 2
  assert 'skipped' in read.summary() and 'broken.edf' in read.summary()
  with pytest.raises(RecordError, match='no channel ABP'):
    unlabelled.read_windows(str(tmp_path / 'good.hea'),
                            unlabelled.UnlabelledOptions(channels=('ABP',)))
  with pytest.raises(RecordError, match='matches'):
    unlabelled.read_windows(str(tmp_path / '*.nothing'), unlabelled.UnlabelledOptions())


def test_recordings_found_through_folders(tmp_path):
  nested = tmp_path / 'site' / 'patient'
  nested.mkdir(parents=True)
  for suffix in ('hea', 'mat'):
    (nested / f'a103l.{suffix}').write_bytes((TEST_DATA / 'unlabelled' / f'a103l.{suffix}')
                                             .read_bytes())
  assert unlabelled.find_recordings(f'{tmp_path}/**/*.hea') == [str(nested / 'a103l.hea')]
  assert unlabelled.find_recordings(f'{nested}, {tmp_path}/*.edf') == [str(nested / 'a103l.hea')]
