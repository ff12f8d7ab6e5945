"""The Vision Transformer (Dosovitskiy et al., 2021) as Flax linen modules.

Module names equal the keys of the released checkpoints (`embedding`, `cls`,
`Transformer/posembed_input/pos_embedding`, `encoderblock_{i}`, `encoder_norm`,
`pre_logits`, `head`); inside a block we use the linen names (`LayerNorm_0`,
`MultiHeadDotProductAttention_1`, `LayerNorm_2`, `MlpBlock_3`), which the
released files also use, so a parameter tree and a checkpoint speak the same
names.

Options beyond the paper: bfloat16 compute (`dtype`) with float32 parameters,
rematerialisation (`remat_policy`), a scan-over-layers mode (`scan_layers`,
parameters stacked under `Transformer/encoderblock`), 2-D sin-cos position
embeddings, and padding of the token sequence for the cuDNN flash-attention
kernel (`attention_pad_multiple`).

Capturing attention: a model built with `capture_attention=True` computes the
softmax weights explicitly and sows them into the `intermediates` collection
as `.../MultiHeadDotProductAttention_1/attention_weights` ([batch, heads,
query, key], float32; with `scan_layers` one stacked array with a leading
layer axis); read them with `model.apply(..., mutable=['intermediates'])`.
The parameters are the same, so any checkpoint works; the default path is
unchanged (`jax.nn.dot_product_attention`, weights never materialised).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models import resnet

Dtype = Any
CLASSIFIERS = ('token', 'gap', 'unpooled', 'token_unpooled')
POSEMBS = ('learn', 'sincos2d')

# Named rematerialisation policies (jax.checkpoint_policies); 'none' = no remat.
REMAT_POLICIES = {
    'none': None,
    'full': jax.checkpoint_policies.nothing_saveable,
    'dots': jax.checkpoint_policies.checkpoint_dots,
    'dots_no_batch': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def sincos_2d_posemb(h: int, w: int, width: int, temperature: float = 10_000.
                     ) -> np.ndarray:
  """Fixed 2-D sin-cos position embedding of shape [1, h*w, width]."""
  if width % 4:
    raise ValueError(f'sincos2d position embedding needs a hidden size that is '
                     f'a multiple of 4, got {width}; use posemb="learn".')
  y, x = np.mgrid[:h, :w]
  omega = np.arange(width // 4) / (width // 4 - 1)
  omega = 1. / (temperature**omega)
  y = np.einsum('m,d->md', y.flatten(), omega)
  x = np.einsum('m,d->md', x.flatten(), omega)
  pe = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)
  return pe[None].astype(np.float32)


class AddPositionEmbs(nn.Module):
  """Adds learned position embeddings (`pos_embedding`, shape [1, N, D])."""
  posemb_init: Callable = nn.initializers.normal(stddev=0.02)

  @nn.compact
  def __call__(self, inputs):
    if inputs.ndim != 3:
      raise ValueError(f'AddPositionEmbs expects [batch, tokens, width], got '
                       f'shape {inputs.shape}.')
    shape = (1, inputs.shape[1], inputs.shape[2])
    pe = self.param('pos_embedding', self.posemb_init, shape)
    return inputs + pe.astype(inputs.dtype)


class MlpBlock(nn.Module):
  """Transformer MLP: Dense_0 -> GELU -> dropout -> Dense_1 -> dropout."""
  mlp_dim: int
  dtype: Dtype = jnp.float32
  dropout_rate: float = 0.0
  gelu_approximate: bool = True

  @nn.compact
  def __call__(self, inputs, *, deterministic: bool):
    dense = functools.partial(
        nn.Dense, dtype=self.dtype,
        kernel_init=nn.initializers.xavier_uniform(),
        bias_init=nn.initializers.normal(stddev=1e-6))
    x = dense(self.mlp_dim)(inputs)
    x = nn.gelu(x, approximate=self.gelu_approximate)
    x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=deterministic)
    x = dense(inputs.shape[-1])(x)
    return nn.Dropout(rate=self.dropout_rate)(x, deterministic=deterministic)


class MultiHeadDotProductAttention(nn.Module):
  """Self-attention with the released layout: query/key/value/out DenseGeneral.

  The attention itself goes through `jax.nn.dot_product_attention`, which picks
  cuDNN's fused kernel on GPU when `implementation='cudnn'`. `kv_length` masks
  padded key positions (the true sequence length before padding). With
  `capture_attention`, the weights are computed explicitly and sown into the
  `intermediates` collection as `attention_weights`.
  """
  num_heads: int
  dtype: Dtype = jnp.float32
  dropout_rate: float = 0.0
  implementation: Optional[str] = None
  capture_attention: bool = False

  @nn.compact
  def __call__(self, x, *, deterministic: bool, kv_length: Optional[int] = None):
    features = x.shape[-1]
    if features % self.num_heads:
      raise ValueError(f'hidden size {features} is not divisible by '
                       f'num_heads={self.num_heads}.')
    head_dim = features // self.num_heads
    proj = functools.partial(
        nn.DenseGeneral, features=(self.num_heads, head_dim), axis=-1,
        dtype=self.dtype, kernel_init=nn.initializers.xavier_uniform())
    q = proj(name='query')(x)
    k = proj(name='key')(x)
    v = proj(name='value')(x)
    batch, length = x.shape[:2]
    lengths = None
    if kv_length is not None and kv_length < length:
      lengths = jnp.full((batch,), kv_length, jnp.int32)
    if self.capture_attention or (self.dropout_rate > 0. and not deterministic):
      y = self._explicit_attention(q, k, v, kv_length, deterministic)
    else:
      y = jax.nn.dot_product_attention(
          q, k, v, key_value_seq_lengths=lengths,
          implementation=self.implementation)
    return nn.DenseGeneral(
        features, axis=(-2, -1), dtype=self.dtype,
        kernel_init=nn.initializers.xavier_uniform(), name='out')(y)

  def _explicit_attention(self, q, k, v, kv_length, deterministic):
    """Softmax attention with the weights in hand: for dropout or capture."""
    scale = q.shape[-1]**-0.5
    logits = jnp.einsum('bqhd,bkhd->bhqk', q * scale, k).astype(jnp.float32)
    if kv_length is not None and kv_length < k.shape[1]:
      valid = jnp.arange(k.shape[1]) < kv_length
      logits = jnp.where(valid[None, None, None, :], logits, -1e30)
    weights = jax.nn.softmax(logits)
    if self.capture_attention:
      self.sow('intermediates', 'attention_weights', weights)
    weights = weights.astype(self.dtype)
    if self.dropout_rate > 0. and not deterministic:
      weights = nn.Dropout(rate=self.dropout_rate, broadcast_dims=())(
          weights, deterministic=False)
    return jnp.einsum('bhqk,bkhd->bqhd', weights, v)


class Encoder1DBlock(nn.Module):
  """Pre-norm Transformer block: x + MHSA(LN(x)), then x + MLP(LN(x))."""
  mlp_dim: int
  num_heads: int
  dtype: Dtype = jnp.float32
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  gelu_approximate: bool = True
  attention_implementation: Optional[str] = None
  kv_length: Optional[int] = None
  capture_attention: bool = False

  @nn.compact
  def __call__(self, inputs, deterministic: bool):
    x = nn.LayerNorm(dtype=self.dtype, name='LayerNorm_0')(inputs)
    x = MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype=self.dtype,
        dropout_rate=self.attention_dropout_rate,
        implementation=self.attention_implementation,
        capture_attention=self.capture_attention,
        name='MultiHeadDotProductAttention_1')(
            x, deterministic=deterministic, kv_length=self.kv_length)
    x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=deterministic)
    x = x + inputs
    y = nn.LayerNorm(dtype=self.dtype, name='LayerNorm_2')(x)
    y = MlpBlock(mlp_dim=self.mlp_dim, dtype=self.dtype,
                 dropout_rate=self.dropout_rate,
                 gelu_approximate=self.gelu_approximate,
                 name='MlpBlock_3')(y, deterministic=deterministic)
    return x + y


class _ScanBlock(nn.Module):
  """Encoder1DBlock with the carry -> (carry, None) signature of nn.scan."""
  block_kwargs: dict
  deterministic: bool
  remat_policy: str = 'none'

  @nn.compact
  def __call__(self, x, _):
    block = Encoder1DBlock
    if self.remat_policy != 'none':
      block = nn.remat(block, policy=REMAT_POLICIES[self.remat_policy],
                       static_argnums=(2,))
    return block(**self.block_kwargs, name='block')(x, self.deterministic), None


class Encoder(nn.Module):
  """Position embeddings, `num_layers` blocks and the final `encoder_norm`."""
  num_layers: int
  mlp_dim: int
  num_heads: int
  dtype: Dtype = jnp.float32
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  gelu_approximate: bool = True
  posemb: str = 'learn'
  posemb_grid: Optional[Sequence[int]] = None  # (h, w), for sincos2d
  num_prefix_tokens: int = 0
  remat_policy: str = 'none'
  scan_layers: bool = False
  attention_implementation: Optional[str] = None
  attention_pad_multiple: Optional[int] = None
  capture_attention: bool = False

  @nn.compact
  def __call__(self, x, *, train: bool):
    if self.posemb == 'learn':
      x = AddPositionEmbs(name='posembed_input')(x)
    elif self.posemb == 'sincos2d':
      h, w = self.posemb_grid
      pe = sincos_2d_posemb(h, w, x.shape[-1])
      if self.num_prefix_tokens:
        pe = np.concatenate(
            [np.zeros((1, self.num_prefix_tokens, x.shape[-1]), np.float32), pe],
            axis=1)
      x = x + jnp.asarray(pe, x.dtype)
    else:
      raise ValueError(f'unknown posemb {self.posemb!r}; choose one of {POSEMBS}.')
    x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=not train)
    x = x.astype(self.dtype)

    length = x.shape[1]
    kv_length = None
    if self.attention_pad_multiple:
      padded = -(-length // self.attention_pad_multiple) * self.attention_pad_multiple
      if padded != length:
        x = jnp.pad(x, ((0, 0), (0, padded - length), (0, 0)))
        kv_length = length

    block_kwargs = dict(
        mlp_dim=self.mlp_dim, num_heads=self.num_heads, dtype=self.dtype,
        dropout_rate=self.dropout_rate,
        attention_dropout_rate=self.attention_dropout_rate,
        gelu_approximate=self.gelu_approximate,
        attention_implementation=self.attention_implementation,
        kv_length=kv_length, capture_attention=self.capture_attention)
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f'unknown remat_policy {self.remat_policy!r}; choose one '
                       f'of {sorted(REMAT_POLICIES)}.')
    policy = REMAT_POLICIES[self.remat_policy]
    if self.scan_layers:
      x, _ = nn.scan(
          _ScanBlock, variable_axes={'params': 0, 'intermediates': 0},
          split_rngs={'params': True, 'dropout': True},
          length=self.num_layers)(
              block_kwargs, deterministic=not train,
              remat_policy=self.remat_policy, name='encoderblock')(x, None)
    else:
      block = Encoder1DBlock
      if self.remat_policy != 'none':
        block = nn.remat(block, policy=policy, static_argnums=(2,))
      for i in range(self.num_layers):
        x = block(**block_kwargs, name=f'encoderblock_{i}')(x, not train)
    x = nn.LayerNorm(dtype=self.dtype, name='encoder_norm')(x)
    return x[:, :length]


@dataclasses.dataclass(frozen=True)
class ResNetStem:
  """Hyper-parameters of a hybrid's BiT ResNet stem."""
  num_layers: tuple[int, ...]
  width_factor: int = 1


class VisionTransformer(nn.Module):
  """ViT classifier: patch embedding, Transformer encoder, (pre-logits), head.

  `classifier`: 'token' (class token, as the paper), 'gap' (mean of the
  patch tokens), 'unpooled' (returns all patch tokens, no head) or
  'token_unpooled' (all tokens including the class token, no head).
  """
  num_classes: Optional[int]
  patch_size: tuple[int, int]
  hidden_size: int
  num_layers: int
  mlp_dim: int
  num_heads: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  classifier: str = 'token'
  representation_size: Optional[int] = None
  resnet: Optional[ResNetStem] = None
  posemb: str = 'learn'
  head_bias_init: float = 0.0
  gelu_approximate: bool = True
  dtype: Dtype = jnp.float32
  remat_policy: str = 'none'
  scan_layers: bool = False
  attention_implementation: Optional[str] = None
  attention_pad_multiple: Optional[int] = None
  #: Sow each block's attention weights into `intermediates` (module doc).
  capture_attention: bool = False

  def _check_options(self):
    if self.classifier not in CLASSIFIERS:
      raise ValueError(f'unknown classifier {self.classifier!r}; choose one of '
                       f'{CLASSIFIERS}.')

  @nn.compact
  def __call__(self, inputs, *, train: bool = False, return_prelogits: bool = False):
    """Maps images [B, H, W, 3] to logits [B, num_classes].

    With `return_prelogits=True`, or when `num_classes` is None (no head),
    returns the representation the head sees (the few-shot probes' features,
    float32) instead of the logits.
    """
    self._check_options()
    x = inputs.astype(self.dtype)
    if self.resnet is not None:
      x = resnet.bit_stem(x, self.resnet.num_layers, self.resnet.width_factor,
                          self.dtype)
    x = nn.Conv(features=self.hidden_size, kernel_size=self.patch_size,
                strides=self.patch_size, padding='VALID', dtype=self.dtype,
                name='embedding')(x)
    n, h, w, c = x.shape
    x = jnp.reshape(x, (n, h * w, c))

    prefix = 0
    if self.classifier in ('token', 'token_unpooled'):
      cls = self.param('cls', nn.initializers.zeros, (1, 1, c))
      x = jnp.concatenate([jnp.tile(cls.astype(x.dtype), (n, 1, 1)), x], axis=1)
      prefix = 1

    x = Encoder(
        num_layers=self.num_layers, mlp_dim=self.mlp_dim,
        num_heads=self.num_heads, dtype=self.dtype,
        dropout_rate=self.dropout_rate,
        attention_dropout_rate=self.attention_dropout_rate,
        gelu_approximate=self.gelu_approximate, posemb=self.posemb,
        posemb_grid=(h, w), num_prefix_tokens=prefix,
        remat_policy=self.remat_policy, scan_layers=self.scan_layers,
        attention_implementation=self.attention_implementation,
        attention_pad_multiple=self.attention_pad_multiple,
        capture_attention=self.capture_attention,
        name='Transformer')(x, train=train)

    if self.classifier == 'token':
      x = x[:, 0]
    elif self.classifier == 'gap':
      x = jnp.mean(x, axis=1)
    elif self.classifier in ('unpooled', 'token_unpooled'):
      return x[:, prefix:] if self.classifier == 'unpooled' else x

    if self.representation_size is not None:
      x = nn.Dense(self.representation_size, dtype=self.dtype,
                   name='pre_logits')(x)
      x = jnp.tanh(x)
    if return_prelogits or self.num_classes is None:
      return x.astype(jnp.float32)  # num_classes=None: a feature extractor
    x = nn.Dense(self.num_classes, dtype=self.dtype, name='head',
                 kernel_init=nn.initializers.zeros,
                 bias_init=nn.initializers.constant(self.head_bias_init))(x)
    return x.astype(jnp.float32)


def scan_to_layers(params: dict, num_layers: Optional[int] = None) -> dict:
  """Converts a scan-over-layers parameter tree to the per-layer layout.

  `Transformer/encoderblock/block/...` (ours) or `Transformer/encoderblock/...`
  (big_vision's) with a leading layer axis becomes
  `Transformer/encoderblock_{i}/...`, the layout of the released checkpoints.
  `num_layers` defaults to the length of that axis.
  """
  params = dict(params)
  transformer = dict(params['Transformer'])
  if 'encoderblock' not in transformer:
    raise ValueError('parameters are not in the scan layout: no '
                     'Transformer/encoderblock found.')
  stacked = transformer.pop('encoderblock')
  stacked = stacked.get('block', stacked)
  if num_layers is None:
    num_layers = np.shape(jax.tree.leaves(stacked)[0])[0]
  for i in range(num_layers):
    transformer[f'encoderblock_{i}'] = jax.tree.map(lambda a, i=i: a[i], stacked)
  params['Transformer'] = transformer
  return params


def layers_to_scan(params: dict, num_layers: int) -> dict:
  """Inverse of `scan_to_layers`: stacks `encoderblock_{i}` on a leading axis."""
  params = dict(params)
  transformer = dict(params['Transformer'])
  missing = [i for i in range(num_layers) if f'encoderblock_{i}' not in transformer]
  if missing:
    raise ValueError(f'parameters lack Transformer/encoderblock_{missing[0]} '
                     f'(expected {num_layers} blocks).')
  blocks = [transformer.pop(f'encoderblock_{i}') for i in range(num_layers)]
  stack = jnp.stack if isinstance(
      jax.tree.leaves(blocks[0])[0], jax.Array) else np.stack
  transformer['encoderblock'] = {
      'block': jax.tree.map(lambda *xs: stack(xs), *blocks)}
  params['Transformer'] = transformer
  return params
