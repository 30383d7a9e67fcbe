"""BP metrics against values computed by hand, including the grade thresholds' edges."""

import json

import numpy as np
import pytest

from cerebro_jax.evaluators import metrics, report


def test_error_stats_by_hand():
  # e = [0, 1, 0, -1]; reference mean 2.75, SS_tot 8.75, SS_res 2.
  stats = metrics.error_stats([1, 3, 3, 4], [1, 2, 3, 5])
  assert stats['n'] == 4 and stats['mae'] == 0.5 and stats['me'] == 0.0
  assert stats['sd'] == pytest.approx(np.sqrt(0.5))
  assert stats['r2'] == pytest.approx(1 - 2 / 8.75)
  assert stats['pearson_r'] == pytest.approx(5.75 / np.sqrt(4.75 * 8.75))


def test_sd_is_the_population_sd():
  assert metrics.error_stats([3, 5], [0, 0])['sd'] == pytest.approx(1.0)  # not sqrt(2)


def _errors(at5, at10, at15, beyond):
  return np.array([5.0] * at5 + [-10.0] * at10 + [15.0] * at15 + [20.0] * beyond)


def test_bhs_grades_at_their_edges():
  assert metrics.bhs(_errors(12, 5, 2, 1)) == {
      'grade': 'A', 'within_5': 60.0, 'within_10': 85.0, 'within_15': 95.0}
  just_under = _errors(12, 5, 2, 1)
  just_under[0] = 5.01  # 55% within 5 mmHg
  assert metrics.bhs(just_under)['grade'] == 'B'
  assert metrics.bhs(_errors(10, 5, 3, 2))['grade'] == 'B'  # 50 / 75 / 90
  assert metrics.bhs(_errors(8, 5, 4, 3))['grade'] == 'C'  # 40 / 65 / 85
  assert metrics.bhs(_errors(8, 5, 3, 4))['grade'] == 'D'  # 40 / 65 / 80
  assert metrics.bhs(_errors(20, 0, 0, 0))['grade'] == 'A'


def test_ieee_1708_grades_at_their_edges():
  assert [metrics.ieee_1708_grade(m) for m in (5.0, 5.01, 6.0, 6.01, 7.0, 7.01)] == [
      'A', 'B', 'B', 'C', 'C', 'D']


def test_aami_at_its_edges():
  assert metrics.aami(5.0, 8.0, 85)['passed']
  assert metrics.aami(-5.0, 8.0, 85)['passed']
  assert not metrics.aami(5.01, 8.0, 85)['passed']
  assert not metrics.aami(0.0, 8.01, 85)['passed']
  few = metrics.aami(0.0, 1.0, 84)
  assert not few['passed'] and few['error_limits_met'] and not few['enough_subjects']


def test_per_subject_and_mean_predictor():
  subject = metrics.per_subject([1, 3, -2], [0, 0, 0], ['a', 'a', 'b'])
  assert subject == {'num_subjects': 2, 'mean_of_subject_me': 0.0, 'sd_of_subject_me': 2.0,
                     'max_abs_subject_me': 2.0, 'pct_subjects_abs_me_within_5': 100.0}
  target = metrics.target_report(np.array([100.0, 120.0]), np.array([110.0, 130.0]),
                                 np.array(['a', 'b']), train_mean=115.0)
  # The mean predictor's errors are 115 - 110 = +5 and 115 - 130 = -15.
  assert target['mean_predictor'] == {'value': 115.0, 'mae': 10.0, 'me': -5.0, 'sd': 10.0}
  assert target['mae'] == 10.0 and target['me'] == -10.0 and target['ieee_1708'] == 'D'


def test_evaluation_files(tmp_path):
  rng = np.random.default_rng(0)
  ref = {'sbp': rng.uniform(100, 160, 50), 'dbp': rng.uniform(60, 90, 50)}
  est = {k: v + rng.normal(0, 4, 50) for k, v in ref.items()}
  subjects = np.repeat(['a', 'b', 'c', 'd', 'e'], 10)
  reports = {'test': metrics.bp_report(est, ref, subjects, {'sbp': 130.0, 'dbp': 75.0})}
  outputs = {'test': {**est, 'sbp_ref': ref['sbp'], 'dbp_ref': ref['dbp']}}
  written = report.write_evaluation(str(tmp_path), reports, outputs)
  assert len(written) == 6
  assert json.loads((tmp_path / 'metrics.json').read_text())['test']['sbp']['n'] == 50
  table = (tmp_path / 'metrics.md').read_text()
  assert '| test | SBP | 50 |' in table and '| test | DBP | 50 |' in table
  for name in ('bland_altman_test_sbp.png', 'scatter_test_dbp.png'):
    assert (tmp_path / name).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
