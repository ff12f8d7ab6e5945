"""Command-line pieces the entry points share: the multi-process flags, --help and one-line failures.

Importing this module defines --coordinator_address, --num_processes,
--process_id and --heartbeat_timeout_s (absl flags) once for whichever entry
point runs. An entry point that calls `flags.adopt_module_key_flags(cli)`
lists them in its --help.
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import os
import re
import sys
import traceback
from typing import NoReturn, Sequence

from absl import flags
# absl.logging defines --verbosity and --logger_levels (read by configure_logging).
from absl import logging as absl_logging  # pylint: disable=unused-import

COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0 (multi-process runs '
    'outside Cloud TPU and SLURM).')
NUM_PROCESSES = flags.DEFINE_integer('num_processes', None,
                                     'Number of processes.')
PROCESS_ID = flags.DEFINE_integer('process_id', None,
                                  'This process\'s id, from 0.')
# The default is parallel.DEFAULT_HEARTBEAT_TIMEOUT_S (not imported: jax loads
# late); docs/launch.md has the measurements behind it.
HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    'heartbeat_timeout_s', 30, 'With several processes: seconds without a '
    'heartbeat after which a process counts as lost; the others then exit '
    'with status 76 (rerun all of them to resume).')


# absl's help flags (and argparse's -h) -> whether the short help is asked for.
_HELP_ARGS = {'--help': True, '-help': True, '--helpshort': True,
              '-helpshort': True, '-?': True, '-h': True, '--helpfull': False,
              '-helpfull': False}


def exit_on_help(argv: Sequence[str]) -> None:
  """--help (or -h): the entry point's docstring and its flags on stdout, exit 0.

  absl's own --help exits 1 and heads the flags with the file's path; here
  they are headed with the module as users type it (`python -m vit_jax.main`).
  --help lists the main module's key flags (those defined there and those it
  adopts); --helpfull lists every flag.
  """
  args = argv[1:argv.index('--')] if '--' in argv else argv[1:]
  wanted = [_HELP_ARGS[a] for a in args if a in _HELP_ARGS]
  if not wanted:
    return
  main = sys.modules['__main__']
  spec = getattr(main, '__spec__', None)
  prog = ('python -m ' + spec.name.removesuffix('.__main__')) if spec else sys.argv[0]
  listed = (flags.FLAGS.main_module_help() if all(wanted) else
            flags.FLAGS.get_help())
  print(f'{(main.__doc__ or prog).strip()}\n\nflags:\n'
        + listed.lstrip('\n').replace(f'{sys.argv[0]}:', f'{prog}:'))
  sys.exit(0)


# Libraries that log routine INFO lines (orbax and clu log every file they
# touch through absl's logger; jax its compilation cache; TensorFlow its ops).
THIRD_PARTY_LOGGERS = ('absl', 'jax', 'tensorflow')


def configure_logging() -> None:
  """Our INFO lines on the console; other libraries' only when asked for.

  Asking: absl's `--verbosity=0` (INFO) or `=1` (DEBUG), `-v` for short,
  sets that level for every logger and leaves TensorFlow's C++ log on;
  absl's `--logger_levels=absl:INFO,jax:DEBUG` sets the named loggers only
  (orbax and clu log through `absl`); TF_CPP_MIN_LOG_LEVEL and
  TF_ENABLE_ONEDNN_OPTS from the environment are kept. Also chooses the
  CPU on a host without TPU or GPU (`skip_absent_tpu`): libtpu's start-up
  errors would otherwise be the first lines of every run.
  """
  if flags.FLAGS['verbosity'].present:
    return  # absl already set the level the user asked for.
  logging.getLogger().setLevel(logging.INFO)
  asked = flags.FLAGS['logger_levels'].value
  for name in THIRD_PARTY_LOGGERS:
    if name not in asked:
      logging.getLogger(name).setLevel(logging.WARNING)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  # TensorFlow (the input pipeline, clu's writers) logs its oneDNN notice
  # from C++ before absl's log is set up, past TF_CPP_MIN_LOG_LEVEL; the
  # CPU input pipeline gains nothing from oneDNN's kernels.
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
  skip_absent_tpu()


# Google's PCI vendor id: a Cloud TPU chip on this host.
_GOOGLE_PCI_VENDOR = '0x1ae0'
_GPU_PLUGINS = ('jax_cuda13_plugin', 'jax_cuda12_plugin', 'jax_rocm7_plugin',
                'jax_rocm60_plugin')


def tpu_chips_present() -> bool:
  """Whether this host has a TPU chip (a Google PCI device, /dev/accel*)."""
  for vendor in glob.glob('/sys/bus/pci/devices/*/vendor'):
    try:
      with open(vendor, encoding='ascii') as f:
        if f.read().strip() == _GOOGLE_PCI_VENDOR:
          return True
    except OSError:
      continue
  return bool(glob.glob('/dev/accel[0-9]*'))


def skip_absent_tpu() -> None:
  """On a host without TPU or GPU plugin, jax uses the CPU without asking libtpu.

  libtpu (installed for the TPU preflight) makes jax try a TPU backend when
  JAX_PLATFORMS is unset; on a machine without a chip it prints TPU errors
  and a C++ trace before jax falls back to the CPU. A JAX_PLATFORMS the user
  set is kept, and so is jax's own choice on a TPU host or where a GPU
  plugin is installed. The TPU preflight compiles with JAX_PLATFORMS=cpu.
  """
  if os.environ.get('JAX_PLATFORMS') or tpu_chips_present():
    return
  if any(importlib.util.find_spec(p) is not None for p in _GPU_PLUGINS):
    return
  jax = sys.modules.get('jax')
  if jax is None:
    os.environ['JAX_PLATFORMS'] = 'cpu'
    return
  # Imported already (an entry point inside a package that imports jax):
  # the choice still holds until the first backend starts.
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  if not xla_bridge.backends_are_initialized() and not jax.config.jax_platforms:
    jax.config.update('jax_platforms', 'cpu')


def fail(message: str, status: int = 2) -> NoReturn:
  """Prints `error: message` on stderr and exits (no traceback)."""
  print(f'error: {message}', file=sys.stderr)
  sys.exit(status)


def message_of(e: BaseException) -> str:
  """The text of an input error: a KeyError's own message, not its repr
  (str(KeyError('x')) is "'x'"); any other error's str."""
  if isinstance(e, KeyError) and len(e.args) == 1:
    return str(e.args[0])
  return str(e)


def start_distributed() -> None:
  """jax.distributed from the flags (or the environment), then CPU settings."""
  # Late: a CLI parses its flags before jax loads (a bad flag fails fast).
  from vit_jax import parallel  # pylint: disable=g-import-not-at-top
  parallel.initialize_distributed(COORDINATOR.value, NUM_PROCESSES.value,
                                  PROCESS_ID.value, HEARTBEAT_TIMEOUT.value)
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
  type is reported before anything is imported or compiled. --help exits 0.
  """
  exit_on_help(argv)
  try:
    rest = flags.FLAGS(argv)
    if flags.FLAGS['config'].value is not None:
      flags.FLAGS['config'].value.get('seed')  # Loads a lazily failing file.
  except (flags.Error, KeyError, TypeError, ValueError, AttributeError,
          OSError) as e:
    fail(config_error(e))
  except Exception as e:  # pylint: disable=broad-except
    fail(_raised_in_config(e))
  return rest


def _raised_in_config(e: BaseException) -> str:
  """'FILE:LINE: the config file raised X: message' for any other error."""
  frame = traceback.extract_tb(e.__traceback__)[-1]
  first = (str(e).strip().splitlines() or [''])[0]
  return (f'{frame.filename}:{frame.lineno}: the config file raised '
          f'{type(e).__name__}: {first}; fix the config file or its '
          f'arguments.')
