"""Reading tensors from PyTorch checkpoint files without executing anything in them.

`.safetensors` files are read with safetensors. `.ckpt` / `.pt` / `.pth` files are read
with `torch.load(weights_only=True)`: torch's restricted unpickler, which builds only
tensors and plain containers. PyTorch Lightning checkpoints often carry objects that
unpickler refuses (an `argparse.Namespace` in `hyper_parameters`, say); for those the
named globals are replaced by inert placeholder classes defined here, so the file still
loads and none of its code runs.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from typing import Any

import numpy as np


class CheckpointReadError(ValueError):
  """A checkpoint file that cannot be read, with the file named in the message."""


def _placeholder_class(qualified_name: str) -> type:
  """An inert stand-in for `qualified_name` that only records what it was given."""
  module, _, name = qualified_name.rpartition('.')

  def __init__(self, *args, **kwargs):
    self.args, self.kwargs = args, kwargs

  def __setstate__(self, state):
    self.state = state

  return type(name, (), {'__module__': module, '__qualname__': name, '__init__': __init__,
                         '__setstate__': __setstate__,
                         '__repr__': lambda self: f'<placeholder for {qualified_name}>'})


def _import_torch():
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise CheckpointReadError(
        'PyTorch .ckpt/.pt files need torch to read or write: pip install "cerebro-bp[torch]" '
        '(or convert the checkpoint to .safetensors elsewhere)') from e
  return torch


def _torch_load(path: str) -> Any:
  torch = _import_torch()
  try:
    return torch.load(path, map_location='cpu', weights_only=True)
  except pickle.UnpicklingError:
    pass  # Unknown globals: retry below with placeholders for exactly those.
  except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
    raise CheckpointReadError(f'{path}: not a readable PyTorch checkpoint ({e})') from e
  names = []
  try:
    names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    stubs = [(_placeholder_class(name), name) for name in names]
    with torch.serialization.safe_globals(stubs):
      return torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # any failure here means the file cannot be read safely
    raise CheckpointReadError(
        f'{path}: cannot be read safely (it references {", ".join(names) or "unknown objects"}); '
        'cerebro-bp never unpickles code from checkpoints: save the tensors with '
        'torch.save(model.state_dict()) or as .safetensors') from e


def _to_numpy(value: Any) -> np.ndarray:
  """A torch tensor as a float32 numpy array (half precision is widened)."""
  return value.detach().to('cpu').float().numpy() if value.is_floating_point() else (
      value.detach().to('cpu').numpy())


def _find_state_dict(obj: Any, path: str) -> tuple[dict[str, Any], str]:
  """The tensor dictionary inside a loaded checkpoint, and the format's name."""
  if not isinstance(obj, dict):
    raise CheckpointReadError(f'{path}: holds a {type(obj).__name__}, not a dict of tensors')
  if 'state_dict' in obj and isinstance(obj['state_dict'], dict):
    return obj['state_dict'], 'lightning'
  if 'model_state_dict' in obj and isinstance(obj['model_state_dict'], dict):
    return obj['model_state_dict'], 'fine-tuned'
  if obj and all(hasattr(v, 'shape') for v in obj.values()):
    return obj, 'state-dict'
  raise CheckpointReadError(
      f'{path}: no state dict found; expected a "state_dict" (Lightning) or '
      f'"model_state_dict" (fine-tuned) entry, got top-level keys {sorted(obj)[:10]}')


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], str]:
  """Reads every tensor of a checkpoint file.

  Returns:
    (state dict of numpy arrays, floating tensors as float32; format name: one of
    'safetensors', 'lightning', 'fine-tuned', 'state-dict').
  Raises:
    FileNotFoundError, CheckpointReadError (naming the file and the problem).
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'checkpoint not found: {path}')
  if path.endswith('.safetensors'):
    from safetensors import SafetensorError, safe_open  # pylint: disable=import-outside-toplevel
    try:
      with safe_open(path, framework='np') as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, TypeError, ValueError) as e:
      raise CheckpointReadError(f'{path}: not a readable .safetensors file ({e})') from e
    return {k: v.astype(np.float32) if v.dtype.kind == 'f' else v
            for k, v in tensors.items()}, 'safetensors'

  state_dict, fmt = _find_state_dict(_torch_load(path), path)
  arrays, not_tensors = {}, []
  for key, value in state_dict.items():
    if hasattr(value, 'detach'):
      arrays[key] = _to_numpy(value)
    else:
      not_tensors.append(key)
  if not_tensors:
    raise CheckpointReadError(f'{path}: state dict entries that are not tensors: {not_tensors}')
  return arrays, fmt


def write_state_dict(state: dict[str, np.ndarray], path: str | os.PathLike,
                     entry: str = 'model_state_dict') -> None:
  """Writes tensors (name -> numpy array) as the original's files: `.safetensors` as they
  are, `.ckpt` as torch.save({entry: ...}) (needs torch): 'model_state_dict' for a
  fine-tuned model, 'state_dict' for a Lightning pre-trained one."""
  path = os.fspath(path)
  if path.endswith('.safetensors'):
    from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
    save_file(state, path)
    return
  torch = _import_torch()
  torch.save({entry: {k: torch.from_numpy(np.array(v)) for k, v in state.items()}}, path)
