"""Static INT8: calibrated input ranges, fixed scales, the static table and model files."""

import json

import flax.linen as nn
import jax
import numpy as np
import pytest

from cerebro_jax import inference
from cerebro_jax.models import checkpoints, model as model_lib
from cerebro_jax.models.model_config import ModelConfig
from cerebro_jax.quant import calibration, ptq
from cerebro_jax.quant import quantization as q

import one_layer

TINY = ModelConfig.from_size('small', depth=1)


@pytest.fixture(scope='module')
def tiny():
  """A 1-block CEReBrO small with outputs spread over several mmHg, and 24 windows."""
  params = model_lib.init_params(TINY, jax.random.PRNGKey(0))
  params['head']['kernel'] = params['head']['kernel'] * 300
  params['head']['bias'] = np.array([80.0, 120.0], np.float32)
  return params, np.random.default_rng(0).random((24, 2, 1250), dtype=np.float32)


def _run(spec, tree, x):
  return np.asarray(jax.jit(q.make_apply(TINY, spec))(tree, x))


def _layer_inputs(params, x) -> dict:
  """Every value each quantized Dense layer receives in the float model for windows x,
  captured independently of calibration.py: {layer path: values (n,)}."""
  seen = {}

  def intercept(next_fun, args, kwargs, context):
    path = '/'.join(context.module.path)
    if isinstance(context.module, nn.Dense) and q.is_quantized_layer(path):
      seen[path] = np.asarray(args[0]).reshape(-1)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(intercept):
    model_lib.CerebroBP(TINY).apply({'params': params}, x)
  return seen


def test_minmax_ranges_are_every_layers_input_extremes(tiny):
  """Over batches of 8 (merged), each quantized layer's range is the extremes of what it
  receives in the float model (static PTQ calibrates the float model, as torch does)."""
  params, x = tiny
  ranges = calibration.layer_ranges(params, TINY, x, 'minmax', batch_size=8)
  inputs = _layer_inputs(params, x)
  assert len(inputs) == TINY.depth * 4 + 1  # qkv, proj, fc1, fc2 per block, and the head
  assert set(ranges) == set(inputs)
  for layer, values in inputs.items():  # to float rounding (here eager, there jitted)
    np.testing.assert_allclose(ranges[layer], (values.min(), values.max()), rtol=1e-6)


@pytest.mark.parametrize('scheme', q.SCHEMES)
def test_a_static_layer_with_its_inputs_range_is_dynamic_per_batch(scheme):
  """Given the range of exactly the batch it runs, a static layer is dynamic per-batch INT8
  to the last bit (same scale and zero point); on other inputs it is not."""
  x = np.random.default_rng(2).normal(size=(16, 38, 192)).astype(np.float32)
  params = one_layer.OneLayer().init(jax.random.PRNGKey(0), x)['params']
  static = q.QuantSpec('int8_static', scheme=scheme)
  qparams = calibration.static_params(params, {'head': (x.min(), x.max())}, static)
  dynamic = q.QuantSpec('int8_dynamic', scheme=scheme)
  dynamic_params = q.quantize_params(params, 'channel', scheme)
  np.testing.assert_array_equal(one_layer.run(qparams, x, static),
                                one_layer.run(dynamic_params, x, dynamic))
  wider = x * 3  # beyond the calibrated range: clipped
  assert np.abs(one_layer.run(qparams, wider, static)
                - one_layer.run(dynamic_params, wider, dynamic)).max() > 0.1


def test_static_model_is_as_close_to_float_as_dynamic(tiny):
  params, x = tiny
  reference = _run(q.QuantSpec(), params, x)
  dynamic = _run(q.QuantSpec('int8_dynamic', scheme='pytorch'),
                 q.quantize_params(params, 'channel', 'pytorch'), x)
  static = q.QuantSpec('int8_static', scheme='pytorch')
  out = _run(static, calibration.static_params(
      params, calibration.layer_ranges(params, TINY, x[:12]), static), x)
  assert 0 < np.abs(out - reference).mean() < 2 * np.abs(dynamic - reference).mean()


def test_static_inputs_outside_the_range_are_clipped():
  spec = q.QuantSpec('int8_static', scheme='pytorch')
  scale, zero = q.activation_qparams(np.float32(0), np.float32(2.55), spec)
  codes = q.activation_codes(np.array([-1, 0, 1.0, 2.55, 9], np.float32), scale, zero, spec)
  assert codes.tolist() == [0, 0, 100, 255, 255] and float(zero) == 0
  symmetric = q.QuantSpec('int8_static')
  scale, _ = q.activation_qparams(np.float32(-1), np.float32(0.5), symmetric)
  codes = q.activation_codes(np.array([-3, -1, 0.5, 3], np.float32), scale, 0, symmetric)
  assert codes.tolist() == [-127, -127, 64, 127]


def test_percentile_observer_reads_the_histogram_correctly(tiny):
  params, x = tiny
  minmax = calibration.layer_ranges(params, TINY, x, 'minmax')
  assert calibration.layer_ranges(params, TINY, x, 'percentile', 100) == minmax
  cut = calibration.layer_ranges(params, TINY, x, 'percentile', 99)
  assert cut == calibration.layer_ranges(params, TINY, x, 'percentile', 99)  # deterministic
  values = _layer_inputs(params, x)['head']
  low, high = minmax['head']
  # Within two bins: the bin's edge, plus np.percentile's interpolation between samples
  # that may fall in the neighbouring bin (the histogram bins float32 values).
  step = (high - low) / calibration.BINS
  assert abs(cut['head'][0] - np.percentile(values, 1)) <= 2 * step
  assert abs(cut['head'][1] - np.percentile(values, 99)) <= 2 * step
  assert all(minmax[k][0] <= lo <= hi <= minmax[k][1] for k, (lo, hi) in cut.items())
  assert all(hi - lo < 0.9 * (minmax[k][1] - minmax[k][0]) for k, (lo, hi) in cut.items())


def test_bad_calibration_requests_are_refused(tiny):
  params, x = tiny
  with pytest.raises(ValueError, match='unknown observer'):
    calibration.layer_ranges(params, TINY, x, 'kl')
  with pytest.raises(ValueError, match='percentile 30'):
    calibration.layer_ranges(params, TINY, x, 'percentile', 30)
  with pytest.raises(ValueError, match='at least one window'):
    calibration.layer_ranges(params, TINY, x[:0])
  with pytest.raises(ValueError, match='one calibrated input range per layer'):
    q.QuantSpec('int8_static', activations='window')


def test_static_model_directory_table_and_refusals(tiny, tiny_dataset, tmp_path):
  params, _ = tiny
  float_dir = checkpoints.save_model(tmp_path / 'float', params, TINY)
  result = ptq.quantize_checkpoint(float_dir, str(tmp_path / 'static'), mode='static',
                                   observer='percentile', percentile=99.9,
                                   calibration_count=16, eval_data=tiny_dataset, static=True)
  rows = json.loads((tmp_path / 'static' / 'static.json').read_text())
  assert [(r['observer'], r['weights']) for r in rows][:2] == [('minmax', 'channel'),
                                                              ('minmax', 'tensor')]
  assert len(rows) == len(ptq.STATIC_GRID) == 8
  assert all(0 < r['mean_abs_change_mmhg'] <= r['max_abs_change_mmhg'] < 5 for r in rows)
  table = (tmp_path / 'static' / 'static.md').read_text()
  assert table.count('\n| ') == 10 and '| dynamic (paper) |' in table
  assert 'calibrated on 16 training windows' in table and table in result['markdown']
  assert set(result['reports']) == {'float32', 'int8_weights', 'int8_static'}

  loaded, _, metadata = checkpoints.load_model(tmp_path / 'static')
  assert metadata['calibration']['observer'] == 'percentile'
  assert metadata['calibration']['windows'] == 16
  spec = q.QuantSpec.from_metadata(metadata)
  assert spec.mode == 'int8_static' and spec.scheme == 'pytorch'
  # Calibration again from the same dataset gives the same model (deterministic).
  windows = ptq.calibration_windows(tiny_dataset, 16)
  again = calibration.static_params(
      params, calibration.layer_ranges(params, TINY, windows, 'percentile', 99.9), spec)
  jax.tree.map(np.testing.assert_array_equal, loaded, again)
  x = windows[:5]
  np.testing.assert_array_equal(inference.predict_windows(loaded, TINY, x, spec=spec),
                                _run(spec, again, x))

  dynamic = q.quantize_params(params, 'channel', 'pytorch')  # no calibrated ranges
  checkpoints.save_model(tmp_path / 'broken', dynamic, TINY,
                         {'quantization': {'mode': 'int8_static', 'scheme': 'pytorch'}})
  with pytest.raises(checkpoints.ModelCheckpointError, match='head has no calibrated input_s'):
    checkpoints.load_model(tmp_path / 'broken')
  with pytest.raises(ValueError, match='needs calibration windows'):
    ptq.quantize_checkpoint(float_dir, str(tmp_path / 'x'), mode='static')
