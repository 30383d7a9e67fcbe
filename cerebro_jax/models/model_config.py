"""The CEReBrO model configuration: sizes, attention type, compute dtype.

A `ModelConfig` is a frozen dataclass so that it can be a static field of a Flax module,
be written into checkpoints as JSON (`to_dict`) and read back (`from_dict`) without any
tool needing a size flag.
"""

from __future__ import annotations

import dataclasses
from typing import Any

# Embedding width D, number of blocks and heads for each published size
# (head dim = D / heads, MLP hidden = 4 D). See ../shared/spec/cerebro.md.
SIZES: dict[str, dict[str, int]] = {
    'small': {'embed_dim': 192, 'depth': 8, 'num_heads': 12},
    'base': {'embed_dim': 576, 'depth': 10, 'num_heads': 12},
    'large': {'embed_dim': 768, 'depth': 12, 'num_heads': 12},
}

ATTENTION_TYPES = ('alternating', 'full')
# 'bp': the blood-pressure head (the fine-tuned model); 'reconstruction': the masked-patch
# pre-training decoder (the pre-trained model, see pretrain.py).
HEADS = ('bp', 'reconstruction')
DTYPES = ('float32', 'bfloat16')


class ConfigError(ValueError):
  """A model configuration that cannot describe a CEReBrO model."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyper-parameters of a CEReBrO encoder with its head (BP or pre-training decoder).

  Attributes:
    size: 'small', 'base', 'large' or 'custom' (informational; the numbers rule).
    embed_dim: token width D.
    depth: number of transformer blocks.
    num_heads: attention heads per block (D must divide evenly).
    mlp_ratio: MLP hidden width as a multiple of D.
    patch_size: samples per patch (64 samples = 0.512 s at 125 Hz).
    max_channels: rows of the learned channel table (at most this many channels).
    max_patches: rows of the learned patch-position table (at most this many patches).
    attention_type: 'alternating' (even blocks across channels, odd blocks across
      time) or 'full' (every block over all C*P tokens).
    drop_path_rate: stochastic-depth rate of every block during training.
    dtype: compute dtype; parameters always stay float32.
    head: 'bp' (CerebroBP: [DBP, SBP] in mmHg) or 'reconstruction' (CerebroPretrain:
      every patch's samples, the pre-training objective's decoder).
  """

  size: str = 'small'
  embed_dim: int = 192
  depth: int = 8
  num_heads: int = 12
  mlp_ratio: int = 4
  patch_size: int = 64
  max_channels: int = 64
  max_patches: int = 100
  attention_type: str = 'alternating'
  drop_path_rate: float = 0.2
  dtype: str = 'float32'
  head: str = 'bp'

  def __post_init__(self):
    if self.embed_dim <= 0 or self.embed_dim % 2:
      raise ConfigError(f'embed_dim must be a positive even number, got {self.embed_dim}')
    if self.embed_dim % self.num_heads:
      raise ConfigError(
          f'embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}')
    if self.depth < 1:
      raise ConfigError(f'depth must be at least 1, got {self.depth}')
    if self.attention_type not in ATTENTION_TYPES:
      raise ConfigError(
          f'attention_type must be one of {ATTENTION_TYPES}, got {self.attention_type!r}')
    if self.dtype not in DTYPES:
      raise ConfigError(f'dtype must be one of {DTYPES}, got {self.dtype!r}')
    if self.head not in HEADS:
      raise ConfigError(f'head must be one of {HEADS}, got {self.head!r}')
    if not 0.0 <= self.drop_path_rate < 1.0:
      raise ConfigError(f'drop_path_rate must be in [0, 1), got {self.drop_path_rate}')

  @property
  def head_dim(self) -> int:
    return self.embed_dim // self.num_heads

  @property
  def mlp_dim(self) -> int:
    return self.embed_dim * self.mlp_ratio

  @classmethod
  def from_size(cls, size: str, **overrides: Any) -> 'ModelConfig':
    """The published configuration of `size`, with any field overridden."""
    if size not in SIZES:
      raise ConfigError(f'unknown model size {size!r}; expected one of {sorted(SIZES)}')
    return cls(size=size, **{**SIZES[size], **overrides})

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> 'ModelConfig':
    """Inverse of `to_dict`; unknown fields are an error, not silently dropped."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ConfigError(f'unknown model configuration fields: {unknown}')
    return cls(**values)
