"""Imports TensorFlow on first use and hides every accelerator from it.

TensorFlow is only the CPU-side input pipeline here: JAX owns the GPUs and TPUs.
Sources that need no TensorFlow (digits, in-memory arrays with NumPy ops) never
call `tf()`, so a quickstart that uses them does not pay TensorFlow's import.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading

_LOCK = threading.Lock()
_TF = None


def tf():
  """Returns the `tensorflow` module, configured to see CPUs only."""
  global _TF
  if _TF is not None:
    return _TF
  with _LOCK:
    if _TF is None:
      os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
      os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')  # Its C++ notice.
      try:
        with _without_eager_keras():
          import tensorflow as tf_module  # pylint: disable=g-import-not-at-top
      except ImportError as e:
        raise ImportError(
            'This input pipeline needs TensorFlow (for TFDS, image folders or '
            f'TensorFlow-only ops) but it failed to import ({e}); install it '
            "with: pip install -e '.[data]'") from e
      _hide_accelerators(tf_module)
      _TF = tf_module
  return _TF


# What TensorFlow's __init__ imports eagerly when Keras is installed, only to
# register Keras' optimizers for SavedModel loading: Keras 3 and, through it,
# scikit-learn, 3 to 5 s of every process that reads TFDS or image folders,
# for a pipeline that uses neither. Left out while TensorFlow imports (it
# catches the ImportError); `import keras` and `tf.keras` work as before.
_EAGER_KERAS = ('keras.src.optimizers', 'tf_keras.src.optimizers')


@contextlib.contextmanager
def _without_eager_keras():
  blocked = [m for m in _EAGER_KERAS
             if m not in sys.modules and 'tensorflow' not in sys.modules]
  for m in blocked:
    sys.modules[m] = None  # An import of it raises before importing its package.
  try:
    yield
  finally:
    for m in blocked:
      if m in sys.modules and sys.modules[m] is None:
        del sys.modules[m]


def _hide_accelerators(tf_module) -> None:
  """Makes TensorFlow leave GPUs and TPUs to JAX (before TF touches them)."""
  for kind in ('GPU', 'TPU'):
    try:
      if tf_module.config.list_physical_devices(kind):
        tf_module.config.set_visible_devices([], kind)
    except RuntimeError as e:  # Devices were already initialised by someone.
      logging.warning('Could not hide %s devices from TensorFlow: %s', kind, e)
