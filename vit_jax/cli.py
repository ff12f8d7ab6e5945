"""Command-line pieces the entry points share: the multi-process flags and one-line failures.

Importing this module defines --coordinator_address, --num_processes and
--process_id (absl flags) once for whichever entry point runs.
"""

from __future__ import annotations

import sys
from typing import NoReturn

from absl import flags

COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0 (multi-process runs '
    'outside Cloud TPU and SLURM).')
NUM_PROCESSES = flags.DEFINE_integer('num_processes', None,
                                     'Number of processes.')
PROCESS_ID = flags.DEFINE_integer('process_id', None,
                                  'This process\'s id, from 0.')


def fail(message: str, status: int = 2) -> NoReturn:
  """Prints `error: message` on stderr and exits (no traceback)."""
  print(f'error: {message}', file=sys.stderr)
  sys.exit(status)


def start_distributed() -> None:
  """jax.distributed from the flags (or the environment), then CPU settings."""
  from vit_jax import parallel  # pylint: disable=g-import-not-at-top
  parallel.initialize_distributed(COORDINATOR.value, NUM_PROCESSES.value,
                                  PROCESS_ID.value)
  parallel.configure_cpu()
