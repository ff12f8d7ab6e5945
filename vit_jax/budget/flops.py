"""Multiply-accumulates of a ViT's forward pass, counted analytically from its shape.

Counted: the patch embedding (Np * P^2 * C * D), every encoder block's four
attention projections (4 N D^2), its MLP (2 N D M) and the attention matrices
q k^T and A v (2 N^2 D), a hybrid's BiT ResNet convolutions, the pre-logits
layer and the head. Not counted: biases, normalisations, softmax, GELU,
residual sums, pooling and the padding of the token sequence for flash
attention (a few percent at most; MFU is useful model work, not padded work).
One MAC is two FLOPs; a training step is forward plus backward = 3 forwards,
so training FLOPs per image = 3 x 2 x forward MACs.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence, Union

from vit_jax.models.registry import ModelSpec, get_spec
from vit_jax.models.vit import CLASSIFIERS

SpecLike = Union[str, ModelSpec]
ImageSize = Union[int, Sequence[int]]

#: Forward + backward (two matmuls per forward matmul) = 3 forward passes.
TRAIN_FORWARD_MULTIPLE = 3


def _spec(spec_or_name: SpecLike) -> ModelSpec:
  if isinstance(spec_or_name, ModelSpec):
    return spec_or_name
  if isinstance(spec_or_name, str):
    return get_spec(spec_or_name)
  raise ValueError(f'expected a model name such as "ViT-B/16" or a ModelSpec, '
                   f'got {type(spec_or_name).__name__}.')


def _hw(image_size: ImageSize) -> tuple[int, int]:
  if isinstance(image_size, int):
    h = w = image_size
  else:
    h, w = (int(s) for s in image_size)
  if h <= 0 or w <= 0:
    raise ValueError(f'image_size must be positive, got {image_size!r}.')
  return h, w


def _taps(size: int, k: int, stride: int, count_padding: bool) -> int:
  """Kernel taps along one axis of a SAME convolution, summed over outputs."""
  out = math.ceil(size / stride)
  if count_padding:
    return out * k
  low = max((out - 1) * stride + k - size, 0) // 2
  return sum(min(o * stride - low + k, size) - max(o * stride - low, 0)
             for o in range(out))


def _conv(h: int, w: int, cin: int, cout: int, k: int, stride: int,
          count_padding: bool = True) -> tuple[int, int, int]:
  """MACs of a SAME-padded k x k convolution, and its output height, width.

  `count_padding=False` leaves out the taps that fall on the zero padding, as
  XLA's cost analysis does (and, it turns out, the paper's Table 6).
  """
  macs = (_taps(h, k, stride, count_padding) *
          _taps(w, k, stride, count_padding) * cin * cout)
  return macs, math.ceil(h / stride), math.ceil(w / stride)


def resnet_stem_macs(num_layers: Sequence[int], width_factor: int, h: int,
                     w: int, count_padding: bool = True
                     ) -> tuple[int, int, int, int]:
  """MACs of the BiT root and stages (models/resnet.py's `bit_stem`).

  Root: 7x7/2 convolution, 3x3/2 max-pool. Stage i: bottleneck units of width
  64 * wf * 2^i (1x1 -> 3x3, strided in the first unit of stages after the
  first -> 1x1 to 4x width), with a 1x1 projection where shape changes.
  Returns (macs, height, width, channels) of the output feature map.
  """
  width = int(64 * width_factor)
  conv = functools.partial(_conv, count_padding=count_padding)
  macs, h, w = conv(h, w, 3, width, 7, 2)
  h, w = math.ceil(h / 2), math.ceil(w / 2)  # max-pool
  channels = width
  for i, block_size in enumerate(num_layers):
    features = width * 2**i
    for unit in range(block_size):
      stride = 2 if (unit == 0 and i > 0) else 1
      m1, _, _ = conv(h, w, channels, features, 1, 1)
      m2, ho, wo = conv(h, w, features, features, 3, stride)
      m3, _, _ = conv(ho, wo, features, 4 * features, 1, 1)
      macs += m1 + m2 + m3
      if channels != 4 * features or stride != 1:
        macs += conv(h, w, channels, 4 * features, 1, stride)[0]
      h, w, channels = ho, wo, 4 * features
  return macs, h, w, channels


def forward_macs_breakdown(spec_or_name: SpecLike, image_size: ImageSize = 224,
                           num_classes: int | None = 1000,
                           representation_size: int | None = None,
                           classifier: str = 'token',
                           count_padding: bool = True) -> dict[str, int]:
  """Forward MACs per image, by part (see the module docstring).

  Keys: stem (hybrids' ResNet), embedding, attention_projections (4 L N D^2),
  attention_matrices (2 L N^2 D), mlp (2 L N D M), pre_logits, head, and the
  token count `tokens` (N, class token included) for reference.
  """
  spec = _spec(spec_or_name)
  if classifier not in CLASSIFIERS:
    raise ValueError(f'unknown classifier {classifier!r}; choose one of '
                     f'{CLASSIFIERS}.')
  h, w = _hw(image_size)
  stem, channels = 0, 3
  if spec.resnet is not None:
    stem, h, w, channels = resnet_stem_macs(
        spec.resnet.num_layers, spec.resnet.width_factor, h, w, count_padding)
  ph, pw = spec.patch_size
  grid_h, grid_w = h // ph, w // pw
  if grid_h == 0 or grid_w == 0:
    raise ValueError(f'image_size {image_size!r} gives no {ph}x{pw} patches '
                     f'for {spec.name}; use a larger image.')
  patches = grid_h * grid_w
  tokens = patches + (1 if classifier in ('token', 'token_unpooled') else 0)
  d, m, layers = spec.hidden_size, spec.mlp_dim, spec.num_layers
  pooled_width = representation_size or d
  if classifier.endswith('unpooled'):  # all tokens out: no pre-logits, no head
    representation_size = num_classes = None
  return dict(
      tokens=tokens,
      stem=stem,
      embedding=patches * ph * pw * channels * d,
      attention_projections=layers * 4 * tokens * d * d,
      attention_matrices=layers * 2 * tokens * tokens * d,
      mlp=layers * 2 * tokens * d * m,
      pre_logits=d * representation_size if representation_size else 0,
      head=pooled_width * num_classes if num_classes else 0,
  )


def forward_macs(spec_or_name: SpecLike, image_size: ImageSize = 224,
                 num_classes: int | None = 1000,
                 representation_size: int | None = None,
                 classifier: str = 'token', count_padding: bool = True) -> int:
  """Forward multiply-accumulates for one image (ViT-B/16 at 224: 17.56e9)."""
  parts = forward_macs_breakdown(spec_or_name, image_size, num_classes,
                                 representation_size, classifier, count_padding)
  return sum(v for k, v in parts.items() if k != 'tokens')


def train_flops_per_image(spec_or_name: SpecLike, image_size: ImageSize = 224,
                          num_classes: int | None = 1000,
                          representation_size: int | None = None,
                          classifier: str = 'token',
                          count_padding: bool = True) -> float:
  """Training FLOPs per image: 3 x 2 x forward MACs (ViT-B/16 at 224: 105.4e9)."""
  return float(TRAIN_FORWARD_MULTIPLE * 2 * forward_macs(
      spec_or_name, image_size, num_classes, representation_size, classifier,
      count_padding))


def bit_resnet_macs(num_layers: Sequence[int], width_factor: int,
                    image_size: ImageSize = 224, num_classes: int = 1000,
                    count_padding: bool = True) -> int:
  """Forward MACs of a whole BiT ResNet classifier (stem, stages, head)."""
  h, w = _hw(image_size)
  macs, _, _, channels = resnet_stem_macs(num_layers, width_factor, h, w,
                                          count_padding)
  return macs + channels * num_classes
