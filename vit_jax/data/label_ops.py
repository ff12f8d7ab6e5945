"""Label and key ops: one-hot and multi-hot labels, keep, drop and copy keys."""

from __future__ import annotations

import numpy as np

from vit_jax.data.registry import Op, register
from vit_jax.data.tf_runtime import tf as _tf


def _check_depth(depth):
  if not isinstance(depth, int) or depth < 1:
    raise ValueError(f'The number of classes must be a positive int, got {depth!r}.')


@register('onehot')
def onehot(depth: int, key: str = 'label', key_result: str = 'labels',
           on: float = 1.0, off: float = 0.0) -> Op:
  """Integer class `key` -> float32 [depth] one-hot `key_result`."""
  _check_depth(depth)
  def tf_fn(ex, seed):
    tf = _tf()
    label = tf.cast(ex[key], tf.int32)
    return {**ex, key_result: tf.one_hot(label, depth, on_value=on, off_value=off)}
  def np_fn(batch, keys):
    label = np.asarray(batch[key], np.int64)
    out = np.full(label.shape + (depth,), off, np.float32)
    np.put_along_axis(out, label[..., None], np.float32(on), axis=-1)
    return {**batch, key_result: out}
  return Op('onehot', tf_fn=tf_fn, np_fn=np_fn)


@register('multihot')
def multihot(depth: int, key: str = 'label', key_result: str = 'labels') -> Op:
  """A list of classes (e.g. ImageNet ReaL's `real_label`) -> float32 [depth] 0/1.

  An empty list gives all zeros (ReaL evaluators leave such images out).
  """
  _check_depth(depth)
  def tf_fn(ex, seed):
    tf = _tf()
    labels = tf.reshape(tf.cast(ex[key], tf.int32), [-1])
    hot = tf.reduce_sum(tf.one_hot(labels, depth, dtype=tf.float32), axis=0)
    return {**ex, key_result: tf.minimum(hot, 1.0)}
  return Op('multihot', tf_fn=tf_fn)


@register('keep')
def keep(*keys: str) -> Op:
  """Keeps only `keys` (every one must exist)."""
  def select(ex):
    missing = [k for k in keys if k not in ex]
    if missing:
      raise ValueError(f'keep{tuple(keys)}: the example has no {missing}; it has '
                       f'{sorted(ex)}.')
    return {k: ex[k] for k in keys}
  return Op('keep', tf_fn=lambda ex, seed: select(ex),
            np_fn=lambda batch, keys_: select(batch))


@register('drop')
def drop(*keys: str) -> Op:
  """Removes `keys` (absent keys are ignored)."""
  def remove(ex):
    return {k: v for k, v in ex.items() if k not in keys}
  return Op('drop', tf_fn=lambda ex, seed: remove(ex),
            np_fn=lambda batch, keys_: remove(batch))


@register('copy')
def copy(inkey: str, outkey: str) -> Op:
  """Copies `inkey` to `outkey`."""
  def dup(ex):
    if inkey not in ex:
      raise ValueError(f'copy: the example has no {inkey!r}; it has {sorted(ex)}.')
    return {**ex, outkey: ex[inkey]}
  return Op('copy', tf_fn=lambda ex, seed: dup(ex), np_fn=lambda batch, keys_: dup(batch))
