"""Model checkpoints: an orbax checkpoint of the parameters with the config recorded.

Layout of a model directory (one orbax composite checkpoint):
  params/        the CerebroBP parameter pytree (float32, or INT8 kernels + scales for a
                 quantized model: see quantization.py)
  model_config/  ModelConfig.to_dict() as JSON
  metadata/      free-form JSON (where the weights came from, conversion report, the
                 'quantization' spec of a quantized model, ...)
Every tool loads a model from the directory alone: no size flag is needed.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from cerebro_jax.models import model as model_lib
from cerebro_jax.models.model_config import ConfigError, ModelConfig
from cerebro_jax.quant import quantization


class ModelCheckpointError(ValueError):
  """A model directory that cannot be loaded, with the directory named."""


def save_model(directory: str | os.PathLike, params, config: ModelConfig,
               metadata: dict[str, Any] | None = None, *, overwrite: bool = False) -> str:
  """Writes params + config (+ metadata) to `directory`; returns its absolute path."""
  directory = os.path.abspath(os.fspath(directory))
  if os.path.exists(directory) and not overwrite:
    raise FileExistsError(f'{directory} already exists; choose another output or overwrite')
  check_params(params, config, directory)
  checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
  checkpointer.save(directory, model_args(jax.tree.map(np.asarray, params), config, metadata),
                    force=overwrite)
  return directory


def model_args(params, config: ModelConfig, metadata: dict[str, Any] | None = None):
  """The orbax items of a model directory, for a Checkpointer or a CheckpointManager step
  (training's best checkpoints are model directories too)."""
  return ocp.args.Composite(params=ocp.args.StandardSave(params),
                            model_config=ocp.args.JsonSave(config.to_dict()),
                            metadata=ocp.args.JsonSave(metadata or {}))


_HEAD_ADVICE = {
    'bp': 'a pre-trained model reconstructs patches and estimates no blood pressure: '
          'fine-tune it first (python -m cerebro_jax.main --config.init_from=DIR)',
    'reconstruction': 'a BP model has no pre-training decoder',
}


def load_model(directory: str | os.PathLike,
               head: str | None = None) -> tuple[dict, ModelConfig, dict[str, Any]]:
  """Reads a directory written by `save_model`: (params, config, metadata).

  head: 'bp' or 'reconstruction' to refuse, with a ModelCheckpointError, a model of the
  other kind; None accepts both.
  """
  directory = os.path.abspath(os.fspath(directory))
  for part in ('params', 'model_config'):
    if not os.path.isdir(os.path.join(directory, part)):
      raise ModelCheckpointError(
          f'{directory}: not a cerebro-bp model checkpoint (no {part}/ inside); '
          'create one with scripts/convert_weights.py or by training')
  checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
  try:
    meta = checkpointer.restore(directory, ocp.args.Composite(
        model_config=ocp.args.JsonRestore(), metadata=ocp.args.JsonRestore()))
    config = ModelConfig.from_dict(meta.model_config)
    restored = checkpointer.restore(directory, ocp.args.Composite(
        params=ocp.args.StandardRestore()))
  except ConfigError as e:
    raise ModelCheckpointError(f'{directory}: bad model configuration: {e}') from e
  except (ValueError, OSError, KeyError) as e:
    raise ModelCheckpointError(f'{directory}: cannot restore the checkpoint: {e}') from e
  if head is not None and config.head != head:
    raise ModelCheckpointError(f'{directory}: a model with the {config.head!r} head where a '
                               f'{head!r} model is needed; {_HEAD_ADVICE[head]}')
  params = jax.tree.map(np.asarray, restored.params)
  metadata = dict(meta.metadata or {})
  check_params(params, config, directory)
  try:
    problems = quantization.spec_problems(params, quantization.QuantSpec.from_metadata(metadata))
  except (TypeError, ValueError) as e:
    raise ModelCheckpointError(f'{directory}: bad quantization metadata: {e}') from e
  if problems:
    raise ModelCheckpointError(f'{directory}: ' + '; '.join(problems))
  return params, config, metadata


def check_params(params, config: ModelConfig, where: str = 'params') -> None:
  """Raises ModelCheckpointError naming every leaf that does not fit `config`.

  Quantized params are checked through their dequantized (float) layout.
  """
  if quantization.is_quantized(params):
    params = quantization.dequantize_params(params)
  expected = traverse_util.flatten_dict(
      jax.eval_shape(lambda: model_lib.init_params(config, jax.random.PRNGKey(0))))
  found = traverse_util.flatten_dict(params)
  problems = [f'missing {"/".join(p)}' for p in expected if p not in found]
  problems += [f'unexpected {"/".join(p)}' for p in found if p not in expected]
  problems += [f'{"/".join(p)}: shape {tuple(found[p].shape)}, expected {expected[p].shape}'
               for p in expected if p in found and tuple(found[p].shape) != expected[p].shape]
  if problems:
    raise ModelCheckpointError(f'{where}: parameters do not fit {config}: ' + '; '.join(problems))
