"""Command-line pieces the entry points share: the multi-process flags and one-line failures.

Importing this module defines --coordinator_address, --num_processes and
--process_id (absl flags) once for whichever entry point runs.
"""

from __future__ import annotations

import re
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


def config_error(e: BaseException) -> str:
  """The most specific line of a config-loading error chain."""
  top = str(e)
  if top.startswith('flag --') and 'Traceback' not in top:
    return top.splitlines()[0] + ' (a value of the wrong type)'
  while (e.__cause__ or e.__context__) is not None:
    e = e.__cause__ or e.__context__
  text = str(e)
  if isinstance(e, (KeyError, flags.UnrecognizedFlagError)):
    key = re.search(r"[\w.]+", text.split('Did you mean')[0].replace(
        'Unknown command line flag', ''))
    hint = re.search(r'Did you mean "(\w+)"', text)
    return (f'unknown config key {key[0] if key else text!r}'
            + (f' (did you mean {hint[1]!r}?)' if hint else '')
            + '; the keys and their types are declared in '
            'vit_jax/config_lib.py.')
  lines = [l.strip() for l in text.splitlines() if l.strip()]
  return ' '.join(lines[:1] + [l for l in lines[1:] if 'Errno' in l])


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing with one-line errors for bad config files, keys and values.

  What every entry point with a --config flag uses as `flags_parser`.

  A missing config file, an unknown `--config.key` or a value of the wrong
  type is reported before anything is imported or compiled.
  """
  try:
    rest = flags.FLAGS(argv)
    if flags.FLAGS['config'].value is not None:
      flags.FLAGS['config'].value.get('seed')  # Loads a lazily failing file.
  except (flags.Error, KeyError, TypeError, ValueError, AttributeError,
          OSError) as e:
    fail(config_error(e))
  return rest
