"""Batched, jitted BP inference on (N, 2, 1250) windows or on whole records; CSV output."""

from __future__ import annotations

import csv
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from cerebro_jax import forward as forward_lib
from cerebro_jax.models import model as model_lib
from cerebro_jax.models.model_config import ModelConfig
from cerebro_jax.quant.quantization import QuantSpec
from input_pipeline import mimic3, vitaldb_files
from input_pipeline.records import Record
from input_pipeline.windows import minmax_scale, windows_of

WINDOW_SHAPE = (2, 1250)  # (ECG, PPG) x 10 s at 125 Hz
_RANGE_SLACK = 1e-6  # float rounding around [0, 1]
CSV_COLUMNS = ('sbp_mmhg', 'dbp_mmhg')


class WindowsError(ValueError):
  """Windows that the model cannot take, with the reason."""


def check_windows(windows: np.ndarray, source: str = 'windows') -> np.ndarray:
  """Validates an (N, 2, 1250) float32 array of finite values in [0, 1]; returns it."""
  if not isinstance(windows, np.ndarray):
    raise WindowsError(f'{source}: expected a numpy array, got {type(windows).__name__}')
  if windows.dtype != np.float32:
    raise WindowsError(f'{source}: dtype {windows.dtype}, expected float32 '
                       '(convert with windows.astype(np.float32))')
  if windows.ndim != 3 or windows.shape[1:] != WINDOW_SHAPE:
    raise WindowsError(f'{source}: shape {windows.shape}, expected (N, 2, 1250): '
                       'N windows of ECG and PPG, 10 s at 125 Hz')
  if windows.shape[0] == 0:
    raise WindowsError(f'{source}: holds no windows')
  bad = np.flatnonzero(~np.isfinite(windows).all(axis=(1, 2)))
  if bad.size:
    raise WindowsError(f'{source}: {bad.size} windows hold NaN or Inf, first indices '
                       f'{bad[:10].tolist()}')
  outside = np.flatnonzero((windows.min(axis=(1, 2)) < -_RANGE_SLACK)
                           | (windows.max(axis=(1, 2)) > 1 + _RANGE_SLACK))
  if outside.size:
    raise WindowsError(
        f'{source}: {outside.size} of {len(windows)} windows have values outside [0, 1] '
        f'(first indices {outside[:10].tolist()}; values from {windows.min():.4g} to '
        f'{windows.max():.4g}). The model takes each channel of each window min-max scaled '
        'to [0, 1], as PulseDB stores them; scale them so (predict: --scale does it)')
  return windows


def load_windows(path: str | os.PathLike, scale: bool = False) -> np.ndarray:
  """Loads and validates a .npy file of windows (never unpickles objects); scale=True
  min-max scales each channel of each window to [0, 1] first."""
  path = os.fspath(path)
  try:
    windows = np.load(path, allow_pickle=False)
  except FileNotFoundError:
    raise
  except (ValueError, OSError, EOFError) as e:  # EOFError: an empty or cut file
    raise WindowsError(f'{path}: not a readable .npy array ({e or "no data"})') from e
  if scale and isinstance(windows, np.ndarray) and windows.dtype == np.float32:
    windows = minmax_scale(windows)
  return check_windows(windows, path)


@functools.lru_cache(maxsize=8)
def _forward(config: ModelConfig, spec: QuantSpec):
  return forward_lib.jit(config, spec)


def predict_windows(params, config: ModelConfig, windows: np.ndarray, batch_size: int = 256,
                    spec: QuantSpec = QuantSpec()) -> np.ndarray:
  """Model outputs (N, 2) float32, [DBP, SBP] mmHg, for validated windows.

  `spec` says how params run (float32, or a quantized model's mode; a model directory's
  metadata gives it: QuantSpec.from_metadata). Batches are padded to `batch_size` so one
  compiled program serves every batch.
  """
  windows = check_windows(windows)
  forward = _forward(config, spec)
  params = jax.tree.map(jnp.asarray, params)
  return in_batches(lambda batch: forward(params, batch), windows, batch_size,
                    fixed=windows.shape[0] > batch_size)


def in_batches(forward, windows: np.ndarray, batch_size: int, fixed: bool) -> np.ndarray:
  """forward((B, 2, 1250)) -> (B, 2) over `windows` in batches of `batch_size`: (N, 2).

  fixed: pad a short last batch with zero windows, so that every call has one shape (one
  compiled program; a LiteRT file's fixed batch)."""
  outputs = []
  for start in range(0, windows.shape[0], batch_size):
    batch = windows[start:start + batch_size]
    size = batch.shape[0]
    if fixed and size < batch_size:
      batch = np.concatenate([batch, np.zeros((batch_size - size,) + WINDOW_SHAPE, np.float32)])
    outputs.append(np.asarray(forward(batch))[:size])
  return np.concatenate(outputs)


def write_predictions_csv(path: str | os.PathLike, predictions: np.ndarray) -> None:
  """Writes `sbp_mmhg,dbp_mmhg` rows (9 significant digits) for (N, 2) model outputs."""
  named = model_lib.named_outputs(predictions)
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(CSV_COLUMNS)
    for row in zip(*(named[c] for c in CSV_COLUMNS)):
      writer.writerow([f'{v:.9g}' for v in row])


RECORD_CSV_COLUMNS = ('record', 'start_s', 'sbp_mmhg', 'dbp_mmhg', 'quality')


def read_any_record(path: str) -> Record:
  """A .vital file (VitalDB track names) or a WFDB record (path with or without .hea)."""
  if path.endswith('.vital'):
    return vitaldb_files.read_vital(path)
  return mimic3.read_record(path.removesuffix('.hea'))


def model_predictor(params, config: ModelConfig, batch_size: int = 256,
                    spec: QuantSpec = QuantSpec()):
  """predict_windows of a model's params as a function of the windows alone (what
  predict_record takes; litert.load_predictor gives one for a LiteRT file)."""
  return functools.partial(predict_windows, params, config, batch_size=batch_size, spec=spec)


def predict_record(predict, path: str) -> list[dict]:
  """One row per 10-s window of a record: start_s, SBP and DBP (mmHg; empty where the
  ECG or PPG has a gap) and 'quality': 'accepted' or the quality rule it failed.

  predict: (N, 2, 1250) windows -> (N, 2) [DBP, SBP] (model_predictor, or a LiteRT file's).
  """
  record = read_any_record(path)
  windows = list(windows_of(record))
  usable = [i for i, w in enumerate(windows) if w.signals is not None]
  bp = {}
  if usable:
    out = model_lib.named_outputs(predict(np.stack([windows[i].signals for i in usable])))
    bp = {i: (out['sbp_mmhg'][k], out['dbp_mmhg'][k]) for k, i in enumerate(usable)}
  return [{'record': record.record, 'start_s': f'{w.start_s:.3f}',
           'sbp_mmhg': f'{bp[i][0]:.9g}' if i in bp else '',
           'dbp_mmhg': f'{bp[i][1]:.9g}' if i in bp else '',
           'quality': w.reject or 'accepted'} for i, w in enumerate(windows)]


def write_record_csv(path: str | os.PathLike, rows: list[dict]) -> None:
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, RECORD_CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
