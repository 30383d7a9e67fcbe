"""Evaluation outputs: metrics.json, a Markdown table, Bland-Altman and scatter PNGs."""

from __future__ import annotations

import json
import os

import matplotlib

matplotlib.use('Agg')  # files only, no display
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from cerebro_jax.metrics import TARGETS  # pylint: disable=wrong-import-position


def markdown_table(reports: dict) -> str:
  """One row per (split, target): reports = {split name: bp_report}."""
  header = ('| split | target | n | MAE | ME | SD | R^2 | r | mean-predictor MAE | AAMI | '
            'BHS (<=5/10/15 %) | IEEE 1708 |')
  lines = [header, '|' + '---|' * (header.count('|') - 1)]
  for split, report in reports.items():
    for target in TARGETS:
      m = report[target]
      aami = 'pass' if m['aami']['passed'] else (
          'limits met, < 85 subjects' if m['aami']['error_limits_met'] else 'fail')
      b = m['bhs']
      lines.append(
          f"| {split} | {target.upper()} | {m['n']} | {m['mae']:.2f} | {m['me']:+.2f} | "
          f"{m['sd']:.2f} | {m['r2']:.3f} | {m['pearson_r']:.3f} | "
          f"{m['mean_predictor']['mae']:.2f} | {aami} | {b['grade']} ({b['within_5']:.0f}/"
          f"{b['within_10']:.0f}/{b['within_15']:.0f}) | {m['ieee_1708']} |")
  return '\n'.join(lines) + '\n\nAll values in mmHg; error = estimate - reference.\n'


def _finish(fig, ax, path: str, xlabel: str, ylabel: str, title: str, legend: str) -> None:
  """Labels, legend, and the PNG written to `path`."""
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.legend(loc=legend, fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def bland_altman(path: str, estimate, reference, target: str, title: str) -> None:
  estimate, reference = np.asarray(estimate), np.asarray(reference)
  mean, diff = (estimate + reference) / 2, estimate - reference
  me, sd = diff.mean(), diff.std()
  fig, ax = plt.subplots(figsize=(6, 4.5))
  ax.scatter(mean, diff, s=6, alpha=0.4)
  for y, style, name in ((me, '-', 'ME'), (me + 1.96 * sd, '--', '+1.96 SD'),
                         (me - 1.96 * sd, '--', '-1.96 SD')):
    ax.axhline(y, color='k', linestyle=style, linewidth=1, label=f'{name} {y:+.2f}')
  _finish(fig, ax, path, f'mean of estimate and reference {target.upper()} (mmHg)',
          f'estimate - reference {target.upper()} (mmHg)', title, 'upper right')


def scatter(path: str, estimate, reference, target: str, title: str) -> None:
  estimate, reference = np.asarray(estimate), np.asarray(reference)
  lo, hi = min(estimate.min(), reference.min()), max(estimate.max(), reference.max())
  fig, ax = plt.subplots(figsize=(5, 5))
  ax.scatter(reference, estimate, s=6, alpha=0.4)
  ax.plot([lo, hi], [lo, hi], 'k--', linewidth=1, label='identity')
  _finish(fig, ax, path, f'reference {target.upper()} (mmHg)',
          f'estimate {target.upper()} (mmHg)', title, 'upper left')


def write_evaluation(directory: str, reports: dict, outputs: dict) -> list[str]:
  """Writes metrics.json, metrics.md and, per split and target, two PNGs.

  reports: {split: bp_report}; outputs: {split: {'sbp', 'dbp', 'sbp_ref', 'dbp_ref'}}.
  Returns the written paths.
  """
  os.makedirs(directory, exist_ok=True)
  written = [os.path.join(directory, 'metrics.json'), os.path.join(directory, 'metrics.md')]
  with open(written[0], 'w') as f:
    json.dump(reports, f, indent=2)
  with open(written[1], 'w') as f:
    f.write(markdown_table(reports))
  for split, out in outputs.items():
    for target in TARGETS:
      for kind, draw in (('bland_altman', bland_altman), ('scatter', scatter)):
        path = os.path.join(directory, f'{kind}_{split}_{target}.png')
        draw(path, out[target], out[f'{target}_ref'], target, f'{target.upper()}, {split}')
        written.append(path)
  return written
