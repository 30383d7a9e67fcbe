"""Post-training quantization of a model directory: quantize, save, size, compare.

`quantize_checkpoint` writes an INT8 model directory (the paper's dynamic quantization,
which `python -m cerebro_jax.predict` runs with the integer path) with sizes.json and,
given a prepared dataset, metrics.json and quantization.md comparing float32,
weight-only INT8 and weight+activation INT8 on the same windows.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax

from cerebro_jax import checkpoints, datasets, evaluation, metrics, quantization, sharding
from cerebro_jax.quantization import QuantSpec
from input_pipeline import pipeline, tfds_builders

def size_markdown(sizes: dict) -> str:
  lines = ['| component | float32 (bytes) | INT8 model (bytes) |', '|---|---|---|']
  for name, row in sizes['components'].items():
    lines.append(f"| {name} | {row['float32_bytes']:,} | {row['int8_bytes']:,} |")
  lines.append(f"| **total** | **{sizes['float32_mib']:.2f} MiB** | "
               f"**{sizes['int8_mib']:.2f} MiB** ({sizes['ratio']:.2f}x smaller) |")
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
                        activations: str = 'tensor', eval_data: str = '', split: str = '',
                        batch_size: int = 256, overwrite: bool = False) -> dict:
  """Quantizes `checkpoint` into `output`; returns {'sizes', 'reports' (if eval_data)}.

  split: the split of eval_data compared on; '' = its test split (datasets.test_split).
  """
  params, model_config, metadata = checkpoints.load_model(checkpoint)
  if quantization.is_quantized(params):
    raise ValueError(f'{checkpoint} is already quantized')
  spec = QuantSpec('int8_dynamic', weights=weights, activations=activations)
  qparams = quantization.quantize_params(params, weights)
  output = checkpoints.save_model(output, qparams, model_config,
                                  {**metadata, 'quantization': dataclasses.asdict(spec),
                                   'float_model': os.path.abspath(checkpoint)},
                                  overwrite=overwrite)
  sizes = quantization.size_table(params, qparams)
  with open(os.path.join(output, 'sizes.json'), 'w') as f:
    json.dump(sizes, f, indent=2)
  result = {'output': output, 'sizes': sizes, 'markdown': size_markdown(sizes)}
  if not eval_data:
    return result

  builder = pipeline.load_builder(eval_data)
  train_means = datasets.split_means(builder)
  split = split or datasets.test_split(builder)
  protocol = tfds_builders.protocol_of(builder)
  mesh = sharding.data_mesh()
  variants = {'float32': (params, QuantSpec()),
              'int8_weights': (qparams, QuantSpec('int8_weights', weights=weights)),
              'int8_dynamic': (qparams, spec)}
  reports = {}
  for name, (tree, variant_spec) in variants.items():
    out = evaluation.predict_split(jax.device_put(tree, sharding.replicated(mesh)),
                                   model_config, builder, split, batch_size, mesh, variant_spec)
    reports[name] = {split: evaluation.split_report(out, train_means, protocol, split)}
  with open(os.path.join(output, 'metrics.json'), 'w') as f:
    json.dump(reports, f, indent=2)
  result['reports'] = reports
  result['markdown'] += '\n' + comparison_markdown(reports, split)
  with open(os.path.join(output, 'quantization.md'), 'w') as f:
    f.write(result['markdown'])
  return result
