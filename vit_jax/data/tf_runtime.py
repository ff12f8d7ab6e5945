"""Imports TensorFlow on first use and hides every accelerator from it.

TensorFlow is only the CPU-side input pipeline here: JAX owns the GPUs and TPUs.
Sources that need no TensorFlow (digits, in-memory arrays with NumPy ops) never
call `tf()`, so a quickstart that uses them does not pay TensorFlow's import.
"""

from __future__ import annotations

import logging
import os
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
        import tensorflow as tf_module  # pylint: disable=g-import-not-at-top
      except ImportError as e:
        raise ImportError(
            'This input pipeline needs TensorFlow (for TFDS, image folders or '
            f'TensorFlow-only ops) but it failed to import ({e}); install it '
            "with: pip install -e '.[data]'") from e
      _hide_accelerators(tf_module)
      _TF = tf_module
  return _TF


def _hide_accelerators(tf_module) -> None:
  """Makes TensorFlow leave GPUs and TPUs to JAX (before TF touches them)."""
  for kind in ('GPU', 'TPU'):
    try:
      if tf_module.config.list_physical_devices(kind):
        tf_module.config.set_visible_devices([], kind)
    except RuntimeError as e:  # Devices were already initialised by someone.
      logging.warning('Could not hide %s devices from TensorFlow: %s', kind, e)
