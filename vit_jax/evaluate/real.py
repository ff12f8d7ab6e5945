"""ImageNet ReaL ("Reassessed Labels", Beyer et al. 2020) accuracy.

`real.json` holds 50,000 lists of class ids, one per ILSVRC-2012 validation
image in file order (`ILSVRC2012_val_00000001.JPEG` first). Get it from
https://github.com/google-research/reassessed-imagenet (`real.json`) and pass
its path as the config value `real_json`; nothing is downloaded.

Each example is matched to its list through its original file name, which
both TFDS (`imagenet2012`, `imagenet2012_real`: the `file_name` feature) and an
image folder of the validation files (named by their original names) provide.
Images whose list is empty are left out of ReaL; a prediction is correct when
its argmax is in the list. Original-label top-1 over all images is reported
beside it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from vit_jax.evaluate import sharded

NUM_VAL_IMAGES = 50_000
NUM_CLASSES = 1000
_VAL_NAME = re.compile(r'ILSVRC2012_val_(\d{8})')


def load_real_labels(path: str) -> list[list[int]]:
  """Reads and checks real.json: 50,000 lists of ids in [0, 1000)."""
  if not path:
    raise ValueError('ImageNet ReaL needs real_json=PATH (real.json from '
                     'github.com/google-research/reassessed-imagenet).')
  if not os.path.exists(path):
    raise FileNotFoundError(f'ReaL labels {path!r} do not exist; download '
                            f'real.json from github.com/google-research/'
                            f'reassessed-imagenet and set real_json to it.')
  with open(path) as f:
    try:
      lists = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f'{path} is not valid JSON ({e}); expected real.json '
                       f'from reassessed-imagenet.') from None
  if not isinstance(lists, list) or len(lists) != NUM_VAL_IMAGES:
    raise ValueError(f'{path} must be a JSON list of {NUM_VAL_IMAGES} label '
                     f'lists, got {type(lists).__name__} of length '
                     f'{len(lists) if isinstance(lists, list) else "-"}.')
  for i, labels in enumerate(lists):
    if not isinstance(labels, list) or any(
        not isinstance(c, int) or not 0 <= c < NUM_CLASSES for c in labels):
      raise ValueError(f'{path}: entry {i} is {labels!r}; every entry must be '
                       f'a list of class ids in [0, {NUM_CLASSES}).')
  return lists


def val_index(file_name: str | bytes) -> int:
  """'.../ILSVRC2012_val_00000001.JPEG' -> 0 (position in real.json)."""
  if isinstance(file_name, bytes):
    file_name = file_name.decode('utf-8')
  match = _VAL_NAME.search(os.path.basename(str(file_name)))
  if not match or not 1 <= int(match.group(1)) <= NUM_VAL_IMAGES:
    raise ValueError(f'{file_name!r} is not an ILSVRC-2012 validation file '
                     f'name (ILSVRC2012_val_00000001.JPEG ... _00050000); ReaL '
                     f'needs the original file names.')
  return int(match.group(1)) - 1


def multi_hot(real_lists: Sequence[Sequence[int]], file_names: Iterable[Any],
              num_classes: int = NUM_CLASSES) -> np.ndarray:
  """[B, num_classes] float32: 1 where a class is in the image's ReaL list.

  Empty file names (padding rows) and images with an empty list get a row of
  zeros, which the scorer leaves out.
  """
  names = list(file_names)
  out = np.zeros((len(names), num_classes), np.float32)
  for row, name in enumerate(names):
    if name is None or len(name) == 0:
      continue
    out[row, list(real_lists[val_index(name)])] = 1.0
  return out


def real_counts(logits: jax.Array, real: jax.Array, labels: jax.Array,
                mask: jax.Array) -> dict[str, jax.Array]:
  """Integer sums for ReaL and original-label top-1.

  `real` [B, K] multi-hot ReaL sets (all zero: left out), `labels` [B, K] the
  original one-hot labels, `mask` [B] (0 for padding).
  """
  valid = mask > 0
  pred = jnp.argmax(logits, axis=-1)[:, None]
  has_real = jnp.logical_and(valid, jnp.any(real > 0, axis=-1))
  real_hit = jnp.take_along_axis(real, pred, axis=-1)[:, 0] > 0
  orig_hit = jnp.take_along_axis(labels, pred, axis=-1)[:, 0] > 0
  count = lambda x: jnp.sum(x, dtype=jnp.int32)
  return {'real_correct': count(jnp.logical_and(real_hit, has_real)),
          'real_count': count(has_real),
          'top1_correct': count(jnp.logical_and(orig_hit, valid)),
          'count': count(valid)}


def real_accuracies(counts: dict[str, Any]) -> dict[str, float]:
  """{'real_top1', 'top1', 'real_num_examples', 'num_examples'}."""
  if int(counts['real_count']) == 0:
    raise ValueError('no image with a non-empty ReaL list was evaluated; '
                     'check that the split is the ImageNet validation set.')
  return {'real_top1': float(counts['real_correct']) / int(counts['real_count']),
          'top1': float(counts['top1_correct']) / int(counts['count']),
          'real_num_examples': float(counts['real_count']),
          'num_examples': float(counts['count'])}


@dataclasses.dataclass
class RealEvaluator:
  """ReaL and original top-1 on batches with `image`, `labels`, `mask` and
  `file_name` (the original validation file names, bytes or str)."""
  name: str
  every: int
  model: Any
  mesh: Mesh
  batches: Callable[[], Iterable[dict]]
  batch_size: int
  real_json: str

  def __post_init__(self):
    self._real_lists = load_real_labels(self.real_json)

    def counts(params, batch):
      logits = self.model.apply({'params': params}, batch['image'], train=False)
      return real_counts(logits, batch['real'], batch['labels'], batch['mask'])
    self._reducer = sharded.BatchReducer(
        counts, self.mesh, self.batch_size, ('image', 'labels', 'mask', 'real'))

  def _real_targets(self, batch) -> dict[str, np.ndarray]:
    if 'file_name' not in batch:
      raise ValueError('ReaL needs each example\'s original file name: use a '
                       'source that keeps `file_name` (TFDS imagenet2012 or '
                       'imagenet2012_real, or an image folder of the '
                       'validation files).')
    names = [n if m > 0 else b'' for n, m in zip(batch['file_name'],
                                                  batch['mask'])]
    return {'real': multi_hot(self._real_lists, names,
                              np.shape(batch['labels'])[-1])}

  def run(self, params: Any) -> dict[str, float]:
    counts = self._reducer.sum(params, self.batches(), self._real_targets)
    return real_accuracies(counts)
