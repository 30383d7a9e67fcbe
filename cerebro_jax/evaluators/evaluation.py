"""Predictions over a dataset split and the BP metrics of a model's parameters."""

from __future__ import annotations

import os

import jax
import numpy as np

from cerebro_jax import datasets, distributed, forward as forward_lib, sharding
from cerebro_jax.evaluators import metrics, report
from cerebro_jax.models import checkpoints, model as model_lib
from cerebro_jax.quant.quantization import QuantSpec
from input_pipeline import pipeline, splits, tfds_builders


def predict_split(params, model_config, builder, split: str, batch_size: int, mesh,
                  spec: QuantSpec = QuantSpec()) -> dict:
  """Every window of `split` once, in file order, on every process:
  {'sbp', 'dbp' (estimates), 'sbp_ref', 'dbp_ref' (mmHg), 'subject' (str)}.

  Each process predicts its shard; the rows of all processes are gathered afterwards.
  """
  forward = forward_lib.predict_fn(model_config, mesh, spec)
  local = sharding.check_batch(batch_size, 'eval_batch_size')
  parts = []
  for batch in pipeline.eval_batches(builder, split, local):
    signals = sharding.put_batch({'signals': batch['signals']}, mesh)['signals']
    out = model_lib.named_outputs(sharding.local_rows(forward(params, signals), mesh))
    parts.append({'sbp': out['sbp_mmhg'], 'dbp': out['dbp_mmhg'], 'sbp_ref': batch['sbp'],
                  'dbp_ref': batch['dbp'], 'subject': batch['subject'], 'mask': batch['mask']})
  rows = distributed.gather_rows({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
  keep = rows.pop('mask')
  rows = {k: v[keep] for k, v in rows.items()}
  rows['subject'] = rows['subject'].astype(str)
  return rows


def mse(outputs: dict) -> float:
  """Mean squared error over both targets (the training loss, mmHg^2)."""
  return float(np.mean([(outputs[t] - outputs[f'{t}_ref']) ** 2 for t in metrics.TARGETS]))


def split_report(outputs: dict, train_means: dict, protocol: str = '', split: str = '') -> dict:
  """The BP report (metrics.bp_report) of one split's `predict_split` outputs, with the
  dataset's split protocol and what the split measures when they are given."""
  report_ = metrics.bp_report({t: outputs[t] for t in metrics.TARGETS},
                              {t: outputs[f'{t}_ref'] for t in metrics.TARGETS},
                              outputs['subject'], train_means)
  if protocol:
    report_.update(protocol=protocol, split_kind=splits.split_kind(protocol, split))
  return report_


def evaluate_params(params, model_config, builder, eval_splits, batch_size: int, mesh,
                    train_means: dict, out_dir: str, spec: QuantSpec = QuantSpec()) -> dict:
  """Metrics, Markdown table and plots for each split, written to `out_dir`; each report
  names the dataset's split protocol and what the split measures. Every process computes
  the reports (on all windows); process 0 writes them."""
  protocol = tfds_builders.protocol_of(builder)
  outputs = {s: predict_split(params, model_config, builder, s, batch_size, mesh, spec)
             for s in eval_splits}
  reports = {s: split_report(o, train_means, protocol, s) for s, o in outputs.items()}
  if distributed.is_main():
    report.write_evaluation(out_dir, reports, outputs)
  return reports


def evaluate(config, workdir: str, model_dir: str = '') -> dict:
  """Evaluates a model directory (default <workdir>/model) on config.eval_splits (or
  validation and every test split).

  Writes <workdir>/eval/ and returns {split: metrics report}. The mean predictor uses
  the training split's means of the configured dataset.
  """
  model_dir = model_dir or os.path.join(workdir, 'model')
  params, model_config, metadata = checkpoints.load_model(model_dir, head='bp')
  builder = datasets.get_builder(config.data, workdir)
  mesh = sharding.data_mesh()
  params = jax.device_put(params, sharding.replicated(mesh))
  return evaluate_params(params, model_config, builder,
                         datasets.eval_splits(config.eval_splits, builder),
                         config.eval_batch_size, mesh, datasets.split_means(builder),
                         os.path.join(workdir, 'eval'), QuantSpec.from_metadata(metadata))
