"""Runs a ViT on images and collects every layer's attention weights from the model.

The model is cloned with `capture_attention=True`, so each
MultiHeadDotProductAttention sows its softmax weights into the
`intermediates` collection (see vit_jax.models.vit); nothing here computes
attention itself. Works for per-layer and scan-over-layers models. Images go
through one jitted function in fixed-size batches (one compilation).
"""

from __future__ import annotations

import re
from typing import Any, Iterator

import jax
import numpy as np

from vit_jax.models import VisionTransformer

WEIGHTS = 'attention_weights'
_BLOCK = re.compile(r'^encoderblock_(\d+)$')


def stack_layers(intermediates: Any) -> np.ndarray:
  """The sown weights as one array [layers, batch, heads, N, N].

  Reads `Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/
  attention_weights` (per layer) or the stacked `Transformer/encoderblock/
  block/...` of a scan-over-layers model.
  """
  transformer = intermediates.get('Transformer', {})
  if 'encoderblock' in transformer:  # scan_layers: one stacked array
    (weights,) = transformer['encoderblock']['block'][
        'MultiHeadDotProductAttention_1'][WEIGHTS]
    return np.asarray(weights)
  layers = sorted((int(m.group(1)), block) for name, block in transformer.items()
                  if (m := _BLOCK.match(name)))
  if not layers:
    raise ValueError('the model sowed no attention weights; build it with '
                     'capture_attention=True.')
  return np.stack([np.asarray(block['MultiHeadDotProductAttention_1'][WEIGHTS][0])
                   for _, block in layers])


def attention_batches(model: VisionTransformer, params: Any,
                      images: np.ndarray, batch_size: int = 16
                      ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Yields (weights [layers, b, heads, N, N], outputs [b, ...]) per batch.

  `images` are [num, H, W, 3] as the model expects them. Token padding for
  the flash-attention kernel is switched off (it masks, so nothing changes).
  """
  capturing = model.clone(capture_attention=True, attention_pad_multiple=None,
                          attention_implementation=None)

  @jax.jit
  def apply(p, x):
    out, state = capturing.apply({'params': p}, x, train=False,
                                 mutable=['intermediates'])
    return out, state['intermediates']

  size = min(batch_size, len(images))
  for start in range(0, len(images), size):
    batch = images[start:start + size]
    padded = np.zeros((size,) + batch.shape[1:], np.float32)
    padded[:len(batch)] = batch
    out, inter = apply(params, padded)
    yield (stack_layers(inter)[:, :len(batch)].astype(np.float32),
           np.asarray(out)[:len(batch)])
