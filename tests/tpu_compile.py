"""Runs a Python snippet that compiles for a TPU slice in a child process and returns its JSON result.

libtpu (the TPU compiler) stays out of the pytest process, whose jax runs
the 8 simulated CPU devices of conftest.py, and its start-up messages stay
off the test log. The child runs with JAX_PLATFORMS=cpu (so `jax.devices()`
is the host's CPU; the TPU devices come from `vit_jax.planner.tpu`), with
libtpu told the accelerator type and not to look for a metadata server,
without the persistent compilation cache (`child_env`), and its stderr
captured; the stderr comes back, less libtpu's start-up
lines, only when the snippet fails.

    import tpu_compile  # tests/ is on sys.path under pytest
    @tpu_compile.requires_libtpu
    def test_x():
      out = tpu_compile.run('from vit_jax.planner import tpu\\n'
                            'result = len(tpu.slice_devices("v3-8"))')
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest

import cpu_devices

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MARK = '@@tpu_compile_result@@'
#: Lines libtpu prints when it starts on a machine without a TPU.
NOISE = ('Logging before InitGoogle', 'could not determine TPU',
         'Source Location Trace', 'libtpu_init_utils', 'common_lib.cc',
         'Failed to find host bounds', 'TPU_WORKER_HOSTNAMES')


def libtpu_importable() -> bool:
  """Whether the child can load the TPU compiler."""
  return importlib.util.find_spec('libtpu') is not None


requires_libtpu = pytest.mark.skipif(
    not libtpu_importable(),
    reason='libtpu (the TPU compiler) is not installed; `make test` installs '
           'it (pip install -c constraints.txt "jax[tpu]")')


def quiet(stderr: str | bytes) -> str:
  """stderr without libtpu's start-up lines (a timed-out child's is bytes)."""
  if isinstance(stderr, bytes):
    stderr = stderr.decode(errors='replace')
  return '\n'.join(line for line in stderr.splitlines()
                   if line.strip() and not any(n in line for n in NOISE))


def child_env(accelerator: str = 'v3-8', env: dict | None = None) -> dict:
  """The environment of a child that compiles for a TPU slice: the host's
  CPU as jax's platform, libtpu told the slice and not to look for a
  metadata server, XLA's own optimization level (not the suite's XLA:CPU
  one, cpu_devices.py), and no persistent compilation cache (conftest.py's): an
  executable compiled for a topology without a TPU cannot be loaded back
  ("PjRtCompiler must be constructed with a Client"), so each entry would
  be serialized and written, then read again, fail and be recompiled."""
  out = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=cpu_devices.without_compile_flags(
                 os.environ.get('XLA_FLAGS', '')),
             TPU_ACCELERATOR_TYPE=accelerator, TPU_SKIP_MDS_QUERY='1',
             ALLOW_MULTIPLE_LIBTPU_LOAD='1',
             JAX_ENABLE_COMPILATION_CACHE='false')
  out.update(env or {})
  return out


def run(snippet: str, *, accelerator: str = 'v3-8', timeout: float = 600,
        env: dict | None = None) -> Any:
  """Runs `snippet` in a fresh Python and returns the JSON of its `result`.

  The snippet assigns a JSON-serialisable value to `result`. A failure
  (non-zero exit, no result, timeout) raises AssertionError with the
  snippet's filtered stderr.
  """
  code = (textwrap.dedent(snippet) +
          f'\nimport json as _json, sys as _sys\n'
          f'_sys.stdout.write("\\n{_MARK}" + _json.dumps(result) + "\\n")\n')
  try:
    proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT,
                          env=child_env(accelerator, env),
                          capture_output=True, text=True, timeout=timeout,
                          check=False)
  except subprocess.TimeoutExpired as e:
    raise AssertionError(f'the TPU compile snippet ran past {timeout:.0f} s:\n'
                         f'{quiet(e.stderr or "")[-4000:]}') from None
  lines = [l for l in proc.stdout.splitlines() if l.startswith(_MARK)]
  if proc.returncode or not lines:
    raise AssertionError(
        f'the TPU compile snippet failed (exit {proc.returncode}):\n'
        f'{quiet(proc.stderr)[-4000:]}')
  return json.loads(lines[-1][len(_MARK):])
