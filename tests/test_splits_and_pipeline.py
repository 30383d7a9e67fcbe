"""Splits, TFDS datasets, the tf.data pipeline and scripts/prepare_data.py."""

import collections
import csv
import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT
from input_pipeline import (mimic3, pipeline, prepare, splits, synthetic, tfds_builders,
                            windows)


def test_subject_split_keeps_subjects_apart():
  subjects = np.repeat([f's{i}' for i in range(20)], np.arange(1, 21))
  split = splits.subject_split(subjects, (0.6, 0.2, 0.2), seed=3)
  groups = [set(subjects[idx]) for idx in split.values()]
  assert [len(g) for g in groups] == [12, 4, 4]
  assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
  assert sorted(np.concatenate(list(split.values()))) == list(range(len(subjects)))
  again = splits.subject_split(subjects, (0.6, 0.2, 0.2), seed=3)
  assert all(np.array_equal(split[k], again[k]) for k in split)


def test_a_leak_is_caught():
  subjects = np.array(['a', 'a', 'b', 'c'])
  with pytest.raises(splits.SubjectLeakError, match='subject a is in both train and test'):
    splits.check_subject_disjoint(subjects, {'train': np.array([0, 2]), 'validation': [],
                                             'test': np.array([1, 3])})


def test_random_split_is_80_10_10_by_key_hash_and_mixes_subjects():
  subjects = np.repeat(['a', 'b', 'c', 'd'], 250)
  keys = [f'{s}:{i}' for i, s in enumerate(subjects)]
  split = splits.random_split(keys)
  counts = [len(split[k]) for k in splits.SPLITS]
  assert sum(counts) == 1000 and abs(counts[0] - 800) < 40 and abs(counts[2] - 100) < 30
  assert set(subjects[split['train']]) == set(subjects[split['test']]) == set('abcd')
  np.testing.assert_array_equal(splits.random_split(keys)['test'], split['test'])
  assert not np.array_equal(splits.random_split(keys, seed=1)['test'], split['test'])
  # A window's split is its own: the same in any order, in any company, as hash_split says.
  reordered = splits.random_split(keys[::-1])
  assert sorted(999 - reordered['test']) == split['test'].tolist()
  assert [splits.hash_split(keys[i]) for i in split['validation']] == ['validation'] * counts[1]


def test_split_fractions_are_checked_and_small_cohorts_get_every_split():
  with pytest.raises(ValueError, match='summing to 1'):
    splits.random_split(['a'] * 10, (0.5, 0.2, 0.2))
  split = splits.subject_split([f's{i}' for i in range(5)])
  assert [len(split[k]) for k in splits.SPLITS] == [3, 1, 1]
  assert splits.assign_subjects(['s3', 's1', 's2', 's0', 's4']) == splits.assign_subjects(
      [f's{i}' for i in range(5)])
  with pytest.raises(ValueError, match='unknown split protocol'):
    splits.make_split('by_hospital', ['a'], ['a'], (1, 0, 0), 0)


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
  """A tiny synthetic dataset (6 subjects x 1 min) written with TFDS."""
  options = prepare.PrepareOptions(cohort=synthetic.CohortConfig(num_subjects=6,
                                                                 minutes_per_subject=1))
  prepared = prepare.prepare(options, progress=False)
  data_dir = tmp_path_factory.mktemp('data')
  tfds_builders.prepare_dataset(options, str(data_dir), progress=False)
  return pipeline.load_builder(str(data_dir)), prepared


def test_dataset_holds_every_accepted_window_in_its_split(dataset):
  builder, prepared = dataset
  for name, indices in prepared.split.items():
    assert builder.info.splits[name].num_examples == len(indices)
  subjects = {name: {ex['subject'].decode() for ex in builder.as_dataset(split=name)
                     .as_numpy_iterator()} for name in splits.SPLITS}
  assert not (subjects['train'] & subjects['test'] or subjects['train'] & subjects['validation'])


@pytest.mark.parametrize('cache', [False, True])
def test_train_batches_are_deterministic_per_seed(dataset, cache):
  builder, prepared = dataset
  batches = len(prepared.split['train']) // 8  # one pass over the split
  take = lambda seed: [next(it) for it in [pipeline.train_batches(builder, 8, seed, cache=cache)]
                       for _ in range(batches)]
  first, again, other = take(0), take(0), take(1)
  assert first[0]['signals'].shape == (8, 2, 1250) and first[0]['signals'].dtype == np.float32
  assert all(np.array_equal(a['sbp'], b['sbp']) and np.array_equal(a['signals'], b['signals'])
             for a, b in zip(first, again))
  assert not all(np.array_equal(a['sbp'], b['sbp']) for a, b in zip(first, other))
  # One pass is a permutation of the split (the buffer holds it all), cached or not.
  seen = np.sort(np.concatenate([b['sbp'] for b in first]))
  assert len(np.unique(seen)) == len(seen)
  assert set(seen) <= set(prepared.sbp[prepared.split['train']])
  # Each row is a whole window: its signals and both labels, parsed from the files.
  train = prepared.split['train']
  for row in range(8):
    (i,) = train[prepared.sbp[train] == first[0]['sbp'][row]]
    np.testing.assert_array_equal(first[0]['signals'][row], prepared.signals[i])
    assert first[0]['dbp'][row] == prepared.dbp[i]


def test_train_batches_of_several_devices_do_not_depend_on_the_processes(dataset):
  """A process holding devices 0-1 of 4 and one holding 2-3 get the two halves of the
  batches of a process holding all four: each device reads its own range of the split."""
  builder, _ = dataset
  take = lambda shards: [b for b, _ in zip(pipeline.train_batches(builder, 8, 3, shards, 4),
                                           range(5))]
  whole, first, second = take((0, 1, 2, 3)), take((0, 1)), take((2, 3))
  for a, b, c in zip(whole, first, second):
    assert len(b['sbp']) == len(c['sbp']) == 4
    np.testing.assert_array_equal(a['signals'], np.concatenate([b['signals'], c['signals']]))
  size = builder.info.splits['train'].num_examples // 4
  seen = {float(v) for b in take((0,)) for v in b['sbp']}  # device 0's range only
  first_range = {float(ex['sbp']) for ex in builder.as_dataset(
      split=f'train[:{size}]').as_numpy_iterator()}
  assert seen <= first_range


def test_eval_batches_cover_every_example_once(dataset):
  builder, prepared = dataset
  for name in splits.SPLITS:
    batches = list(pipeline.eval_batches(builder, name, batch_size=4))
    assert all(len(b['mask']) == 4 for b in batches)
    got = collections.Counter(
        (s.decode(), round(float(v), 3)) for b in batches
        for s, v, m in zip(b['subject'], b['sbp'], b['mask']) if m)
    idx = prepared.split[name]
    expected = collections.Counter(
        (s, round(float(v), 3)) for s, v in zip(prepared.subject[idx], prepared.sbp[idx]))
    assert got == expected
    padding = batches[-1]
    assert not padding['signals'][~padding['mask']].any()


def test_missing_dataset_is_named(tmp_path):
  with pytest.raises(pipeline.DatasetNotFoundError, match='no prepared dataset'):
    pipeline.load_builder(str(tmp_path))


def run_prepare(*flags):
  return subprocess.run([sys.executable, 'scripts/prepare_data.py', *flags], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=300, check=False)


def test_prepare_data_command_writes_dataset_and_reports(tmp_path):
  out = tmp_path / 'synthetic'
  result = run_prepare('--source=synthetic', '--subjects=5', '--minutes=1', f'--output={out}')
  assert result.returncode == 0, result.stderr
  summary = json.loads((out / 'summary.json').read_text())
  assert summary['records_read'] == 5 and summary['records_failed'] == 0
  assert summary['candidate_windows'] == 30
  assert summary['windows_kept'] + sum(summary['rejects'].values()) == 30
  assert sum(s['windows'] for s in summary['splits'].values()) == summary['windows_kept']
  assert f"windows: 30 candidates, {summary['windows_kept']} kept" in result.stdout
  with open(out / 'windows.csv') as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 30 and set(rows[0]) == set(windows.REPORT_COLUMNS)
  assert sum(r['status'] == 'accepted' for r in rows) == summary['windows_kept']
  assert all((r['split'] != '') == (r['status'] == 'accepted') for r in rows)
  builder = pipeline.load_builder(str(out))
  assert builder.info.splits.total_num_examples == summary['windows_kept']

  again = run_prepare('--source=synthetic', '--subjects=5', '--minutes=1', f'--output={out}')
  assert again.returncode == 1 and '--overwrite' in again.stderr


def test_prepare_data_command_names_bad_records_and_suggests_fallback_leads(tmp_path):
  """A record that cannot be read and one without lead II: both named with the reason,
  no window, a hint about --ecg_leads, no traceback (one command for both)."""
  (tmp_path / 'in').mkdir()
  (tmp_path / 'in' / 'broken.hea').write_text('broken 3 125 1000\nbroken.dat 16 1 16 0 0 0 0 II\n')
  record, _ = synthetic.subject(0, synthetic.CohortConfig(minutes_per_subject=0.5))
  lead_v = dataclasses.replace(record, record='p000077-v_only', leads=('V',))
  mimic3.write_record(lead_v, str(tmp_path / 'in'))
  result = run_prepare('--source=mimic3', f'--input={tmp_path / "in"}',
                       f'--output={tmp_path / "out"}')
  assert result.returncode == 1 and 'Traceback' not in result.stderr
  assert 'skipped' in result.stdout and 'broken' in result.stdout
  assert 'no window passed the quality checks' in result.stderr
  assert '2 of 2 input(s) could not be used' in result.stderr
  assert 'p000077-v_only: missing a required signal: ECG (looked for II)' in result.stderr
  assert '--ecg_leads=II,I,III,V' in result.stderr
  # A missing folder: FileNotFoundError, which the command prints as an error (exit 1).
  with pytest.raises(FileNotFoundError, match='input folder not found'):
    prepare.record_tasks(prepare.PrepareOptions(source='vitaldb',
                                                input_dir=str(tmp_path / 'nowhere')))
  again = prepare.prepare(prepare.PrepareOptions(
      source='mimic3', input_dir=str(tmp_path / 'in'),
      channels=mimic3.ChannelNames(ecg_leads=('II', 'V'))), progress=False)
  assert len(again.sbp) > 0 and set(again.lead) == {'V'}
