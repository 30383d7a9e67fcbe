"""The Apache Beam preparation (input_pipeline/beam_prepare.py + the TFDS builders) against
the single-process reference (prepare.prepare), with 1 and 2 workers and failing records."""

import filecmp
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from input_pipeline import (beam_prepare, mimic3, pipeline, prepare, synthetic, tfds_builders,
                            windows)


def _examples(data_dir: str) -> dict[str, dict]:
  """split -> {'<record>:<start_s>': example} of the dataset under data_dir."""
  builder = pipeline.load_builder(data_dir)
  return {split: {f"{ex['record'].decode()}:{ex['start_s']:.3f}": ex
                  for ex in builder.as_dataset(split=split).as_numpy_iterator()}
          for split in builder.info.splits}


def _assert_same_as_single_process(prepared: prepare.Prepared, data_dir: str) -> None:
  """Every accepted window of `prepared`, in the same split, with the same signals and
  labels, and nothing else; the same summary.json and windows.csv."""
  found = _examples(data_dir)
  assert {s: len(found.get(s, {})) for s in prepared.split} == {
      s: len(i) for s, i in prepared.split.items()}
  for split, indices in prepared.split.items():
    for i in indices:
      ex = found[split][f'{prepared.record[i]}:{prepared.start_s[i]:.3f}']
      np.testing.assert_array_equal(ex['signals'], prepared.signals[i])
      assert (ex['sbp'], ex['dbp'], ex['subject'].decode(), ex['lead'].decode()) == (
          prepared.sbp[i], prepared.dbp[i], prepared.subject[i], prepared.lead[i])
  reference = os.path.join(data_dir, 'reference')
  prepare.write_reports(prepared, reference)
  for name in ('summary.json', 'windows.csv'):
    assert filecmp.cmp(os.path.join(data_dir, name), os.path.join(reference, name),
                       shallow=False), name


@pytest.mark.parametrize('protocol', ['subject', 'random'])
def test_synthetic_cohort_as_single_process(tmp_path, protocol):
  options = prepare.PrepareOptions(protocol=protocol, cohort=synthetic.CohortConfig(
      num_subjects=6, minutes_per_subject=1))
  summary, dataset_dir = tfds_builders.prepare_dataset(options, str(tmp_path), progress=False)
  assert dataset_dir and summary['windows_kept'] > 20
  _assert_same_as_single_process(prepare.prepare(options, progress=False), str(tmp_path))
  assert not os.path.exists(os.path.join(tmp_path, '.windows_work'))  # cleaned up


@pytest.fixture(scope='module')
def wfdb_records(tmp_path_factory):
  """4 synthetic subjects as WFDB records (one in a subject folder), a truncated one and
  one that fails in the middle of windowing (`_fail_midway`)."""
  folder = tmp_path_factory.mktemp('wfdb')
  cohort = synthetic.CohortConfig(num_subjects=5, minutes_per_subject=1, seed=3)
  for i in range(4):
    where = folder / 'p000001' if i == 0 else folder
    where.mkdir(exist_ok=True)
    record = synthetic.subject(i, cohort)[0]
    mimic3.write_record(record, str(where))
  broken = synthetic.subject(4, cohort)[0]
  path = mimic3.write_record(broken, str(folder))
  with open(path + '.dat', 'r+b') as f:
    f.truncate(1000)
  return str(folder)


_MIDWAY = 'synthetic_0002'


def _fail_midway(record, rules=windows.QualityRules()):
  """windows_of, but the record _MIDWAY raises after its first windows."""
  for i, window in enumerate(windows.windows_of(record, rules)):
    if record.record == _MIDWAY and i == 2:
      raise FloatingPointError('simulated fault in the middle of a record')
    yield window


def test_wfdb_records_with_failures_as_single_process(tmp_path, wfdb_records, monkeypatch):
  monkeypatch.setattr(prepare, 'windows_of', _fail_midway)  # the in-process runner sees it
  options = prepare.PrepareOptions(source='mimic3', input_dir=wfdb_records, protocol='subject')
  summary, _ = tfds_builders.prepare_dataset(options, str(tmp_path), progress=False)
  failures = {f['record']: f['reason'] for f in summary['failures']}
  assert summary['records_read'] == 3 and set(failures) == {_MIDWAY, 'synthetic_0004'}
  assert 'simulated fault in the middle of a record' in failures[_MIDWAY]
  prepared = prepare.prepare(options, progress=False)
  assert all(_MIDWAY not in r for r in prepared.record) and len(prepared.record) > 10
  _assert_same_as_single_process(prepared, str(tmp_path))
  tasks = prepare.record_tasks(options)
  assert [t.subject for t in tasks][:2] == ['p000001', 'synthetic_0001']


def test_one_and_two_workers_write_identical_datasets(tmp_path, wfdb_records):
  options = prepare.PrepareOptions(source='mimic3', input_dir=wfdb_records, protocol='random')
  dirs = []
  for workers in (1, 2):
    out = str(tmp_path / f'workers_{workers}')
    _, dataset_dir = tfds_builders.prepare_dataset(
        options, out, progress=False, pipeline_options=beam_prepare.beam_options(workers))
    dirs.append((out, dataset_dir))
  (one, one_data), (two, two_data) = dirs
  shards = sorted(f for f in os.listdir(one_data) if '.tfrecord' in f)
  assert shards and shards == sorted(f for f in os.listdir(two_data) if '.tfrecord' in f)
  for name in shards:  # the same examples in the same order (a proto's map entries may be
    # serialized in another order in another process, so the bytes are not compared)
    read = lambda d: [tf.train.Example.FromString(r.numpy())
                      for r in tf.data.TFRecordDataset(os.path.join(d, name))]
    one_examples, two_examples = read(one_data), read(two_data)
    assert len(one_examples) > 0 and one_examples == two_examples, name
  for name in ('summary.json', 'windows.csv'):
    assert filecmp.cmp(os.path.join(one, name), os.path.join(two, name), shallow=False)
  with open(os.path.join(one, 'summary.json')) as f:
    assert json.load(f)['records_failed'] == 1


def test_example_bytes_round_trip():
  signals = np.random.default_rng(0).random((2, 1250), np.float32)
  example = {'signals': signals, 'sbp': np.float64(121.37), 'dbp': 70.1, 'start_s': np.nan,
             'record': 'r', 'lead': np.str_('II'), 'age': np.float32(61.5)}
  key, decoded = beam_prepare.decode_example(beam_prepare.encode_example('r:12', example))
  assert key == 'r:12' and decoded['record'] == 'r' and decoded['lead'] == 'II'
  assert decoded['sbp'] == np.float32(121.37) and decoded['dbp'] == np.float32(70.1)
  assert np.isnan(decoded['start_s']) and decoded['age'] == np.float32(61.5)
  assert all(isinstance(decoded[k], np.float32) for k in ('sbp', 'dbp', 'start_s', 'age'))
  np.testing.assert_array_equal(decoded['signals'], signals)
