"""A run's class names: taken from its training data when it starts, read back by what reads the run.

    class_names.write_class_names(workdir, train_data)   # train.py, at the start
    class_names.read_class_names('runs/mine')            # ['cat', 'dog'] or None

The names are those of the data's label feature in label order: a TFDS
dataset's `ClassLabel` names (what `vit_jax.data.prepare` writes: the class
folders or archives, sorted) or an image folder's class sub-directories.
They are kept in `WORKDIR/class_names.json` (a JSON list; config.json is the
config and is rewritten at every start), written by the primary process
through `files.write_json` (atomic). Nothing is written when the data has no
names (the bundled digits, arrays), when TFDS's names are only the indices
('0', '1', ...), when the preprocessing relabels (`vtab_label`, `copy`, a
one-hot of another key), or when the count differs from the label width.
predict, export (transformers' id2label) and evaluate read them through
`vit_jax.pretrained`.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax

from vit_jax import files
from vit_jax import workdir as workdir_lib

#: Preprocessing ops that may give the labels another meaning than the
#: label feature's (VTAB's derived tasks, a copied key).
_RELABELLING_OPS = ('vtab_label', 'copy')


def of_data(train_data: Any) -> Optional[list[str]]:
  """The class names of a training pipeline's labels, in label order, or None."""
  source = getattr(train_data, 'source', None)
  names = getattr(source, 'class_names', None)  # An image folder.
  if names is None:
    names = _tfds_names(source)
  if not names or len(names) != getattr(train_data, 'num_classes', None):
    return None
  if all(str(name) == str(i) for i, name in enumerate(names)):
    return None  # TFDS's default names: the indices say as much.
  if _relabels(getattr(train_data, 'ops', ())):
    return None
  return [str(name) for name in names]


def _tfds_names(source: Any) -> Optional[list[str]]:
  info = getattr(getattr(source, 'builder', None), 'info', None)
  features = getattr(info, 'features', None)
  if features is None or 'label' not in getattr(features, 'keys', dict)():
    return None
  return list(getattr(features['label'], 'names', None) or []) or None


def _relabels(ops) -> bool:
  for op in ops:
    spec = getattr(op, 'spec', '')
    if op.name in _RELABELLING_OPS or (op.name in ('onehot', 'multihot')
                                       and 'key' in spec):
      return True
  return False


def write_class_names(workdir: str, train_data: Any) -> Optional[list[str]]:
  """Writes WORKDIR/class_names.json (primary process) when the data names its classes.

  Returns the names written (on every process), or None.
  """
  names = of_data(train_data)
  if names is not None and jax.process_index() == 0:
    files.write_json(os.path.join(workdir, workdir_lib.CLASS_NAMES), names)
  return names


def read_class_names(run_dir: str) -> Optional[list[str]]:
  """The class names a run kept (WORKDIR/class_names.json), or None."""
  names = files.read_json(os.path.join(run_dir, workdir_lib.CLASS_NAMES))
  if not isinstance(names, list) or not names:
    return None
  return [str(name) for name in names]
