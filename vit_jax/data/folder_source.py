"""Users' own images: ROOT/<split>/<class>/*.{jpg,jpeg,png} as a random-access source.

Classes are the sub-folders of ROOT/<split>, sorted by name (label i is the
i-th). Examples have `image` (the encoded file), `label` and `file_name`
(the file's base name, e.g. `ILSVRC2012_val_00000001.JPEG`, as in TFDS's
ImageNet; `keep('image', 'labels', 'file_name')` keeps it, for ReaL).
Every file is checked when the source opens: cheaply by default
(`check='quick'`: its signature and its end marker, which a truncated file
lacks), or by decoding it with PIL (`check='decode'`). A bad file is skipped,
counted and reported, or with `strict=True` raises an error naming it. A file
that passes the quick check yet fails to decode stops the pipeline with an
error naming it (`find_undecodable`).
Examples are ordered by a fixed permutation (NumPy seed 0) of the sorted
paths, so a slice such as 'train[:90%]' takes every class in proportion.
A concatenated split ('train+val[:50%]') joins its parts' examples in order;
its split folders must hold the same classes.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
from typing import Optional

import numpy as np

from vit_jax.data import sampler
from vit_jax.data.tf_runtime import tf as _tf

EXTENSIONS = ('.jpg', '.jpeg', '.png')
_JPEG_START, _JPEG_END = b'\xff\xd8\xff', b'\xff\xd9'
_PNG_START, _PNG_END = b'\x89PNG\r\n\x1a\n', b'IEND'
_TAIL = 32
ORDER_SEED = 0


def check_image_file(path: str) -> Optional[str]:
  """Why `path` is not a complete JPEG or PNG file, or None when it looks whole."""
  try:
    with open(path, 'rb') as f:
      head = f.read(8)
      f.seek(0, os.SEEK_END)
      size = f.tell()
      f.seek(max(0, size - _TAIL))
      tail = f.read()
  except OSError as e:
    return f'unreadable ({e.strerror})'
  if head.startswith(_JPEG_START):
    return None if _JPEG_END in tail else 'truncated JPEG (no end-of-image marker)'
  if head.startswith(_PNG_START):
    return None if _PNG_END in tail else 'truncated PNG (no IEND chunk)'
  return 'empty file' if size == 0 else 'neither JPEG nor PNG data'


def decode_image_file(path: str) -> Optional[str]:
  """`check_image_file`, then a full decode with PIL; why it failed, or None."""
  problem = check_image_file(path)
  if problem:
    return problem
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as image:
      image.load()
  except Exception as e:  # pylint: disable=broad-except
    return f'undecodable ({e})'
  return None


CHECKS = {'quick': check_image_file, 'decode': decode_image_file}


def _check_all(paths, check) -> list[Optional[str]]:
  with concurrent.futures.ThreadPoolExecutor(16) as pool:
    return list(pool.map(check, paths))


class FolderSource:
  """The image files of one split folder (optionally sliced)."""

  in_memory = False
  encoded_images = True  # `image` is the file's bytes: `decode` comes first.

  def __init__(self, paths: np.ndarray, labels: np.ndarray, class_names: list[str],
               description: str, skipped: list[tuple[str, str]]):
    self.paths, self.labels = paths, labels
    self.class_names = class_names
    self.num_classes = len(class_names)
    self.description = description
    self.skipped = skipped

  @property
  def size(self) -> int:
    return len(self.paths)

  def find_undecodable(self) -> Optional[tuple[str, str]]:
    """The first file that PIL cannot decode, with the reason (None if all decode)."""
    for path, problem in zip(self.paths, _check_all(self.paths, decode_image_file)):
      if problem:
        return str(path), problem
    return None

  @property
  def file_names(self) -> np.ndarray:
    """Each example's file base name, e.g. 'ILSVRC2012_val_00000001.JPEG'."""
    return np.array([os.path.basename(p) for p in self.paths])

  def tf_lookup(self):
    tf = _tf()
    paths, labels = tf.constant(self.paths), tf.constant(self.labels)
    names = tf.constant(self.file_names)
    return lambda i: {'image': tf.io.read_file(tf.gather(paths, i)),
                      'label': tf.gather(labels, i),
                      'file_name': tf.gather(names, i)}


def _list_split(root: str, base: str) -> tuple[list[str], list[list[str]]]:
  if not root:
    raise ValueError("Dataset 'folder' needs input.data.root (the folder that holds "
                     'ROOT/<split>/<class>/*.jpg).')
  if not os.path.isdir(root):
    raise FileNotFoundError(f'Image folder root {root!r} does not exist.')
  split_dir = os.path.join(root, base)
  if not os.path.isdir(split_dir):
    found = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    raise ValueError(f'Image folder {root!r} has no split {base!r} (no folder '
                     f'{split_dir}); its splits are {found}.')
  classes = sorted(d for d in os.listdir(split_dir)
                   if os.path.isdir(os.path.join(split_dir, d)))
  if not classes:
    raise ValueError(f'Split folder {split_dir} has no class sub-folders; expected '
                     f'{split_dir}/<class>/*.jpg.')
  files = []
  for name in classes:
    class_dir = os.path.join(split_dir, name)
    images = sorted(os.path.join(class_dir, f) for f in os.listdir(class_dir)
                    if f.lower().endswith(EXTENSIONS))
    if not images:
      raise ValueError(f'Class folder {class_dir} has no images (*.jpg, *.jpeg, '
                       '*.png); remove it or add images.')
    files.append(images)
  return classes, files


def _open_base(root: str, base: str, strict: bool, check: str):
  """(classes, paths, labels, skipped) of ROOT/<base>, in the fixed example order."""
  classes, files = _list_split(root, base)
  flat = [(path, label) for label, paths in enumerate(files) for path in paths]
  problems = _check_all([p for p, _ in flat], CHECKS[check])
  skipped = [(p, why) for (p, _), why in zip(flat, problems) if why]
  if skipped and strict:
    path, why = skipped[0]
    raise ValueError(f'Corrupt image file {path}: {why} ({len(skipped)} bad files in '
                     f'{root}/{base}); fix or delete it, or set input.data.strict=False '
                     'to skip bad files.')
  if skipped:
    logging.warning('Skipped %d corrupt image file(s) of %d in %s: %s', len(skipped),
                    len(flat), os.path.join(root, base),
                    '; '.join(f'{p} ({why})' for p, why in skipped[:5]))
  good = [item for item, why in zip(flat, problems) if not why]
  if not good:
    raise ValueError(f'No readable images in {os.path.join(root, base)} '
                     f'({len(skipped)} corrupt files).')
  order = np.random.default_rng(ORDER_SEED).permutation(len(good))
  paths = np.array([good[i][0] for i in order])
  labels = np.array([good[i][1] for i in order], np.int64)
  return classes, paths, labels, skipped


def open_folder(root: str, split: str, strict: bool = False,
                check: str = 'quick') -> FolderSource:
  """Lists and checks the split folders `split` names; it may be sliced
  ('train[:90%]') and concatenated ('train+val[:50%]'), its parts in order."""
  if check not in CHECKS:
    raise ValueError(f"input.data.check must be one of {sorted(CHECKS)}, got {check!r}.")
  bases = {}
  def size_of(base):
    bases[base] = _open_base(root, base, strict, check)
    return len(bases[base][1])
  ranges = sampler.split_ranges(split, size_of)
  classes = next(iter(bases.values()))[0]
  for base, (other, *_) in bases.items():
    if other != classes:
      first = next(iter(bases))
      raise ValueError(f'Split folders {first!r} and {base!r} of {root!r} have different '
                       f'class folders ({_difference(classes, other)}); a concatenated '
                       'split needs the same classes in every part.')
  paths = np.concatenate([bases[b][1][lo:hi] for b, lo, hi in ranges])
  labels = np.concatenate([bases[b][2][lo:hi] for b, lo, hi in ranges])
  skipped = [item for _, _, _, bad in bases.values() for item in bad]
  return FolderSource(paths, labels, classes, f'folder {root}:{split}', skipped)


def _difference(a: list[str], b: list[str]) -> str:
  """Class names only in `a` and only in `b` (both are sorted, so sets suffice)."""
  return (f'only in the first: {sorted(set(a) - set(b))[:3]}, only in the second: '
          f'{sorted(set(b) - set(a))[:3]}')
