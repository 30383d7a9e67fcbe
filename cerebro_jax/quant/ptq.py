"""Post-training quantization of a model directory: quantize, save, size, compare.

`quantize_checkpoint` writes an INT8 model directory (the paper's dynamic quantization,
which `python -m cerebro_jax.predict` runs with the integer path) with sizes.json and,
given a prepared dataset, metrics.json and quantization.md comparing float32,
weight-only INT8 and weight+activation INT8 on the same windows, and on request
schemes.md and schemes.json: the dynamic INT8 schemes side by side (`compare_schemes`),
and static.md and static.json: static INT8 over observers, activation schemes and weight
granularities (`compare_static`). With mode='static' the model written is static INT8,
calibrated on windows of a prepared dataset's training split.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np
from flax import traverse_util

from cerebro_jax import datasets, sharding
from cerebro_jax.evaluators import evaluation, metrics
from cerebro_jax.models import checkpoints
from cerebro_jax.quant import calibration, quantization
from cerebro_jax.quant.quantization import QuantSpec
from input_pipeline import pipeline, tfds_builders

# The dynamic INT8 variants users choose between: QuantSpec fields beyond mode and weights.
SCHEME_VARIANTS = {
    'symmetric int8, per batch': {'scheme': 'symmetric'},
    'pytorch, fbgemm (x86: 7-bit), per batch': {'scheme': 'pytorch', 'reduce_range': True},
    'pytorch, qnnpack (ARM: 8-bit), per batch': {'scheme': 'pytorch'},
    'pytorch, 8-bit, per window': {'scheme': 'pytorch', 'activations': 'window'},
}
# The second batching of the schemes table: per-batch scales change with it.
_SMALL_BATCH = 8
# The static INT8 grid: every observer x activation scheme x weight granularity.
STATIC_GRID = [(observer, scheme, weights) for observer in calibration.OBSERVERS
               for scheme in ('pytorch', 'symmetric') for weights in ('channel', 'tensor')]
_ACTIVATIONS_NAME = {'pytorch': 'affine uint8', 'symmetric': 'symmetric int8'}


def _predict_split(tree, model_config, builder, split: str, batch_size: int,
                   spec: QuantSpec) -> dict:
  """evaluation.predict_split of host params (float or quantized, as `spec` says) on all
  devices."""
  mesh = sharding.data_mesh()
  return evaluation.predict_split(jax.device_put(tree, sharding.replicated(mesh)),
                                  model_config, builder, split, batch_size, mesh, spec)


def compare_schemes(params, model_config, builder, split: str, batch_size: int,
                    reference: dict, weights: str = 'channel') -> list[dict]:
  """Each SCHEME_VARIANTS entry on `split` against the float model's `reference` outputs
  (predict_split's), one row each (mmHg): _error_row's accuracy and change against
  float32; largest change of an estimate when the split is batched by
  _SMALL_BATCH x devices instead of `batch_size`."""
  small = _SMALL_BATCH * jax.device_count()
  rows = []
  for name, options in SCHEME_VARIANTS.items():
    spec = QuantSpec('int8_dynamic', weights=weights, **options)
    qparams = quantization.quantize_params(params, weights, spec.scheme)
    out, rebatched = (_predict_split(qparams, model_config, builder, split, b, spec)
                      for b in (batch_size, small))
    rows.append({'variant': name, **dataclasses.asdict(spec), **_error_row(out, reference),
                 'max_batch_effect_mmhg': float(max(np.abs(out[t] - rebatched[t]).max()
                                                    for t in metrics.TARGETS))})
  return rows


def _error_row(out: dict, reference: dict) -> dict:
  """Accuracy (MAE, ME, SD against the references) and the change against the float
  model's `reference` outputs, mmHg."""
  row = {}
  for t in metrics.TARGETS:
    error = out[t] - out[f'{t}_ref']
    row.update({f'{t}_mae': float(np.abs(error).mean()), f'{t}_me': float(error.mean()),
                f'{t}_sd': float(error.std())})
  change = np.abs(np.stack([out[t] - reference[t] for t in metrics.TARGETS]))
  return {**row, 'mean_abs_change_mmhg': float(change.mean()),
          'max_abs_change_mmhg': float(change.max())}


def calibration_windows(calibration_data: str, count: int) -> np.ndarray:
  """`count` windows spread over the training split of a prepared dataset."""
  return pipeline.spread_windows(pipeline.load_builder(calibration_data), 'train', count)


def compare_static(params, model_config, builder, split: str, batch_size: int,
                   reference: dict, windows: np.ndarray, percentile: float) -> list[dict]:
  """Static INT8 for each STATIC_GRID configuration, calibrated on `windows`, on `split`
  against the float model's `reference` outputs: one _error_row each."""
  ranges = calibration.ranges_by_observer(params, model_config, windows,
                                          percentile=percentile)
  rows = []
  for observer, scheme, weights in STATIC_GRID:
    spec = QuantSpec('int8_static', weights=weights, scheme=scheme)
    qparams = calibration.static_params(params, ranges[observer], spec)
    out = _predict_split(qparams, model_config, builder, split, batch_size, spec)
    rows.append({'observer': observer, 'activations': _ACTIVATIONS_NAME[scheme],
                 'weights': weights, **_error_row(out, reference)})
  return rows


def static_markdown(rows: list[dict], float_row: dict, dynamic_row: dict, split: str,
                    calibration_count: int, percentile: float) -> str:
  """The static INT8 table, with the float model and the paper's dynamic INT8 above it."""
  lines = ['| observer | activations | weights | SBP MAE | SBP ME +- SD | DBP MAE | '
           'DBP ME +- SD | mean / max abs(INT8 - float32) |', '|---|---|---|---|---|---|---|---|']
  labelled = [('float32', '-', '-', float_row),
              ('dynamic (paper)', 'affine uint8, per batch', 'channel', dynamic_row)]
  labelled += [(r['observer'], r['activations'], r['weights'], r) for r in rows]
  for observer, activations, weights, r in labelled:
    lines.append(f"| {observer} | {activations} | {weights} | {r['sbp_mae']:.3f} | "
                 f"{r['sbp_me']:+.2f} +- {r['sbp_sd']:.2f} | {r['dbp_mae']:.3f} | "
                 f"{r['dbp_me']:+.2f} +- {r['dbp_sd']:.2f} | "
                 f"{r['mean_abs_change_mmhg']:.3f} / {r['max_abs_change_mmhg']:.3f} |")
  return '\n'.join(lines) + (
      f'\n\n{split} split; mmHg. Static: activation ranges calibrated on {calibration_count} '
      f'training windows (minmax: their extremes; percentile: {100 - percentile:g}% cut from '
      'each tail), then fixed.\n')


def schemes_markdown(rows: list[dict], float_report: dict, split: str,
                     batch_size: int) -> str:
  lines = ['| variant | SBP MAE | DBP MAE | mean abs(INT8 - float32) | max abs(INT8 - float32) '
           f'| max change, batch {batch_size} -> {_SMALL_BATCH} |', '|---|---|---|---|---|---|',
           f"| float32 | {float_report['sbp']['mae']:.3f} | {float_report['dbp']['mae']:.3f} "
           '| 0 | 0 | 0 |']
  for r in rows:
    lines.append(f"| {r['variant']} | {r['sbp_mae']:.3f} | {r['dbp_mae']:.3f} | "
                 f"{r['mean_abs_change_mmhg']:.3f} | {r['max_abs_change_mmhg']:.3f} | "
                 f"{r['max_batch_effect_mmhg']:.3f} |")
  return '\n'.join(lines) + (f'\n\n{split} split, {rows[0]["weights"]} weight scales; mmHg. '
                             'The pytorch rows are torch.ao.quantization.quantize_dynamic '
                             'as the paper ran it.\n')


def directory_mib(path: str) -> float:
  """Bytes of every file under `path`, / 1024^2."""
  return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path)
             for name in names) / 2**20


def safetensors_mib(tree) -> float:
  """Size of `tree` as one .safetensors file (a state dict: '.'-joined names), / 1024^2."""
  from safetensors.numpy import save  # pylint: disable=import-outside-toplevel
  flat = traverse_util.flatten_dict(tree, sep='.')
  return len(save({k: np.ascontiguousarray(v) for k, v in flat.items()})) / 2**20


def file_sizes(float_dir: str, int8_dir: str, params, qparams) -> dict:
  """The shipped files of the float and the INT8 model in MiB: {format: {'float32',
  'int8'}}: the orbax model directory, and the parameters as a safetensors state dict."""
  return {'orbax directory': {'float32': directory_mib(float_dir),
                              'int8': directory_mib(int8_dir)},
          'safetensors state dict': {'float32': safetensors_mib(params),
                                     'int8': safetensors_mib(qparams)}}


def size_markdown(sizes: dict) -> str:
  lines = ['| component | float32 (bytes) | INT8 model (bytes) |', '|---|---|---|']
  for name, row in sizes['components'].items():
    lines.append(f"| {name} | {row['float32_bytes']:,} | {row['int8_bytes']:,} |")
  lines.append(f"| **arrays** | **{sizes['float32_mib']:.2f} MiB** | "
               f"**{sizes['int8_mib']:.2f} MiB** ({sizes['ratio']:.2f}x smaller) |")
  for name, row in sizes.get('files', {}).items():
    lines.append(f"| {name} file(s) | {row['float32']:.2f} MiB | {row['int8']:.2f} MiB "
                 f"({row['float32'] / row['int8']:.2f}x smaller) |")
  return '\n'.join(lines) + '\n'


def comparison_markdown(reports: dict, split: str) -> str:
  """Side-by-side metrics of the variants on one split, with differences to float32."""
  lines = ['| target | metric | ' + ' | '.join(reports) + ' | ' +
           ' | '.join(f'{v} - float32' for v in list(reports)[1:]) + ' |']
  lines.append('|' + '---|' * (2 + 2 * len(reports) - 1))
  rows = (('MAE', lambda m: m['mae']), ('ME', lambda m: m['me']), ('SD', lambda m: m['sd']),
          ('BHS <=5 %', lambda m: m['bhs']['within_5']),
          ('BHS <=10 %', lambda m: m['bhs']['within_10']),
          ('BHS <=15 %', lambda m: m['bhs']['within_15']))
  for target in metrics.TARGETS:
    for name, get in rows:
      values = [get(r[split][target]) for r in reports.values()]
      lines.append(f'| {target.upper()} | {name} | ' + ' | '.join(f'{v:.2f}' for v in values)
                   + ' | ' + ' | '.join(f'{v - values[0]:+.3f}' for v in values[1:]) + ' |')
  kind = next(iter(reports.values()))[split].get('split_kind')
  return '\n'.join(lines) + (f'\n\n{split} split{f" ({kind})" if kind else ""}; mmHg, or % of '
                             'windows for BHS.\n')


def quantize_checkpoint(checkpoint: str, output: str, *, weights: str = 'channel',
                        activations: str = 'tensor', scheme: str = 'pytorch',
                        reduce_range: bool = False, mode: str = 'dynamic',
                        observer: str = 'minmax', percentile: float = 99.99,
                        calibration_data: str = '', calibration_count: int = 512,
                        eval_data: str = '', split: str = '', batch_size: int = 256,
                        overwrite: bool = False, schemes: bool = False,
                        static: bool = False) -> dict:
  """Quantizes `checkpoint` into `output`; returns {'sizes', 'reports' (if eval_data)}.

  weights, activations, scheme, reduce_range: as in quantization.QuantSpec. mode: 'dynamic'
  (the paper's) or 'static', calibrated with `observer` (and `percentile`) on
  `calibration_count` windows spread over the training split of `calibration_data`
  (default: eval_data). With eval_data, schemes: also compare the SCHEME_VARIANTS
  (schemes.md, result['schemes']); static: the STATIC_GRID (static.md, result['static']).

  split: the split of eval_data compared on; '' = its test split (datasets.test_split).
  """
  if (schemes or static) and not eval_data:
    raise ValueError('comparing schemes or static configurations needs a prepared dataset '
                     'to evaluate on (--eval_data)')
  if mode not in ('dynamic', 'static'):
    raise ValueError(f'unknown mode {mode!r}: dynamic or static')
  calibration_data = calibration_data or eval_data
  if (mode == 'static' or static) and not calibration_data:
    raise ValueError('static INT8 needs calibration windows: a prepared dataset '
                     '(--calibration_data, or --eval_data)')
  params, model_config, metadata = checkpoints.load_model(checkpoint, head='bp')
  if quantization.is_quantized(params):
    raise ValueError(f'{checkpoint} is already quantized')
  spec = QuantSpec(f'int8_{mode}', weights=weights, activations=activations, scheme=scheme,
                   reduce_range=reduce_range)
  windows = calibration_windows(calibration_data, calibration_count) if (
      mode == 'static' or static) else None
  if mode == 'static':
    qparams = calibration.static_params(
        params, calibration.layer_ranges(params, model_config, windows, observer, percentile),
        spec)
    metadata = {**metadata, 'calibration': {
        'data': os.path.abspath(calibration_data), 'windows': len(windows),
        'observer': observer, **({'percentile': percentile} if observer == 'percentile' else {})}}
  else:
    qparams = quantization.quantize_params(params, weights, scheme)
  output = checkpoints.save_model(output, qparams, model_config,
                                  {**metadata, 'quantization': dataclasses.asdict(spec),
                                   'float_model': os.path.abspath(checkpoint)},
                                  overwrite=overwrite)
  sizes = {**quantization.size_table(params, qparams),
           'files': file_sizes(checkpoint, output, params, qparams)}
  with open(os.path.join(output, 'sizes.json'), 'w') as f:
    json.dump(sizes, f, indent=2)
  result = {'output': output, 'sizes': sizes, 'markdown': size_markdown(sizes)}
  if not eval_data:
    return result

  builder = pipeline.load_builder(eval_data)
  train_means = datasets.split_means(builder)
  split = split or datasets.test_split(builder)
  protocol = tfds_builders.protocol_of(builder)
  variants = {'float32': (params, QuantSpec()),
              'int8_weights': (qparams, QuantSpec('int8_weights', weights=weights,
                                                  scheme=scheme)),
              spec.mode: (qparams, spec)}
  outputs = {name: _predict_split(tree, model_config, builder, split, batch_size, variant_spec)
             for name, (tree, variant_spec) in variants.items()}
  reports = {name: {split: evaluation.split_report(out, train_means, protocol, split)}
             for name, out in outputs.items()}
  with open(os.path.join(output, 'metrics.json'), 'w') as f:
    json.dump(reports, f, indent=2)
  result['reports'] = reports
  result['markdown'] += '\n' + comparison_markdown(reports, split)
  with open(os.path.join(output, 'quantization.md'), 'w') as f:
    f.write(result['markdown'])
  tables = []
  if schemes:
    result['schemes'] = compare_schemes(params, model_config, builder, split, batch_size,
                                        outputs['float32'], weights)
    tables.append(('schemes', result['schemes'], schemes_markdown(
        result['schemes'], reports['float32'][split], split, batch_size)))
  if static:
    result['static'] = compare_static(params, model_config, builder, split, batch_size,
                                      outputs['float32'], windows, percentile)
    paper = QuantSpec('int8_dynamic', scheme='pytorch')
    dynamic = outputs['int8_dynamic'] if spec == paper else _predict_split(
        quantization.quantize_params(params, 'channel', 'pytorch'), model_config, builder,
        split, batch_size, paper)
    tables.append(('static', result['static'], static_markdown(
        result['static'], _error_row(outputs['float32'], outputs['float32']),
        _error_row(dynamic, outputs['float32']), split, len(windows), percentile)))
  for name, rows, table in tables:
    with open(os.path.join(output, f'{name}.md'), 'w') as f:
      f.write(table)
    with open(os.path.join(output, f'{name}.json'), 'w') as f:
      json.dump(rows, f, indent=2)
    result['markdown'] += '\n' + table
  return result
