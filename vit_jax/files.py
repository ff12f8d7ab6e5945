"""Atomic file writes: a reader sees the old file or the new one, never a half-written one.

Local paths are written to a temporary file beside the target and renamed
over it; `gs://` and other URIs go through `etils.epath`, whose object
stores replace whole objects.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any, Optional

from etils import epath


def probe_writable(directory: str) -> None:
  """Creates `directory` and writes and removes a file in it; OSError if not."""
  os.makedirs(directory, exist_ok=True)
  probe = os.path.join(directory, f'.write_test_{os.getpid()}')
  with open(probe, 'w') as f:
    f.write('ok')
  os.remove(probe)


def write_text(path: str, text: str) -> None:
  """Writes `text` to `path` atomically (creates the parent directory)."""
  if '://' in path:
    epath.Path(path).write_text(text)
    return
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f'{path}.tmp-{uuid.uuid4().hex[:8]}'
  try:
    with open(tmp, 'w') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_json(path: str, obj: Any) -> None:
  """`obj` as indented JSON, atomically; values JSON cannot hold become strings."""
  write_text(path, json.dumps(obj, indent=2, default=str) + '\n')


def read_json(path: str) -> Optional[Any]:
  """The JSON in `path`, or None when there is no such file."""
  if '://' in path:
    p = epath.Path(path)
    return json.loads(p.read_text()) if p.exists() else None
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)
