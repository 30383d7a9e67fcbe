"""PyTorch CEReBrO state dict -> Flax parameter pytree, with a strict key report.

The original loader used `load_state_dict(strict=False)`, which silently ignores missing
and extra keys. Here every expected tensor must be present with the expected shape, and
every tensor in the file must be used, except for what the caller allows:
- a pre-trained encoder checkpoint has no BP head: the head is initialised fresh;
- it carries the pre-training decoder (`model_head.decoder_pred.*`): skipped.
Both are stated in the report. Anything else fails with the keys named. A
ModelConfig with head 'reconstruction' maps the decoder instead of the BP head (a
pre-trained model, nothing skipped). `export_state_dict` is the inverse, in the layout
the original code saved each model in (`layout_of`).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
from typing import Callable

import jax
import numpy as np
from flax import traverse_util

from cerebro_jax.models import model as model_lib
from cerebro_jax.models.model_config import ModelConfig
from cerebro_jax.models.torch_files import read_state_dict

# A key every CEReBrO checkpoint has; what stands before it is the file's prefix
# ('' for Lightning, 'module.' for DataParallel fine-tuned files).
_ANCHOR_KEY = 'model.patch_embed.patch_embed.proj.weight'
HEAD_KEYS = ('model_head.mlp.0.fc.weight', 'model_head.mlp.0.fc.bias')
PRETRAINING_DECODER_KEYS = ('model_head.decoder_pred.weight', 'model_head.decoder_pred.bias')


class CheckpointMismatchError(ValueError):
  """The checkpoint's tensors do not fit the model; the message names the keys."""


@dataclasses.dataclass(frozen=True)
class TensorMapping:
  """Where one PyTorch tensor goes in the Flax tree, and how it is reshaped."""
  torch_key: str
  flax_path: tuple[str, ...]
  torch_shape: tuple[int, ...]
  to_flax: Callable[[np.ndarray], np.ndarray]


def _same(w):
  return w


def _linear_kernel(w):  # torch Linear computes x @ W.T + b
  return w.T


def _patch_kernel(w):  # Conv2d kernel (D, 1, 1, 64) -> Dense kernel (64, D)
  return w.reshape(w.shape[0], -1).T


def tensor_mappings(config: ModelConfig) -> list[TensorMapping]:
  """Every tensor of the model's state dict (without prefix), in order: the fine-tuned
  BP model's, or with config.head 'reconstruction' the pre-trained model's."""
  d, h = config.embed_dim, config.mlp_dim
  enc = ('encoder',)
  maps = [
      TensorMapping('model.mask_token', enc + ('mask_token',), (1, 1, d), _same),
      TensorMapping('model.pad_token', enc + ('pad_token',), (1, 1, d), _same),
      TensorMapping('model.channel_encoding', enc + ('channel_encoding',),
                    (1, config.max_channels, d // 2), _same),
      TensorMapping('model.patch_encoding', enc + ('patch_encoding',),
                    (1, config.max_patches, d // 2), _same),
      TensorMapping('model.patch_embed.patch_embed.proj.weight', enc + ('patch_embed', 'kernel'),
                    (d, 1, 1, config.patch_size), _patch_kernel),
      TensorMapping('model.patch_embed.patch_embed.proj.bias', enc + ('patch_embed', 'bias'),
                    (d,), _same),
  ]

  def linear(torch_name, flax_path, out_dim, in_dim):
    return [TensorMapping(f'{torch_name}.weight', flax_path + ('kernel',), (out_dim, in_dim),
                          _linear_kernel),
            TensorMapping(f'{torch_name}.bias', flax_path + ('bias',), (out_dim,), _same)]

  def norm(torch_name, flax_path):
    return [TensorMapping(f'{torch_name}.weight', flax_path + ('scale',), (d,), _same),
            TensorMapping(f'{torch_name}.bias', flax_path + ('bias',), (d,), _same)]

  for i in range(config.depth):
    t, f = f'model.blocks.{i}', enc + (f'blocks_{i}',)
    maps += norm(f'{t}.norm1', f + ('norm1',))
    maps += linear(f'{t}.attn.qkv', f + ('attn', 'qkv'), 3 * d, d)
    maps += linear(f'{t}.attn.proj', f + ('attn', 'proj'), d, d)
    maps += norm(f'{t}.norm2', f + ('norm2',))
    maps += linear(f'{t}.mlp.fc1', f + ('mlp', 'fc1'), h, d)
    maps += linear(f'{t}.mlp.fc2', f + ('mlp', 'fc2'), d, h)
  maps += norm('model.norm', enc + ('norm',))
  if config.head == 'reconstruction':
    maps += linear('model_head.decoder_pred', ('decoder_pred',), config.patch_size, d)
  else:
    maps += linear('model_head.mlp.0.fc', ('head',), 2, d)
  return maps


@dataclasses.dataclass
class ConversionReport:
  """What a conversion found. All key names are as in the file (prefix included)."""
  source: str
  source_format: str
  prefix: str
  converted: list[str]
  missing: list[str]
  unexpected: list[str]
  mis_shaped: list[tuple[str, tuple[int, ...], tuple[int, ...]]]  # key, expected, found
  non_finite: list[str]
  skipped: list[str] = dataclasses.field(default_factory=list)  # allowed unexpected keys
  initialised: list[str] = dataclasses.field(default_factory=list)  # allowed missing keys

  @property
  def is_encoder_only(self) -> bool:
    return any(k.endswith(HEAD_KEYS[0]) for k in self.initialised)

  @property
  def ok(self) -> bool:
    return not (self.missing or self.unexpected or self.mis_shaped or self.non_finite)

  def describe(self) -> str:
    lines = [f'{self.source} ({self.source_format} format, key prefix {self.prefix!r}): '
             f'{len(self.converted)} tensors converted']
    if self.skipped:
      lines.append(f'  skipped {len(self.skipped)} tensors not used by the BP model: '
                   + ', '.join(self.skipped))
    if self.initialised:
      lines.append(f'  initialised fresh (absent from the checkpoint): '
                   + ', '.join(self.initialised))
    for title, keys in (('missing', self.missing), ('unexpected', self.unexpected),
                        ('non-finite values in', self.non_finite)):
      if keys:
        lines.append(f'  {title} {len(keys)} keys: ' + ', '.join(keys))
    for key, expected, found in self.mis_shaped:
      lines.append(f'  mis-shaped {key}: expected {expected}, found {found}')
    return '\n'.join(lines)


def _find_prefix(keys: list[str], source: str) -> str:
  prefixes = sorted({k[:-len(_ANCHOR_KEY)] for k in keys if k.endswith(_ANCHOR_KEY)})
  if len(prefixes) != 1:
    found = 'none' if not prefixes else f'{len(prefixes)} ({prefixes})'
    raise CheckpointMismatchError(
        f'{source}: expected exactly one CEReBrO encoder (a key ending in {_ANCHOR_KEY!r}), '
        f'found {found}; first keys: {sorted(keys)[:8]}')
  return prefixes[0]


def _matches(key: str, patterns) -> bool:
  return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def convert_state_dict(state_dict: dict[str, np.ndarray], config: ModelConfig, *,
                       source: str = '<state dict>', source_format: str = 'state-dict',
                       rng: jax.Array | None = None, allow_missing=(),
                       allow_unexpected=()) -> tuple[dict, ConversionReport]:
  """Maps a PyTorch CEReBrO state dict onto the parameters of `config`'s model
  (CerebroBP, or CerebroPretrain for head 'reconstruction').

  Args:
    state_dict: tensor name -> numpy array, with any common prefix.
    config: the model the tensors must fit.
    rng: key for initialising allowed-missing tensors (the head of an encoder-only
      checkpoint); defaults to PRNGKey(0).
    allow_missing / allow_unexpected: fnmatch patterns over unprefixed key names that
      may be absent (initialised fresh) / present and unused. The BP head
      (`model_head.mlp.0.fc.*`, as a pair) and the pre-training decoder are always allowed.
  Returns:
    (params pytree of float32 numpy arrays, report).
  Raises:
    CheckpointMismatchError naming every missing, unexpected, mis-shaped or non-finite
    key that was not allowed.
  """
  prefix = _find_prefix(list(state_dict), source)
  unprefixed = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
  foreign = sorted(k for k in state_dict if not k.startswith(prefix))
  mappings = tensor_mappings(config)
  expected = {m.torch_key for m in mappings}

  absent = [m.torch_key for m in mappings if m.torch_key not in unprefixed]
  bp = config.head == 'bp'
  encoder_only = bp and set(HEAD_KEYS) <= set(absent)
  allowed_absent = [k for k in absent
                    if (encoder_only and k in HEAD_KEYS) or _matches(k, allow_missing)]
  extra = sorted(k for k in unprefixed if k not in expected)
  allowed_extra = [k for k in extra
                   if (bp and k in PRETRAINING_DECODER_KEYS) or _matches(k, allow_unexpected)]

  flat = traverse_util.flatten_dict(
      model_lib.init_params(config, jax.random.PRNGKey(0) if rng is None else rng))
  flat = {path: np.asarray(v) for path, v in flat.items()}
  converted, mis_shaped, non_finite = [], [], []
  for m in mappings:
    if m.torch_key not in unprefixed:
      continue
    value = unprefixed[m.torch_key]
    if tuple(value.shape) != m.torch_shape:
      mis_shaped.append((prefix + m.torch_key, m.torch_shape, tuple(value.shape)))
      continue
    if not np.all(np.isfinite(value)):
      non_finite.append(prefix + m.torch_key)
    flat[m.flax_path] = np.asarray(m.to_flax(value), np.float32)
    converted.append(prefix + m.torch_key)

  report = ConversionReport(
      source=source, source_format=source_format, prefix=prefix, converted=converted,
      missing=[prefix + k for k in absent if k not in allowed_absent],
      unexpected=foreign + [prefix + k for k in extra if k not in allowed_extra],
      mis_shaped=mis_shaped, non_finite=non_finite,
      skipped=[prefix + k for k in allowed_extra],
      initialised=[prefix + k for k in allowed_absent])
  if not report.ok:
    raise CheckpointMismatchError(
        f'checkpoint does not fit CEReBrO {config.size} (D={config.embed_dim}, '
        f'depth={config.depth}):\n{report.describe()}')
  return traverse_util.unflatten_dict(flat), report


@dataclasses.dataclass(frozen=True)
class Layout:
  """How the original code saved a model: the file's top-level entry and key prefix."""
  entry: str
  prefix: str
  name: str


FINE_TUNED = Layout('model_state_dict', 'module.', 'the fine-tuned layout (module.model.*, '
                    'module.model_head.*)')
LIGHTNING = Layout('state_dict', '', 'the Lightning pre-training layout (model.*, '
                   'model_head.decoder_pred.*)')


def layout_of(config: ModelConfig) -> Layout:
  """The fine-tuned BP model's layout (nn.DataParallel names), or a pre-trained model's
  (PyTorch Lightning's)."""
  return LIGHTNING if config.head == 'reconstruction' else FINE_TUNED


def export_state_dict(params, config: ModelConfig, prefix: str | None = None) -> dict:
  """Float `params` of `config`'s model -> the original's state dict (tensor name ->
  float32 numpy array in PyTorch's layout), every name with `prefix` (default:
  layout_of(config).prefix). The inverse of convert_state_dict."""
  prefix = layout_of(config).prefix if prefix is None else prefix
  flat = traverse_util.flatten_dict(params)
  state = {}
  for m in tensor_mappings(config):
    value = np.asarray(flat[m.flax_path], np.float32)
    # Each to_flax is the identity, a transpose, or a transpose of a reshape: undone by a
    # transpose (where it transposes) and the torch shape.
    back = value if m.to_flax is _same else value.T
    state[prefix + m.torch_key] = np.ascontiguousarray(back.reshape(m.torch_shape))
  return state


def convert_checkpoint(path: str | os.PathLike, config: ModelConfig,
                       **kwargs) -> tuple[dict, ConversionReport]:
  """Reads a `.ckpt` (Lightning or fine-tuned) or `.safetensors` file and converts it.

  Keyword arguments are those of `convert_state_dict`.
  """
  state_dict, fmt = read_state_dict(path)
  return convert_state_dict(state_dict, config, source=os.fspath(path), source_format=fmt,
                            **kwargs)
