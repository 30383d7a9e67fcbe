"""Evaluation outputs: metrics.json, a Markdown table, Bland-Altman and scatter PNGs."""

from __future__ import annotations

import json
import os

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no global backend, headless or inline

from cerebro_jax.evaluators.metrics import TARGETS
from input_pipeline import beats
from input_pipeline.records import FS
from input_pipeline.windows import WINDOW


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
  kinds = [f'- {split}: {r["split_kind"]}' for split, r in reports.items() if 'split_kind' in r]
  protocols = sorted({r['protocol'] for r in reports.values() if 'protocol' in r})
  if kinds:
    lines += ['', f'Dataset split protocol: {", ".join(protocols)}.', *kinds]
  return '\n'.join(lines) + '\n\nAll values in mmHg; error = estimate - reference.\n'


def _finish(fig, ax, path: str, xlabel: str, ylabel: str, title: str, legend: str) -> None:
  """Labels, legend, and the PNG written to `path`."""
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.legend(loc=legend, fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def bland_altman(path: str, estimate, reference, target: str, title: str) -> None:
  estimate, reference = np.asarray(estimate), np.asarray(reference)
  mean, diff = (estimate + reference) / 2, estimate - reference
  me, sd = diff.mean(), diff.std()
  fig = Figure(figsize=(6, 4.5))
  ax = fig.subplots()
  ax.scatter(mean, diff, s=6, alpha=0.4)
  for y, style, name in ((me, '-', 'ME'), (me + 1.96 * sd, '--', '+1.96 SD'),
                         (me - 1.96 * sd, '--', '-1.96 SD')):
    ax.axhline(y, color='k', linestyle=style, linewidth=1, label=f'{name} {y:+.2f}')
  _finish(fig, ax, path, f'mean of estimate and reference {target.upper()} (mmHg)',
          f'estimate - reference {target.upper()} (mmHg)', title, 'upper right')


def scatter(path: str, estimate, reference, target: str, title: str) -> None:
  estimate, reference = np.asarray(estimate), np.asarray(reference)
  lo, hi = min(estimate.min(), reference.min()), max(estimate.max(), reference.max())
  fig = Figure(figsize=(5, 5))
  ax = fig.subplots()
  ax.scatter(reference, estimate, s=6, alpha=0.4)
  ax.plot([lo, hi], [lo, hi], 'k--', linewidth=1, label='identity')
  _finish(fig, ax, path, f'reference {target.upper()} (mmHg)',
          f'estimate {target.upper()} (mmHg)', title, 'upper left')


def window_figure(record, window):
  """A figure of one 10-s `Window` of its `Record`: ECG, PPG, and ABP with its systolic
  peaks and feet as the labels use them, titled with the verdict and SBP/DBP (mmHg)."""
  start = int(round(window.start_s * FS))
  part = slice(start, start + WINDOW)
  t = window.start_s + np.arange(WINDOW) / FS
  abp = record.abp[part]
  fig = Figure(figsize=(10, 6))
  axes = fig.subplots(3, 1, sharex=True)
  lead = record.leads.index(window.lead) if window.lead in record.leads else 0
  axes[0].plot(t, record.ecg[lead, part], linewidth=0.8)
  axes[0].set_ylabel(f'ECG {record.leads[lead]} (mV)')
  axes[1].plot(t, record.ppg[part], linewidth=0.8, color='tab:green')
  axes[1].set_ylabel('PPG')
  axes[2].plot(t, abp, linewidth=0.8, color='tab:red')
  if np.isfinite(abp).all():
    peaks, feet = beats.abp_beats(abp, beats.filter_pulse(record.abp)[part])
    axes[2].plot(t[peaks], abp[peaks], 'v', color='k', label='systolic peaks')
    axes[2].plot(t[feet], abp[feet], '^', color='tab:blue', label='feet')
    axes[2].legend(loc='upper right', fontsize=8)
  axes[2].set_ylabel('ABP (mmHg)')
  axes[2].set_xlabel('time in record (s)')
  verdict = 'accepted' if window.accepted else f'rejected: {window.reject}'
  fig.suptitle(f'{record.record} at {window.start_s:.0f} s, {verdict}: SBP '
               f'{window.sbp_mmhg:.1f}, DBP {window.dbp_mmhg:.1f} mmHg')
  fig.tight_layout()
  return fig


def example_figure(example: dict):
  """A figure of one prepared window (a dataset example: 'signals' (2, 1250) in [0, 1],
  'sbp', 'dbp' mmHg, 'record', 'subject'): the model's ECG and PPG inputs."""
  t = np.arange(WINDOW) / FS
  fig = Figure(figsize=(10, 4))
  axes = fig.subplots(2, 1, sharex=True)
  for ax, values, name, color in zip(axes, example['signals'], ('ECG', 'PPG'),
                                     ('tab:blue', 'tab:green')):
    ax.plot(t, values, linewidth=0.8, color=color)
    ax.set_ylabel(f'{name} (scaled)')
  axes[1].set_xlabel('time in window (s)')
  text = lambda v: v.decode() if isinstance(v, bytes) else str(v)
  fig.suptitle(f"{text(example['record'])} ({text(example['subject'])}): SBP "
               f"{float(example['sbp']):.1f}, DBP {float(example['dbp']):.1f} mmHg")
  fig.tight_layout()
  return fig


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
