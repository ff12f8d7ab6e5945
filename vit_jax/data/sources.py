"""Where examples come from: one interface over TFDS, image folders, digits, arrays.

`open_source(data_config, data_dir)` reads `data_config.name`:

* `'digits'`: scikit-learn's bundled 8x8 digits (1,797 images, 10 classes),
  as uint8 RGB (grey replicated) with values round(v * 255 / 16), so that
  `value_range(-1, 1)` maps the digits' 0..16 onto [-1, 1]. Splits: a fixed
  permutation (NumPy seed 0) of the 1,797 images, the first 1,497 are
  `'train'`, the last 300 `'test'`.
* `'arrays'`: in-memory arrays, `data_config.arrays = {split: {'image':
  [N, H, W, 3], 'label': [N] or lists, ...}}`, for tests and notebooks.
* `'folder'`: `data_config.root/<split>/<class>/*.{jpg,jpeg,png}` (folder_source.py).
* anything else: a TFDS dataset name, e.g. `'cifar10'` or `'imagenet2012:5.*.*'`
  (tfds_source.py).

Random-access sources (the first three) expose `size`, `num_classes`,
`description`, `in_memory`, `take(indices)` (NumPy, in-memory only) and
`tf_lookup()` (an index -> example function for tf.data). TFDS is a
stream source (see tfds_source.py). Splits accept slices such as
`'train[:98%]'` and `'train[1000:]'` for every source, and concatenations
of such parts joined by '+', as TFDS writes them (`'train[:800]+train[-200:]'`,
`'train+validation'`): the selected ranges in order, as one split.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any, Mapping, Optional

import numpy as np

from vit_jax.data import sampler
from vit_jax.data.tf_runtime import tf as _tf

DIGITS_TRAIN = 1497
DIGITS_SPLIT_SEED = 0
RANDOM_ACCESS = ('digits', 'arrays', 'folder')


class ArraySource:
  """Examples held in memory as a dict of equal-length NumPy arrays."""

  in_memory = True

  def __init__(self, arrays: Mapping[str, Any], num_classes: Optional[int],
               description: str):
    lengths = {k: len(v) for k, v in arrays.items()}
    if 'image' not in arrays or len(set(lengths.values())) != 1:
      raise ValueError(f'{description}: in-memory data needs an "image" array and '
                       f'arrays of equal length, got lengths {lengths}.')
    self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
    self.num_classes = num_classes
    self.description = description

  @property
  def size(self) -> int:
    return len(self.arrays['image'])

  def select(self, start: int, stop: int) -> 'ArraySource':
    return ArraySource({k: v[start:stop] for k, v in self.arrays.items()},
                       self.num_classes, f'{self.description}[{start}:{stop}]')

  def take(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[indices] for k, v in self.arrays.items()}

  def tf_lookup(self):
    tf = _tf()
    tensors = {k: tf.constant(v) for k, v in self.arrays.items()}
    return lambda i: {k: tf.gather(v, i) for k, v in tensors.items()}


def _digits_file() -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's digits (its `load_digits`): [1797, 8, 8] values 0..16, labels.

  Read from the file scikit-learn ships, without importing scikit-learn
  (2 s of every run's start-up for a 1797-row CSV).
  """
  spec = importlib.util.find_spec('sklearn')
  path = spec and os.path.join(spec.submodule_search_locations[0], 'datasets',
                               'data', 'digits.csv.gz')
  if not path or not os.path.exists(path):
    raise FileNotFoundError(
        "The bundled digits ship with scikit-learn, which is not installed; "
        "run `pip install scikit-learn` (or `make install`).")
  table = np.loadtxt(path, delimiter=',')
  return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)


@functools.lru_cache(maxsize=1)
def _digits() -> dict[str, dict[str, np.ndarray]]:
  pixels, target = _digits_file()
  grey = np.round(pixels * (255 / 16)).astype(np.uint8)
  images = np.repeat(grey[..., None], 3, axis=-1)
  order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(images))
  labels = target.astype(np.int64)
  parts = {'train': order[:DIGITS_TRAIN], 'test': order[DIGITS_TRAIN:]}
  return {s: {'image': images[i], 'label': labels[i]} for s, i in parts.items()}


def _select(splits: Mapping[str, Mapping[str, Any]], split: str, name: str,
            num_classes: Optional[int]) -> ArraySource:
  """The examples `split` selects, its '+' parts concatenated in order."""
  bases = {}
  def size_of(base):
    if base not in splits:
      raise ValueError(f'Dataset {name!r} has no split {base!r}; its splits are '
                       f'{sorted(splits)}.')
    bases[base] = ArraySource(splits[base], num_classes, f'{name}:{base}')
    return bases[base].size
  ranges = sampler.split_ranges(split, size_of)
  parts = [bases[base].select(lo, hi) for base, lo, hi in ranges]
  if len(parts) == 1:
    return parts[0]
  return _concatenate(parts, f'{name}:{split}')


def _concatenate(parts: list[ArraySource], description: str) -> ArraySource:
  keys = [sorted(p.arrays) for p in parts]
  if any(k != keys[0] for k in keys):
    raise ValueError(f'{description}: the parts have different features '
                     f'({" vs ".join(map(str, keys))}); join splits with the same keys.')
  try:
    arrays = {k: np.concatenate([p.arrays[k] for p in parts]) for k in keys[0]}
  except ValueError as e:
    raise ValueError(f'{description}: the parts cannot be joined ({e}); join splits '
                     'whose images have the same shape.') from None
  return ArraySource(arrays, parts[0].num_classes, description)


def _num_classes(splits, given) -> Optional[int]:
  if given:
    return int(given)
  labels = [np.asarray(s['label']) for s in splits.values() if 'label' in s]
  ints = [l for l in labels if l.size and np.issubdtype(l.dtype, np.integer)]
  return int(max(l.max() for l in ints)) + 1 if ints else None


def config_value(config, key, default=None):
  """config[key] for ConfigDicts, dicts and objects; `default` when absent or None."""
  if config is None:
    return default
  value = config.get(key, default) if hasattr(config, 'get') else getattr(config, key, default)
  return default if value is None else value


def open_source(data_config, data_dir: Optional[str] = None, split: Optional[str] = None):
  """The source named by `data_config.name`, restricted to `split` (default data.split)."""
  name = config_value(data_config, 'name')
  split = split or config_value(data_config, 'split')
  if not name:
    raise ValueError("input.data.name is missing: set it to 'digits', 'arrays', "
                     "'folder' or a TFDS dataset name such as 'cifar10'.")
  if not split:
    raise ValueError(f"No split given for dataset {name!r}: set input.data.split, "
                     "e.g. 'train' or 'train[:98%]'.")
  if name == 'digits':
    return _select(_digits(), split, name, 10)
  if name == 'arrays':
    splits = config_value(data_config, 'arrays')
    if not splits:
      raise ValueError("Dataset 'arrays' needs input.data.arrays = {split: "
                       "{'image': ..., 'label': ...}}.")
    splits = {k: dict(v) for k, v in dict(splits).items()}
    return _select(splits, split, name, _num_classes(splits, config_value(data_config, 'num_classes')))
  if name == 'folder':
    from vit_jax.data import folder_source  # pylint: disable=g-import-not-at-top
    return folder_source.open_folder(
        config_value(data_config, 'root'), split, strict=bool(config_value(data_config, 'strict', False)),
        check=config_value(data_config, 'check', 'quick'))
  from vit_jax.data import tfds_source  # pylint: disable=g-import-not-at-top
  return tfds_source.TfdsSource(name, split, data_dir=data_dir,
                                manual_dir=config_value(data_config, 'manual_dir'))
