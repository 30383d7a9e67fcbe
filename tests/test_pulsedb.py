"""PulseDB import: MATLAB v7.3 subsets and segment files, the paper's CSV export, splits."""

import csv
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import scipy.io
import tensorflow_datasets as tfds

from conftest import REPO_ROOT
from cerebro_jax import datasets, sharding
from cerebro_jax.evaluators import evaluation
from cerebro_jax.models import model as model_lib
from cerebro_jax.models.model_config import ModelConfig
from input_pipeline import (jobs, matlab_v73, pipeline, prepare, pulsedb, pulsedb_plan,
                            pulsedb_writer, splits, tfds_builders)

N = pulsedb.SAMPLES


def _rows(rng, count):
  """(count, 3, 1250) distinct random rows (ECG, PPG, ABP in mmHg) and valid labels."""
  signals = rng.normal(size=(count, 3, N))
  signals[:, 2] = 90 + 30 * rng.random((count, N))
  sbp = rng.uniform(100, 160, count)
  return signals, sbp, sbp - rng.uniform(30, 60, count)


# Bad rows by position in a file, and the reason each must be rejected with.
BAD = {1: 'nan', 2: 'flat_signal', 3: 'sbp_le_dbp', 4: 'label_range'}


def _spoil(signals, sbp, dbp):
  signals[1, 0, 500] = np.nan
  signals[2, 1] = 0.25  # a constant PPG
  dbp[3] = sbp[3] + 1
  sbp[4] = 260.0


def _subset(directory, name, subjects, rng, per_subject=3, spoil=False, **columns):
  keys = sorted(np.repeat(subjects, per_subject).tolist())
  signals, sbp, dbp = _rows(rng, len(keys))
  if spoil:
    _spoil(signals, sbp, dbp)
  age = np.arange(len(keys), dtype=float) + 20
  gender = ['F' if i % 2 else 'M' for i in range(len(keys))]
  pulsedb_writer.write_subset(str(directory / name), [signals[:5], signals[5:]], len(keys),
                              sbp, dbp, keys, age=age, gender=gender, **columns)
  return {'signals': signals, 'sbp': sbp, 'dbp': dbp, 'subject': np.array(keys), 'age': age,
          'gender': np.array(gender)}


def _examples(builder, split):
  return {ex['record'].decode(): ex for ex in tfds.as_numpy(builder.as_dataset(split=split))}


def _scaled(x):
  return (x - x.min()) / (x.max() - x.min())


def _options(folder, protocol, fractions=(0.8, 0.1, 0.1), **pulsedb_options):
  return prepare.PrepareOptions(source='pulsedb', input_dir=str(folder), protocol=protocol,
                                fractions=fractions,
                                pulsedb=pulsedb_plan.PulseDbOptions(**pulsedb_options))


def _in_process(folder, protocol, fractions=(0.8, 0.1, 0.1), **pulsedb_options):
  """(summary.json, {split: subject of each example}) of the PulseDB job run here."""
  job = prepare.window_job(_options(folder, protocol, fractions, **pulsedb_options))
  results = [job.process(unit) for unit in job.units]
  subjects = {}
  for result in results:
    for split, _, example in result.examples():
      subjects.setdefault(split, []).append(example['subject'])
  return job.summarise(jobs.total(results)), subjects


@pytest.fixture(scope='module')
def subsets(tmp_path_factory):
  """The five official subset files (MIMIC and VitalDB rows, a shared id), imported."""
  rng = np.random.default_rng(0)
  folder = tmp_path_factory.mktemp('PulseDB')
  train_subjects = [f'p{i:06d}_{i % 2}' for i in range(12)] + ['p000003_0']  # _1 exists too
  written = {
      'train': _subset(folder, 'Train_Subset.mat', train_subjects, rng, spoil=True,
                       height=np.full(39, 170.0), weight=np.full(39, 70.0),
                       bmi=np.full(39, 24.2)),
      'test_calbased': _subset(folder, 'CalBased_Test_Subset.mat', train_subjects, rng, 1),
      'test_calfree': _subset(folder, 'CalFree_Test_Subset.mat',
                              ['p000100_0', 'p000101_1', 'p000102_1'], rng, spoil=True),
      'test_aami': _subset(folder, 'AAMI_Test_Subset.mat', ['p000200_0', 'p000201_1'], rng, 2),
      'calibration_aami': _subset(folder, 'AAMI_Cal_Subset.mat', ['p000200_0', 'p000201_1'],
                                  rng, 1)}
  out = tmp_path_factory.mktemp('pulsedb_out')
  options = prepare.PrepareOptions(source='pulsedb', input_dir=str(folder), protocol='pulsedb',
                                   pulsedb=pulsedb_plan.PulseDbOptions(validation_fraction=0.25))
  summary, _ = tfds_builders.prepare_dataset(options, str(out), progress=False)
  return folder, out, written, summary, pipeline.load_builder(str(out))


def test_written_files_have_matlab_v73_layout(subsets):
  folder = subsets[0]
  path = str(folder / 'Train_Subset.mat')
  assert scipy.io.matlab.matfile_version(path)[0] == 2  # scipy reads the header as v7.3
  with open(path, 'rb') as f:
    assert f.read(19) == b'MATLAB 7.3 MAT-file'
  with h5py.File(path) as f:
    assert f.userblock_size == 512 and '#refs#' in f
    group = f['Subset']
    assert matlab_v73.matlab_class(group) == 'struct'
    assert [b''.join(n).decode() for n in group.attrs['MATLAB_fields']] == [
        'Subject', 'Signals', 'SBP', 'DBP', 'Age', 'Gender', 'Height', 'Weight', 'BMI']
    assert group['Signals'].shape == (N, 3, 39) and group['SBP'].shape == (1, 39)
    assert group['Subject'].dtype == h5py.ref_dtype and group['Subject'].shape == (1, 39)
    key = f[group['Subject'][0, 0]]
    assert key.dtype == np.uint16 and key.shape == (9, 1) and key.attrs['MATLAB_int_decode'] == 2
    assert matlab_v73.read_string(key) == 'p000000_0'


def test_official_splits_hold_exactly_the_good_rows(subsets):
  _, out, written, _, builder = subsets
  assert tfds_builders.protocol_of(builder) == 'pulsedb'
  assert set(builder.info.splits) == {'train', 'validation', 'test_calbased', 'test_calfree',
                                      'test_aami', 'calibration_aami'}
  files = {'train': 'Train_Subset.mat', 'validation': 'Train_Subset.mat',
           'test_calbased': 'CalBased_Test_Subset.mat', 'test_calfree': 'CalFree_Test_Subset.mat',
           'test_aami': 'AAMI_Test_Subset.mat', 'calibration_aami': 'AAMI_Cal_Subset.mat'}
  seen = {}
  for split, name in files.items():
    examples = _examples(builder, split)
    rows = written['train' if split == 'validation' else split]
    for record, ex in examples.items():
      file, row = record.rsplit(':', 1)
      row = int(row)
      assert file == name and (file, row) not in seen
      seen[(file, row)] = split
      assert ex['subject'].decode() == rows['subject'][row]
      np.testing.assert_allclose(ex['sbp'], rows['sbp'][row], rtol=1e-6)
      np.testing.assert_allclose(ex['dbp'], rows['dbp'][row], rtol=1e-6)
      for channel in (0, 1):  # ECG, PPG in the model's order, scaled to [0, 1]
        np.testing.assert_allclose(ex['signals'][channel], _scaled(rows['signals'][row, channel]),
                                   atol=1e-6)
      assert ex['age'] == rows['age'][row] and ex['gender'].decode() == rows['gender'][row]
      assert ex['source'].decode() == ('mimic', 'vitaldb')[int(rows['subject'][row][-1])]
  for name, kind in (('Train_Subset.mat', 'train'), ('CalFree_Test_Subset.mat', 'test_calfree')):
    expected = {r for r in range(len(written[kind]['sbp'])) if r not in BAD}
    assert {r for f, r in seen if f == name} == expected
  for kind in ('test_calbased', 'test_aami', 'calibration_aami'):
    assert sum(f == files[kind] for f, _ in seen) == len(written[kind]['sbp'])
  # Validation = whole Train subjects, about a quarter of them; the two p000003 differ.
  train = {ex['subject'].decode() for ex in _examples(builder, 'train').values()}
  validation = {ex['subject'].decode() for ex in _examples(builder, 'validation').values()}
  assert not train & validation and len(validation) == 3 and len(train | validation) == 13
  assert {'p000003_0', 'p000003_1'} <= train | validation


def test_reports_count_every_reject_and_split(subsets):
  _, out, written, _, builder = subsets
  summary = json.loads((out / 'summary.json').read_text())
  assert summary['source'] == 'pulsedb' and summary['protocol'] == 'pulsedb'
  assert summary['pulsedb']['kind'] == 'subset' and summary['records_failed'] == 0
  total = sum(len(w['sbp']) for w in written.values())
  assert summary['candidate_windows'] == total
  assert summary['rejects'] == {'empty': 0, **{r: 2 for r in BAD.values()}}
  assert summary['windows_kept'] == total - 8
  for name, split in summary['splits'].items():
    assert builder.info.splits[name].num_examples == split['windows']
  with open(out / 'windows.csv') as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == total
  spoiled = {r['record']: r['status'] for r in rows if r['status'] != 'accepted'}
  assert spoiled == {f'{n}:{row}': reason for n in ('Train_Subset.mat', 'CalFree_Test_Subset.mat')
                     for row, reason in BAD.items()}
  assert all((r['split'] != '') == (r['status'] == 'accepted') for r in rows)
  assert summary['pulsedb']['test_calbased_windows_of_validation_subjects'] == 3


def test_subject_and_random_protocols_on_subsets_and_source_filter(subsets):
  folder = subsets[0]
  for protocol in ('subject', 'random'):
    summary, subjects = _in_process(folder, protocol, (0.6, 0.2, 0.2))
    assert sum(map(len, subjects.values())) == summary['windows_kept'] == 39 + 13 + 9 + 4 + 2 - 8
    assert {n: len(s) for n, s in subjects.items()} == {
        n: split['windows'] for n, split in summary['splits'].items() if split['windows']}
    shared = set(subjects['train']) & set(subjects['test'])
    assert bool(shared) == (protocol == 'random')  # random: subjects in several splits
    if protocol == 'subject':
      splits.check_disjoint({n: set(s) for n, s in subjects.items()})
  vital, subjects = _in_process(folder, 'pulsedb', sources=('vitaldb',))
  assert all(k.endswith('_1') for part in subjects.values() for k in part)
  assert vital['pulsedb']['segments_of_other_sources'] > 0


def test_calibration_free_subset_sharing_a_training_subject_is_refused(tmp_path):
  rng = np.random.default_rng(1)
  _subset(tmp_path, 'Train_Subset.mat', ['p000001_0', 'p000002_1'], rng)
  _subset(tmp_path, 'CalFree_Test_Subset.mat', ['p000002_1'], rng)
  with pytest.raises(splits.SubjectLeakError, match='test_calfree shares 1 subject'):
    prepare.window_job(_options(tmp_path, 'pulsedb'))  # from the names, before any signal


def _segment_folder(root, rng):
  """PulseDB_MIMIC/p000001.mat, PulseDB_Vital/p000001.mat (same id, other person, with an
  empty PPG in row 1), a corrupt segment file, and the written rows."""
  written = {}
  for folder, source, demographics in (('PulseDB_MIMIC', 'mimic', None),
                                       ('PulseDB_Vital', 'vitaldb', {'Height': 165.0,
                                                                     'Weight': 60.0,
                                                                     'BMI': 22.0})):
    os.makedirs(root / folder)
    signals, sbp, dbp = _rows(rng, 4)
    empty = [(1, 'PPG_F')] if source == 'vitaldb' else []
    pulsedb_writer.write_segments(str(root / folder / 'p000001.mat'), signals, sbp, dbp,
                                  age=50.0 + len(written), gender='F',
                                  demographics=demographics, empty=empty)
    written[source] = (signals, sbp, dbp)
  (root / 'PulseDB_MIMIC' / 'p000002.mat').write_bytes(b'\x89HDF\r\n' + bytes(300))
  return written


def test_segment_files_of_both_sources_keep_colliding_ids_apart(tmp_path):
  written = _segment_folder(tmp_path / 'in', np.random.default_rng(2))
  options = prepare.PrepareOptions(source='pulsedb', input_dir=str(tmp_path / 'in'),
                                   protocol='random', fractions=(1.0, 0.0, 0.0))
  summary, _ = tfds_builders.prepare_dataset(options, str(tmp_path / 'out'), progress=False)
  assert summary['records_failed'] == 1 and 'p000002.mat' in summary['failures'][0]['record']
  assert summary['rejects']['empty'] == 1 and summary['windows_kept'] == 7
  examples = _examples(pipeline.load_builder(str(tmp_path / 'out')), 'train')
  assert {ex['subject'].decode() for ex in examples.values()} == {'p000001_0', 'p000001_1'}
  for source, folder, key in (('mimic', 'PulseDB_MIMIC', 'p000001_0'),
                              ('vitaldb', 'PulseDB_Vital', 'p000001_1')):
    signals, sbp, _ = written[source]
    for row in range(4):
      record = f'{folder}/p000001.mat:{row}'
      if source == 'vitaldb' and row == 1:
        assert record not in examples
        continue
      ex = examples[record]
      assert ex['subject'].decode() == key and np.isclose(ex['sbp'], sbp[row])
      np.testing.assert_allclose(ex['signals'][1], _scaled(signals[row, 1]), atol=1e-6)
    assert (np.isnan(ex['height'])) == (source == 'mimic')


def test_segment_file_outside_its_folder_gets_its_source_from_its_fields(tmp_path):
  _segment_folder(tmp_path, np.random.default_rng(3))
  for folder, source in (('PulseDB_MIMIC', 'mimic'), ('PulseDB_Vital', 'vitaldb')):
    moved = tmp_path / f'{source}_alone'
    moved.mkdir()
    os.rename(tmp_path / folder / 'p000001.mat', moved / 'p000001.mat')
    (pf,) = pulsedb.find_files(str(moved))
    assert pf.source == '' and pulsedb.segments_source(pf) == source


def test_csv_export_with_bad_rows(tmp_path):
  rng = np.random.default_rng(4)
  signals, sbp, dbp = _rows(rng, 6)
  _spoil(signals, sbp, dbp)
  pulsedb_writer.write_csv(str(tmp_path / 'MIMIC_p000010.csv'), signals, sbp, dbp)
  other = _rows(rng, 3)
  pulsedb_writer.write_csv(str(tmp_path / 'Vital_p000010.csv'), *other)
  (tmp_path / 'notes.txt').write_text('not PulseDB')
  summary, _ = _in_process(tmp_path, 'random')
  assert summary['pulsedb']['kind'] == 'csv' and summary['windows_kept'] == 2 + 3
  assert {r: summary['rejects'][r] for r in BAD.values()} == {r: 1 for r in BAD.values()}
  (mimic,) = pulsedb.find_files(str(tmp_path / 'MIMIC_p000010.csv'))
  assert set(pulsedb.subjects_of(mimic)) == {'p000010_0'}
  (block,) = pulsedb.blocks(mimic, np.array([0, 5]), np.array(['p000010_0'] * 2))
  np.testing.assert_allclose(block.signals, signals[[0, 5], :2])
  np.testing.assert_allclose(block.sbp, sbp[[0, 5]])
  (vital,) = pulsedb.find_files(str(tmp_path / 'Vital_p000010.csv'))
  assert set(pulsedb.subjects_of(vital)) == {'p000010_1'}
  with pytest.raises(pulsedb.PulseDbError, match='no official split'):
    prepare.window_job(_options(tmp_path, 'pulsedb'))


@pytest.mark.parametrize('files,message', [
    ({'readme.txt': b'x'}, 'no PulseDB files found; expected PulseDB subset files'),
    ({'Holdout_Subset.mat': b'x'}, "unknown PulseDB subset 'Holdout'"),
    ({'Train_Subset.mat': b'x', 'MIMIC_1.csv': b'x'}, 'holds csv and subset files'),
    ({'Train_Subset.mat': b'x', 'VitalDB_Train_Subset.mat': b'x'}, 'several subset files'),
])
def test_inputs_that_are_not_pulsedb_are_named(tmp_path, files, message):
  for name, content in files.items():
    (tmp_path / name).write_bytes(content)
  with pytest.raises(pulsedb.PulseDbError, match=message):
    pulsedb.find_files(str(tmp_path))


def test_unreadable_or_wrong_layout_files_are_reported(tmp_path):
  rng = np.random.default_rng(5)
  signals, sbp, dbp = _rows(rng, 4)
  with matlab_v73.Writer(str(tmp_path / 'Train_Subset.mat')) as w:  # mat73's order, not h5py's
    group = w.struct(w.root, 'Subset', {'Subject': w.cell(['p000001_0'] * 4),
                                        'SBP': sbp[:, None], 'DBP': dbp[:, None]})
    group.create_dataset('Signals', data=signals)
  scipy.io.savemat(str(tmp_path / 'CalFree_Test_Subset.mat'), {'Subset': {'SBP': sbp}})
  summary, _ = _in_process(tmp_path, 'subject')
  reasons = {f['record']: f['reason'] for f in summary['failures']}
  assert 'expected (1250, 3, 4)' in reasons['Train_Subset.mat']
  assert 'older than v7.3' in reasons['CalFree_Test_Subset.mat']
  assert summary['windows_kept'] == 0 and summary['records_failed'] == 2
  with pytest.raises(pulsedb.PulseDbError, match=r'needs Train_Subset.mat .* found none; .*'
                                                 r'Train_Subset.mat: .*expected \(1250, 3, 4\)'):
    prepare.window_job(_options(tmp_path, 'pulsedb'))


def test_a_block_that_fails_is_named_and_the_others_are_written(subsets, tmp_path, monkeypatch):
  folder = subsets[0]
  monkeypatch.setattr(pulsedb_plan, 'BLOCK', 16)  # Train's 39 rows: blocks 0-15, 16-31, 32-38
  verdicts = pulsedb.verdicts

  def failing(block):
    if block.file.role == 'train' and block.rows[0] == 16:
      raise OSError('Can\'t read data (inflate() failed)')
    return verdicts(block)

  monkeypatch.setattr(pulsedb, 'verdicts', failing)
  summary, dataset_dir = tfds_builders.prepare_dataset(_options(folder, 'random'),
                                                       str(tmp_path), progress=False)
  assert summary['records_failed'] == 1 and summary['records_read'] == 4
  assert summary['failures'] == [{'record': 'Train_Subset.mat rows 16-31',
                                  'reason': "OSError: Can't read data (inflate() failed)"}]
  builder = pipeline.load_builder(str(tmp_path))
  records = {ex['record'].decode() for split in builder.info.splits
             for ex in tfds.as_numpy(builder.as_dataset(split=split))}
  train_rows = {int(r.rsplit(':', 1)[1]) for r in records if r.startswith('Train_Subset.mat')}
  assert train_rows == set(range(39)) - set(range(16, 32)) - set(BAD)
  assert summary['windows_kept'] == len(records) == 39 + 13 + 9 + 4 + 2 - 16 - 8
  assert dataset_dir is not None


def run_prepare(*flags):
  return subprocess.run([sys.executable, 'scripts/prepare_data.py', *flags], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=300, check=False)


def test_prepare_data_command_on_pulsedb_with_two_workers(subsets, tmp_path):
  """The command on 2 Beam workers writes what the fixture wrote in this process."""
  folder, out, _, _, builder = subsets
  result = run_prepare('--source=pulsedb', f'--input={folder}', f'--output={tmp_path / "a"}',
                       '--protocol=pulsedb', '--validation_fraction=0.25', '--workers=2')
  assert result.returncode == 0, result.stderr
  assert 'files read: 5, failed: 0' in result.stdout and 'test_calfree:' in result.stdout
  for name in ('summary.json', 'windows.csv'):
    assert (tmp_path / 'a' / name).read_bytes() == (out / name).read_bytes(), name
  two = pipeline.load_builder(str(tmp_path / 'a'))
  assert set(two.info.splits) == set(builder.info.splits)
  for split in builder.info.splits:
    one_examples, two_examples = _examples(builder, split), _examples(two, split)
    assert one_examples.keys() == two_examples.keys()
    for record, ex in one_examples.items():
      for feature, value in ex.items():
        np.testing.assert_array_equal(two_examples[record][feature], value)
  empty = tmp_path / 'empty'
  empty.mkdir()
  result = run_prepare('--source=pulsedb', f'--input={empty}', f'--output={tmp_path / "b"}')
  assert result.returncode == 1 and 'Traceback' not in result.stderr
  assert 'no PulseDB files found' in result.stderr
  with pytest.raises(ValueError, match='use it with --source pulsedb'):  # records: no such split
    splits.make_split('pulsedb', ['s1', 's2'], ['k1', 'k2'], (0.8, 0.1, 0.1), 42)


def test_subset_reading_memory_is_bounded_by_the_block(subsets):
  """A block holds at most BLOCK rows: reading all of Train returns blocks, never the file."""
  folder = subsets[0]
  (pf,) = [f for f in pulsedb.find_files(str(folder)) if f.role == 'train']
  subjects = pulsedb.subjects_of(pf)
  blocks = list(pulsedb.blocks(pf, np.arange(len(subjects)), subjects, 8))
  assert [len(b.rows) for b in blocks] == [8, 8, 8, 8, 7]
  assert {'M', 'F'} == set(np.concatenate([b.extras['gender'] for b in blocks]))
  assert np.isfinite(np.concatenate([b.extras['age'] for b in blocks])).all()


def test_evaluation_covers_every_test_split_and_names_the_protocol(subsets, tmp_path):
  builder = subsets[4]
  config = ModelConfig.from_size('small', depth=1)
  params = model_lib.init_params(config, __import__('jax').random.PRNGKey(0))
  eval_splits = datasets.eval_splits((), builder)
  assert eval_splits == ('validation', 'test_aami', 'test_calbased', 'test_calfree')
  assert datasets.test_split(builder) == 'test_aami'
  reports = evaluation.evaluate_params(params, config, builder, eval_splits, 8,
                                       sharding.data_mesh(), {'sbp': 120.0, 'dbp': 70.0},
                                       str(tmp_path))
  assert reports['test_calbased']['split_kind'].startswith('calibration-based')
  assert reports['test_calfree']['split_kind'].startswith('calibration-free')
  assert {r['protocol'] for r in reports.values()} == {'pulsedb'}
  table = (tmp_path / 'metrics.md').read_text()
  assert 'Dataset split protocol: pulsedb.' in table
  assert '- test_calbased: calibration-based: subjects also in training' in table
  assert json.loads((tmp_path / 'metrics.json').read_text())['test_calfree']['sbp']['n'] == 9 - 4


def test_paper_config_refuses_a_calibration_free_dataset(subsets, tmp_path):
  from configs import paper  # pylint: disable=g-import-not-at-top
  builder = subsets[4]
  datasets.check_protocol(builder, paper.get_config('pulsedb,small,frozen').data.required_protocols)
  summary, dataset_dir = tfds_builders.prepare_dataset(
      _options(subsets[0], 'subject', (0.6, 0.2, 0.2)), str(tmp_path), progress=False)
  subject_builder = pipeline.load_builder(str(tmp_path))
  assert summary['protocol'] == 'subject' and str(subject_builder.data_dir) == dataset_dir
  with pytest.raises(datasets.ProtocolMismatchError, match="built with protocol 'subject'"):
    datasets.check_protocol(subject_builder, ('random', 'pulsedb'))
  datasets.check_protocol(subject_builder, ())  # the default config takes any protocol
