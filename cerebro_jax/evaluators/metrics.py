"""Blood-pressure error statistics and clinical grades (all in mmHg).

Error e = estimate - reference, per window, for SBP and DBP separately.
- MAE, ME (mean of e), SD (population standard deviation of e), R^2, Pearson r.
- AAMI / ISO 81060-2 criterion 1: |ME| <= 5 and SD <= 8 mmHg, on >= 85 subjects.
- BHS grade from the cumulative % of |e| within 5 / 10 / 15 mmHg:
  A >= 60/85/95, B >= 50/75/90, C >= 40/65/85, else D.
- IEEE 1708-2014 grade by MAE: A <= 5, B <= 6, C <= 7, else D.
- Per subject: the mean error of each subject, summarised.
- The mean predictor (always the training mean): the baseline a model must beat.
"""

from __future__ import annotations

import numpy as np

TARGETS = ('sbp', 'dbp')
BHS_GRADES = (('A', (60.0, 85.0, 95.0)), ('B', (50.0, 75.0, 90.0)), ('C', (40.0, 65.0, 85.0)))
IEEE_GRADES = (('A', 5.0), ('B', 6.0), ('C', 7.0))
AAMI_MAX_ABS_ME, AAMI_MAX_SD, AAMI_MIN_SUBJECTS = 5.0, 8.0, 85


def bhs(errors: np.ndarray) -> dict:
  """BHS grade and the % of |errors| within 5, 10 and 15 mmHg."""
  abs_e = np.abs(errors)
  within = [float(100.0 * np.mean(abs_e <= t)) for t in (5.0, 10.0, 15.0)]
  grade = next((g for g, mins in BHS_GRADES if all(w >= m for w, m in zip(within, mins))), 'D')
  return {'grade': grade, 'within_5': within[0], 'within_10': within[1], 'within_15': within[2]}


def ieee_1708_grade(mae: float) -> str:
  return next((g for g, limit in IEEE_GRADES if mae <= limit), 'D')


def aami(me: float, sd: float, num_subjects: int) -> dict:
  """AAMI criterion 1; `passed` needs the error limits and enough subjects."""
  errors_ok = abs(me) <= AAMI_MAX_ABS_ME and sd <= AAMI_MAX_SD
  enough = num_subjects >= AAMI_MIN_SUBJECTS
  return {'passed': bool(errors_ok and enough), 'error_limits_met': bool(errors_ok),
          'enough_subjects': bool(enough), 'num_subjects': int(num_subjects)}


def error_stats(estimate: np.ndarray, reference: np.ndarray) -> dict:
  """MAE, ME, SD, R^2 and Pearson r of estimates against references (1-D, mmHg)."""
  estimate = np.asarray(estimate, np.float64)
  reference = np.asarray(reference, np.float64)
  e = estimate - reference
  total = np.sum((reference - reference.mean()) ** 2)
  r2 = float(1.0 - np.sum(e**2) / total) if total > 0 else float('nan')
  r = (float(np.corrcoef(estimate, reference)[0, 1])
       if estimate.std() > 0 and reference.std() > 0 else float('nan'))
  return {'n': int(len(e)), 'mae': float(np.abs(e).mean()), 'me': float(e.mean()),
          'sd': float(e.std()), 'r2': r2, 'pearson_r': r}


def per_subject(estimate: np.ndarray, reference: np.ndarray, subjects: np.ndarray) -> dict:
  """Summary of each subject's mean error: mean, SD, largest |ME|, % with |ME| <= 5."""
  e = np.asarray(estimate, np.float64) - np.asarray(reference, np.float64)
  names, inverse = np.unique(np.asarray(subjects), return_inverse=True)
  means = np.bincount(inverse, weights=e) / np.bincount(inverse)
  return {'num_subjects': int(len(names)), 'mean_of_subject_me': float(means.mean()),
          'sd_of_subject_me': float(means.std()), 'max_abs_subject_me': float(np.abs(means).max()),
          'pct_subjects_abs_me_within_5': float(100.0 * np.mean(np.abs(means) <= 5.0))}


def target_report(estimate, reference, subjects, train_mean: float) -> dict:
  """Everything users expect for one target (SBP or DBP)."""
  stats = error_stats(estimate, reference)
  subject_stats = per_subject(estimate, reference, subjects)
  baseline = error_stats(np.full(len(reference), train_mean), reference)
  return {**stats, 'aami': aami(stats['me'], stats['sd'], subject_stats['num_subjects']),
          'bhs': bhs(np.asarray(estimate) - np.asarray(reference)),
          'ieee_1708': ieee_1708_grade(stats['mae']), 'per_subject': subject_stats,
          'mean_predictor': {'value': float(train_mean), 'mae': baseline['mae'],
                             'me': baseline['me'], 'sd': baseline['sd']}}


def bp_report(predictions: dict, references: dict, subjects, train_means: dict) -> dict:
  """{'sbp': target_report, 'dbp': target_report}; inputs keyed by 'sbp' / 'dbp'."""
  return {t: target_report(predictions[t], references[t], subjects, train_means[t])
          for t in TARGETS}
