"""Mixup (Zhang et al., 2018) as used in the AugReg study: a batch op in NumPy.

Each batch draws one weight p ~ Beta(alpha, alpha), takes max(p, 1 - p),
and mixes every example with its neighbour in the host batch (the batch
rolled by one): x <- p x + (1 - p) roll(x), for the image and the labels
alike. The draw is a function of (seed, batch number), the same on every
host, so a resumed run mixes as the uninterrupted run did. Only the host's
own rows are at hand, so the first row of each host batch is mixed with that
host batch's last row: with P processes, P rows of a global batch (the first
of each host's share) differ from what one process would make of the same
examples; every other row is the same.
"""

from __future__ import annotations

import numpy as np

from vit_jax.data.registry import Op, register


def mix(batch: dict, p: float, keys=('image', 'labels')) -> dict:
  """Mixes `keys` of `batch` with the batch rolled by one, weight p."""
  out = dict(batch)
  for k in keys:
    if k not in batch:
      raise ValueError(f'mixup: the batch has no {k!r}; it has {sorted(batch)} '
                       '(put mixup after onehot).')
    x = np.asarray(batch[k], np.float32)
    mixed = np.roll(x, 1, axis=0)  # One new array, scaled and added in place.
    mixed *= np.float32(1 - p)
    mixed += np.float32(p) * x
    out[k] = mixed
  return out


def draw_weight(alpha: float, key: int) -> float:
  """max(p, 1 - p) with p ~ Beta(alpha, alpha), from a 64-bit key."""
  p = np.random.default_rng(int(key)).beta(alpha, alpha)
  return float(max(p, 1 - p))


@register('mixup')
def mixup(alpha: float = 0.2, keys=('image', 'labels')) -> Op:
  """Mixup with Beta(alpha, alpha) weights over a whole host batch."""
  if alpha <= 0:
    raise ValueError(f'mixup needs alpha > 0, got {alpha} (AugReg used 0.2 or 0.5); '
                     'leave the op out to disable it.')
  keys = (keys,) if isinstance(keys, str) else tuple(keys)
  def batch_fn(batch, key):
    return mix(batch, draw_weight(alpha, key), keys)
  return Op('mixup', batch_fn=batch_fn)
