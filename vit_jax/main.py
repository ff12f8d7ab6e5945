"""Command-line entry: python -m vit_jax.main --config=configs/X.py:ARGS --workdir=DIR.

Trains (pretraining or fine-tuning) with the config file's recipe; rerunning
the same command resumes from the workdir's latest good checkpoint. Exit
status: 0 when done, saved after a preemption, or stopped by SIGTERM before
the first step; 75 when the compute cap stopped the run; 74 when a checkpoint
could not be written (disk full or another OS error; earlier checkpoints are
intact); 1 on a non-finite loss; 2 on bad input (including a config file that
raises, a workdir locked by another run, or no readable checkpoint).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import traceback

from absl import app, flags
from ml_collections import config_flags

from vit_jax import cli

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, optionally with named arguments: '
    'configs/finetune.py:model=B/16,dataset=cifar10', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, '
                               'metrics and the exported params.npz.')


def main(argv) -> None:
  if len(argv) > 1:
    cli.fail(f'unexpected arguments {argv[1:]}; pass options as --flag=value.')
  if _CONFIG.value is None:
    cli.fail('--config is required, e.g. --config=configs/quickstart.py')
  if not _WORKDIR.value:
    cli.fail('--workdir is required: the directory for checkpoints and metrics.')
  # Until the training loop takes over SIGTERM: nothing is trained yet.
  signal.signal(signal.SIGTERM, _stop_before_training)
  logging.getLogger().setLevel(logging.INFO)
  # orbax and clu log every file they touch through absl: keep their warnings.
  for name in ('absl', 'jax'):
    logging.getLogger(name).setLevel(logging.WARNING)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

  import jax  # pylint: disable=g-import-not-at-top
  from vit_jax import train  # pylint: disable=g-import-not-at-top
  from vit_jax import train_checkpoint  # pylint: disable=g-import-not-at-top
  try:
    cli.start_distributed()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # train handles it now.
    result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except train.NonFiniteLossError as e:
    cli.fail(str(e), status=1)
  except train.SaveError as e:
    # orbax's save threads may still run; exiting without joining them keeps
    # their shutdown errors off the console (the checkpoints on disk are final).
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(train.EXIT_SAVE_FAILED)  # pylint: disable=protected-access
  except (ValueError, FileNotFoundError, KeyError) as e:
    cli.fail(str(e).strip('"\''))
  except OSError as e:
    if e.errno not in train_checkpoint.DISK_FULL_ERRNOS:
      raise
    cli.fail(f'{e.filename or _WORKDIR.value}: {e.strerror} [errno {e.errno}]'
             f'; free space, then rerun to resume from the last checkpoint.',
             status=train.EXIT_SAVE_FAILED)
  if jax.process_index() == 0:
    print(summary_line(result), flush=True)
  if result.status == 'budget_exhausted':
    sys.exit(train.EXIT_BUDGET_EXHAUSTED)


def _stop_before_training(signum, frame) -> None:
  del signum, frame
  print('SIGTERM before the first step: nothing was trained in this run; '
        'rerun the same command to start or resume.', file=sys.stderr,
        flush=True)
  sys.exit(0)


def summary_line(result) -> str:
  """One line a person reads at the end: how it ended and what it measured."""
  parts = [f'SUMMARY status={result.status}',
           f'steps={result.step}/{result.total_steps}']
  parts += [f'{k}={v:.4f}' for k, v in sorted(result.eval_metrics.items())
            if isinstance(v, float) and 'num_examples' not in k]
  if result.img_per_sec:
    parts.append(f'img/s={result.img_per_sec:.1f}')
  parts.append(f'core_hours={result.core_hours:.4f}')
  return '  '.join(parts)


def _config_error(e: BaseException) -> str:
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

  A missing config file, an unknown `--config.key` or a value of the wrong
  type is reported before anything is imported or compiled.
  """
  try:
    rest = flags.FLAGS(argv)
    if flags.FLAGS['config'].value is not None:
      flags.FLAGS['config'].value.get('seed')  # Loads a lazily failing file.
  except (flags.Error, KeyError, TypeError, ValueError, AttributeError,
          OSError) as e:
    cli.fail(_config_error(e))
  except Exception as e:  # pylint: disable=broad-except
    cli.fail(_raised_in_config(e))
  return rest


def _raised_in_config(e: BaseException) -> str:
  """'FILE:LINE: get_config raised X: message' for any other error."""
  frame = traceback.extract_tb(e.__traceback__)[-1]
  first = (str(e).strip().splitlines() or [''])[0]
  return (f'{frame.filename}:{frame.lineno}: the config file raised '
          f'{type(e).__name__}: {first}; fix the config file or its '
          f'arguments.')


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
