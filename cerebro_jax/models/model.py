"""CEReBrO encoder and the blood-pressure head in Flax Linen.

Shapes: B batch, C channels, T samples per channel, P = T // patch_size patches per
channel, D embedding width, H heads. Tokens are kept on a (B, C, P, D) grid; flattening
it gives the channel-major order of the original model (token n = c * P + p).

Parameter tree (names mirror the PyTorch state dict, see convert.py):
  encoder/{mask_token, pad_token, channel_encoding, patch_encoding, patch_embed,
           blocks_{i}/{norm1, attn/{qkv, proj}, norm2, mlp/{fc1, fc2}}, norm}
  head             (CerebroBP, config.head == 'bp')
  decoder_pred     (CerebroPretrain, config.head == 'reconstruction')
"""

from __future__ import annotations

import functools

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cerebro_jax.models import gelu, row_matmul
from cerebro_jax.models.model_config import ModelConfig

# Order of the model's two outputs, as in the original BP model. Everything user-facing
# goes through `named_outputs`; nothing else should index the last axis by position.
OUTPUT_COLUMNS = ('dbp_mmhg', 'sbp_mmhg')

LAYER_NORM_EPS = 1e-5  # PyTorch's default; Flax's is 1e-6.


def _truncated_normal_002(key, shape, dtype=jnp.float32):
  """Normal with std 0.02 cut at +-0.02, as the original initialises its tables."""
  return 0.02 * jax.random.truncated_normal(key, -1.0, 1.0, shape, dtype)


def _xavier_uniform(scale: float = 1.0):
  base = nn.initializers.xavier_uniform()
  if scale == 1.0:
    return base
  return lambda key, shape, dtype=jnp.float32: base(key, shape, dtype) * scale


def _dense(features: int, name: str, dtype: Any, scale: float = 1.0) -> nn.Dense:
  return nn.Dense(features, name=name, dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=_xavier_uniform(scale), bias_init=nn.initializers.zeros,
                  dot_general=row_matmul.rows_dot)


def _layer_norm(name: str, dtype: Any) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=LAYER_NORM_EPS, name=name, dtype=dtype, param_dtype=jnp.float32)


class Attention(nn.Module):
  """Multi-head self-attention over the second-to-last axis.

  x: (..., L, D). key_mask: None or bool broadcastable to (..., L); False keys get
  -inf logits, and a query whose keys are all False gets a zero output.

  The projections compute in `dtype`; the core between them (q k^T, softmax, weights v)
  in float32 whatever `dtype` is. In bfloat16 on an NVIDIA H200 (jax 0.11.2) XLA sent
  the core's batched matmuls with CEReBrO small's 16-wide heads to cuBLAS kernels that
  took 4.4 of the train step's 7.6 ms of kernels at batch 256; with a float32 core the
  small step ran 1.97x (batch 256) and 2.86x (batch 4096) faster, base and large (48-
  and 64-wide heads) 5 % slower (docs/benchmarks.md). A float32 model is unchanged.
  """

  num_heads: int
  dtype: Any
  proj_scale: float

  @nn.compact
  def __call__(self, x: jax.Array, key_mask: jax.Array | None) -> jax.Array:
    *lead, length, dim = x.shape
    head_dim = dim // self.num_heads
    qkv = _dense(3 * dim, 'qkv', self.dtype)(x)
    qkv = qkv.reshape(*lead, length, 3, self.num_heads, head_dim).astype(jnp.float32)
    q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
    q = q * head_dim**-0.5
    logits = jnp.einsum('...qhd,...khd->...hqk', q, k)
    if key_mask is None:
      weights = jax.nn.softmax(logits, axis=-1)
    else:
      mask = key_mask[..., None, None, :]
      logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
      weights = jax.nn.softmax(logits, axis=-1) * mask
    out = jnp.einsum('...hqk,...khd->...qhd', weights, v).astype(self.dtype)
    out = out.reshape(*lead, length, dim)
    return _dense(dim, 'proj', self.dtype, self.proj_scale)(out)


class Mlp(nn.Module):
  """Linear(D, 4D) -> exact GELU -> Linear(4D, D) on (..., D)."""

  hidden: int
  dtype: Any
  fc2_scale: float

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = gelu.gelu(_dense(self.hidden, 'fc1', self.dtype)(x))
    return _dense(x.shape[-1], 'fc2', self.dtype, self.fc2_scale)(y)


def attention_view(x: jax.Array, channel_mask: jax.Array, mode: str):
  """Rearranges the (B, C, P, D) grid into attention groups and their key mask.

  Returns (tokens, key_mask, undo) where undo maps the attention output back.
  """
  batch, channels, patches, dim = x.shape
  if mode == 'channels':  # at a fixed patch position p: groups (B, P), length C
    undo = lambda y: jnp.swapaxes(y, 1, 2)
    return jnp.swapaxes(x, 1, 2), channel_mask[:, None, :], undo
  if mode == 'time':  # within one channel: groups (B, C), length P
    return x, channel_mask[:, :, None], lambda y: y
  # full: one group of all C*P tokens, channel-major
  undo = lambda y: y.reshape(batch, channels, patches, dim)
  key_mask = jnp.repeat(channel_mask, patches, axis=1)
  return x.reshape(batch, channels * patches, dim), key_mask, undo


class Block(nn.Module):
  """Pre-norm transformer block on the (B, C, P, D) token grid.

  mode: 'channels', 'time' or 'full' (which tokens attend to each other).
  keep: None (no drop path) or bool (2, B), this block's rows of drop_path_keep: sample b
  keeps the attention branch where keep[0, b] and the MLP branch where keep[1, b].
  """

  config: ModelConfig
  index: int
  mode: str

  def _drop_path(self, y: jax.Array, keep: jax.Array | None, branch: int) -> jax.Array:
    if keep is None:
      return y
    rate = self.config.drop_path_rate
    return jnp.where(keep[branch, :, None, None, None], y / (1.0 - rate), 0).astype(y.dtype)

  @nn.compact
  def __call__(self, x, channel_mask, keep: jax.Array | None):
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    depth_scale = 1.0 / math.sqrt(2.0 * (self.index + 1))
    tokens, key_mask, undo = attention_view(
        _layer_norm('norm1', dtype)(x), channel_mask, self.mode)
    attended = Attention(cfg.num_heads, dtype, depth_scale, name='attn')(tokens, key_mask)
    x = x + self._drop_path(undo(attended), keep, 0)
    mlp = Mlp(cfg.mlp_dim, dtype, depth_scale, name='mlp')
    return x + self._drop_path(mlp(_layer_norm('norm2', dtype)(x)), keep, 1)


def drop_path_keep(key: jax.Array, rate: float, depth: int, batch: int) -> jax.Array:
  """Drop path's draws for one forward pass in training: bool (depth, 2, batch), True
  where sample b keeps branch j (0 attention, 1 MLP) of block i, each with probability
  1 - rate and independently, as the original's DropPath draws one number per sample and
  branch. Drawn in one call instead of one per branch: on a CPU each draw is a loop of
  small XLA operations (CEReBrO small's step in 2 parts ran 67 such loops, now 7; its
  time did not measurably change), on an NVIDIA H200 the small step at batch 256 took
  1-2 % less time (docs/benchmarks.md)."""
  return jax.random.bernoulli(key, 1.0 - rate, (depth, 2, batch))


def block_mode(config: ModelConfig, index: int) -> str:
  """Which tokens block `index` attends over: 'channels', 'time' or 'full'."""
  if config.attention_type == 'full':
    return 'full'
  return 'channels' if index % 2 == 0 else 'time'


class Encoder(nn.Module):
  """CEReBrO encoder: (B, C, T) signals -> (B, C, P, D) tokens after the final norm.

  channel_mask: None (all channels real) or bool (B, C), False for padded channels,
  whose tokens become the learned pad token and are never attended to.
  token_mask: None, or bool (B, C, P) for masked-patch pre-training: True tokens are
  replaced by the learned mask token. The two original code paths order the steps
  differently, and each is reproduced: the fine-tuned model adds the channel and patch
  encodings and then puts the pad token on padded channels; pre-training puts the pad
  token, then the mask token, then adds the encodings to every token.
  """

  config: ModelConfig

  @nn.compact
  def __call__(self, x: jax.Array, channel_mask: jax.Array | None = None,
               token_mask: jax.Array | None = None, *,
               deterministic: bool = True) -> jax.Array:
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    batch, channels, samples = x.shape
    patches = samples // cfg.patch_size
    if not 1 <= patches <= cfg.max_patches:
      raise ValueError(f'{samples} samples per channel give {patches} patches of '
                       f'{cfg.patch_size}; the model takes 1 to {cfg.max_patches}')
    if channels > cfg.max_channels:
      raise ValueError(f'{channels} channels; the model takes at most {cfg.max_channels}')

    half = cfg.embed_dim // 2
    param = lambda name, shape: self.param(name, _truncated_normal_002, shape, jnp.float32)
    # Declared in the original's order.
    mask_token = param('mask_token', (1, 1, cfg.embed_dim))
    pad_token = param('pad_token', (1, 1, cfg.embed_dim))
    channel_table = param('channel_encoding', (1, cfg.max_channels, half))
    patch_table = param('patch_encoding', (1, cfg.max_patches, half))

    windows = x[..., :patches * cfg.patch_size].reshape(batch, channels, patches,
                                                        cfg.patch_size)
    tokens = _dense(cfg.embed_dim, 'patch_embed', dtype)(windows)
    encoding = jnp.concatenate([
        jnp.broadcast_to(channel_table[0, :channels, None, :], (channels, patches, half)),
        jnp.broadcast_to(patch_table[0, None, :patches, :], (channels, patches, half)),
    ], axis=-1).astype(dtype)
    padded = None if channel_mask is None else ~jnp.asarray(channel_mask, bool)[:, :, None, None]
    put = lambda where, token, t: jnp.where(where, token[0, 0].astype(dtype), t)
    if token_mask is None:
      tokens = tokens + encoding
      if padded is not None:
        tokens = put(padded, pad_token, tokens)
    else:
      if padded is not None:
        tokens = put(padded, pad_token, tokens)
      tokens = put(jnp.asarray(token_mask, bool)[..., None], mask_token, tokens) + encoding
    channel_mask = (jnp.ones((batch, channels), bool) if channel_mask is None
                    else jnp.asarray(channel_mask, bool))

    keep = None
    if not deterministic and cfg.drop_path_rate > 0.0:
      keep = drop_path_keep(self.make_rng('dropout'), cfg.drop_path_rate, cfg.depth, batch)
    for i in range(cfg.depth):
      tokens = Block(cfg, i, block_mode(cfg, i), name=f'blocks_{i}')(
          tokens, channel_mask, None if keep is None else keep[i])
    return _layer_norm('norm', dtype)(tokens)


class CerebroBP(nn.Module):
  """CEReBrO with the BP head: (B, C, T) -> (B, 2) float32 [DBP, SBP] in mmHg.

  For the BP model C = 2 (ECG, PPG) and T = 1250 samples at 125 Hz.
  """

  config: ModelConfig

  @nn.compact
  def __call__(self, x: jax.Array, channel_mask: jax.Array | None = None, *,
               deterministic: bool = True) -> jax.Array:
    tokens = Encoder(self.config, name='encoder')(x, channel_mask,
                                                  deterministic=deterministic)
    pooled = tokens.astype(jnp.float32).mean(axis=(1, 2))  # mean over all C*P tokens
    head = nn.Dense(2, name='head', dtype=jnp.dtype(self.config.dtype),
                    param_dtype=jnp.float32, kernel_init=_truncated_normal_002,
                    bias_init=nn.initializers.zeros)
    return gelu.gelu(head(pooled)).astype(jnp.float32)


class CerebroPretrain(nn.Module):
  """CEReBrO with the masked-patch pre-training decoder (config.head == 'reconstruction').

  (B, C, T) signals, channel_mask (B, C) or None, token_mask (B, C, P) bool (True =
  masked) -> (B, C, P, patch_size) float32: every token's reconstruction of its patch's
  samples, through one linear layer `decoder_pred` (D -> patch_size).
  """

  config: ModelConfig

  @nn.compact
  def __call__(self, x: jax.Array, channel_mask: jax.Array | None, token_mask: jax.Array, *,
               deterministic: bool = True) -> jax.Array:
    tokens = Encoder(self.config, name='encoder')(x, channel_mask, token_mask,
                                                  deterministic=deterministic)
    decoder = _dense(self.config.patch_size, 'decoder_pred', jnp.dtype(self.config.dtype))
    return decoder(tokens).astype(jnp.float32)


def init_params(config: ModelConfig, rng: jax.Array, channels: int = 2,
                samples: int = 1250) -> dict:
  """Freshly initialised parameters (a plain nested dict) of CerebroBP(config), or of
  CerebroPretrain(config) when config.head is 'reconstruction'."""
  return _jitted_init(config, channels, samples)(rng)


def with_fresh_head(params: dict, config: ModelConfig, rng: jax.Array, channels: int = 2,
                    samples: int = 1250) -> dict:
  """`params`' encoder under a freshly initialised head of `config` (the BP head, or the
  pre-training decoder): how a model of one kind starts training as the other."""
  fresh = init_params(config, rng, channels, samples)
  return {**{k: v for k, v in fresh.items() if k != 'encoder'}, 'encoder': params['encoder']}


@functools.lru_cache(maxsize=16)
def _jitted_init(config: ModelConfig, channels: int, samples: int):
  """One compiled initialiser per architecture: twice as fast as running the model's
  initialisation op by op, and free from the second call on."""
  dummy = np.zeros((1, channels, samples), np.float32)  # numpy: safe under any trace
  if config.head == 'reconstruction':
    patches = np.zeros((1, channels, samples // config.patch_size), bool)
    return jax.jit(lambda rng: CerebroPretrain(config).init(rng, dummy, None, patches)['params'])
  return jax.jit(lambda rng: CerebroBP(config).init(rng, dummy)['params'])


def count_params(params) -> int:
  return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(params)))


def named_outputs(predictions) -> dict[str, np.ndarray]:
  """(N, 2) model outputs -> {'sbp_mmhg': (N,), 'dbp_mmhg': (N,)}."""
  predictions = np.asarray(predictions)
  return {name: predictions[:, i] for i, name in enumerate(OUTPUT_COLUMNS)}
