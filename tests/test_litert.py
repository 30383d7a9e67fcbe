"""LiteRT files: the float file is the JAX model, the INT8 file is 3.6x smaller and close,
predict runs them, bad files and bad models are refused."""

import subprocess
import sys

import jax
import numpy as np
import pytest

from cerebro_jax import inference
from cerebro_jax.models import checkpoints, model as model_lib
from cerebro_jax.models.model_config import ModelConfig
from cerebro_jax.quant import litert, quantization
from conftest import REPO_ROOT

CONFIG = ModelConfig.from_size('small', depth=2)


@pytest.fixture(scope='module')
def exported(tmp_path_factory, real_data):
  """(folder, params, real accepted windows): float and dynamic_int8 files at batch 2."""
  folder = tmp_path_factory.mktemp('litert')
  params = model_lib.init_params(CONFIG, jax.random.PRNGKey(0))
  params['head']['kernel'] = params['head']['kernel'] * 300  # outputs over several mmHg
  params['head']['bias'] = np.array([80.0, 120.0], np.float32)
  record = inference.read_any_record(str(real_data / 'derived' / 'mixedsignals_125hz.vital'))
  from input_pipeline.windows import windows_of  # pylint: disable=import-outside-toplevel
  windows = np.stack([w.signals for w in windows_of(record) if w.accepted])
  # static_int8 calibrates on the record's last 12 windows; it is checked on all 22.
  sizes = {q: litert.export(params, CONFIG, str(folder / f'{q}.tflite'), q, batch=2,
                            calibration=windows[-12:])
           for q in litert.QUANTIZATIONS}
  return folder, params, sizes, windows


def test_the_float_file_is_the_jax_model_on_real_windows(exported):
  folder, params, sizes, windows = exported
  windows = windows[:21]  # batches of 2: the last one padded
  expected = inference.predict_windows(params, CONFIG, windows)
  got = litert.load_predictor(str(folder / 'none.tflite'))(windows)
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-3)  # mmHg, float rounding
  assert sizes['none'] / 2**20 == pytest.approx(
      quantization.size_table(params, params)['float32_mib'], rel=0.02)


@pytest.mark.parametrize('quant', ['dynamic_int8', 'static_int8'])
def test_the_int8_files_are_smaller_and_close(exported, quant):
  folder, params, sizes, windows = exported
  expected = inference.predict_windows(params, CONFIG, windows)
  got = litert.load_predictor(str(folder / f'{quant}.tflite'))(windows)
  assert 3.3 < sizes['none'] / sizes[quant] < 4.0
  error = np.abs(got - expected)
  assert 1e-3 < error.mean() and error.max() < 2.0  # mmHg: quantized, and close
  print(f'{quant} LiteRT vs JAX float: mean {error.mean():.3f}, max {error.max():.3f} mmHg')


def test_static_int8_is_calibrated_on_the_windows_given(exported, tmp_path):
  """Other calibration windows give other fixed ranges, so other estimates; none is
  refused."""
  folder, params, _, windows = exported
  other = str(tmp_path / 'other.tflite')
  litert.export(params, CONFIG, other, 'static_int8', batch=2, calibration=windows[:4] * 0.5)
  assert np.abs(litert.load_predictor(other)(windows)
                - litert.load_predictor(str(folder / 'static_int8.tflite'))(windows)).max() > 0
  with pytest.raises(litert.LiteRTError, match='needs at least 2 calibration windows'):
    litert.export(params, CONFIG, other, 'static_int8', batch=2, calibration=windows[:1])


def test_export_command_and_predict_on_a_tflite_file(exported, tmp_path, real_data):
  folder, params, _, _ = exported
  model_dir = checkpoints.save_model(tmp_path / 'model', params, CONFIG)
  out = tmp_path / 'model.tflite'
  result = subprocess.run([sys.executable, 'scripts/export_litert.py',
                           f'--checkpoint={model_dir}', f'--output={out}'], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'MiB (none; the float32 arrays' in result.stdout and out.is_file()
  csv_path = tmp_path / 'record.csv'
  result = subprocess.run([sys.executable, '-m', 'cerebro_jax.predict', f'--checkpoint={out}',
                           f'--record={real_data / "derived" / "mixedsignals_125hz.vital"}',
                           f'--output={csv_path}'], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert '23 windows (22 passed the quality checks)' in result.stdout
  assert 'LiteRT model.tflite' in result.stdout
  not_tflite = tmp_path / 'bad.tflite'
  not_tflite.write_bytes(b'not a flatbuffer')
  with pytest.raises(litert.LiteRTError, match='bad.tflite: not a cerebro-bp LiteRT file'):
    litert.load_predictor(str(not_tflite))


def test_an_int8_jax_model_is_not_exported_again(exported, tmp_path):
  _, params, _, _ = exported
  with pytest.raises(litert.LiteRTError, match='already INT8'):
    litert.export(quantization.quantize_params(params), CONFIG, str(tmp_path / 'x.tflite'))
