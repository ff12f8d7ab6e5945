"""The BiT ResNet stem of the hybrid ViTs (R+ViT-Ti/16, R26+ViT-S/32, R50+ViT-B/16 ...).

Weight-standardised convolutions with GroupNorm (Kolesnikov et al., "Big
Transfer"), with the module names of the released hybrid checkpoints:
`conv_root`, `gn_root`, `block{k}/unit{j}/{conv,gn}{1,2,3}` and `conv_proj`,
`gn_proj` for the projection shortcut.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

Dtype = Any


def weight_standardize(w, axis, eps: float = 1e-5):
  """Subtracts the mean and divides by the standard deviation over `axis`."""
  w = w - jnp.mean(w, axis=axis, keepdims=True)
  return w / (jnp.std(w, axis=axis, keepdims=True) + eps)


class StdConv(nn.Conv):
  """Convolution whose kernel is standardised over its input dimensions."""

  def param(self, name, *args, **kwargs):
    param = super().param(name, *args, **kwargs)
    if name == 'kernel':
      param = weight_standardize(param, axis=[0, 1, 2])
    return param


class ResidualUnit(nn.Module):
  """Bottleneck unit: 1x1 -> 3x3 (strided) -> 1x1 (4x features), pre-sum GN."""
  features: int
  strides: tuple[int, int] = (1, 1)
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    needs_projection = (x.shape[-1] != self.features * 4 or
                        self.strides != (1, 1))
    residual = x
    if needs_projection:
      residual = StdConv(self.features * 4, (1, 1), self.strides,
                         use_bias=False, dtype=self.dtype,
                         name='conv_proj')(residual)
      residual = nn.GroupNorm(dtype=self.dtype, name='gn_proj')(residual)
    y = StdConv(self.features, (1, 1), use_bias=False, dtype=self.dtype,
                name='conv1')(x)
    y = nn.relu(nn.GroupNorm(dtype=self.dtype, name='gn1')(y))
    y = StdConv(self.features, (3, 3), self.strides, use_bias=False,
                dtype=self.dtype, name='conv2')(y)
    y = nn.relu(nn.GroupNorm(dtype=self.dtype, name='gn2')(y))
    y = StdConv(self.features * 4, (1, 1), use_bias=False, dtype=self.dtype,
                name='conv3')(y)
    y = nn.GroupNorm(dtype=self.dtype, scale_init=nn.initializers.zeros,
                     name='gn3')(y)
    return nn.relu(residual + y)


class ResNetStage(nn.Module):
  """`block_size` residual units; the first one may stride."""
  block_size: int
  features: int
  first_stride: tuple[int, int]
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = ResidualUnit(self.features, self.first_stride, self.dtype,
                     name='unit1')(x)
    for i in range(1, self.block_size):
      x = ResidualUnit(self.features, (1, 1), self.dtype, name=f'unit{i + 1}')(x)
    return x


def stem_stride(num_layers: Sequence[int]) -> int:
  """Pixels per output position of `bit_stem`: 4 at the root, 2 per later stage."""
  return 4 * 2**max(len(num_layers) - 1, 0)


def bit_stem(x, num_layers: Sequence[int], width_factor: int = 1,
             dtype: Dtype = jnp.float32):
  """Root (7x7/2 conv, GN, ReLU, 3x3/2 max-pool), then the ResNet stages.

  Downsamples by 4 at the root and by 2 in every stage after the first. Call
  it inside a compact method: its modules become children of the caller, so
  they sit at the top level of the ViT's tree, as in the released files.
  """
  width = int(64 * width_factor)
  x = StdConv(width, (7, 7), (2, 2), use_bias=False, dtype=dtype,
              name='conv_root')(x)
  x = nn.relu(nn.GroupNorm(dtype=dtype, name='gn_root')(x))
  x = nn.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding='SAME')
  for i, block_size in enumerate(num_layers):
    x = ResNetStage(block_size, width * 2**i, (1, 1) if i == 0 else (2, 2),
                    dtype, name=f'block{i + 1}')(x)
  return x
