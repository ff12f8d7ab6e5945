"""Command-line entry: python -m vit_jax.main --config=configs/X.py:ARGS --workdir=DIR.

Trains (pretraining or fine-tuning) with the config file's recipe; rerunning
the same command resumes from the workdir's latest good checkpoint. With
`--compile_only [--topology=v3-32]` it compiles the job's steps (for a TPU
slice: with the TPU compiler, on this machine), prints per-device HBM,
collectives and the predicted step time, and runs nothing
(`vit_jax.preflight`): exit 0 when it fits, 2 when it does not. Exit
status: 0 when done, saved after a preemption, or stopped by SIGTERM before
the first step; 75 when the compute cap stopped the run; 74 when a checkpoint
could not be written (disk full or another OS error; earlier checkpoints are
intact); 76 when a peer process of a multi-process run was lost (one line
names it; rerun all processes to resume from the last checkpoint); 1 on a
non-finite loss; 2 on bad input (including a config file that raises, a
workdir locked by another run, or no readable checkpoint).
"""

from __future__ import annotations

import os
import sys
from typing import Optional

from absl import app, flags
from ml_collections import config_flags

from vit_jax import cli, preemption
from vit_jax import workdir as workdir_lib

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, optionally with named arguments: '
    'configs/finetune.py:model=B/16,dataset=cifar10', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, '
                               'metrics and the exported params.npz.')
_COMPILE_ONLY = flags.DEFINE_bool(
    'compile_only', False, 'Compile the training and evaluation steps of the '
    'config (for --topology, or this machine\'s devices), print per-device '
    'HBM, collectives and the predicted step time, run nothing; exit 2 when '
    'the job does not compile or fit. Needs no --workdir.')
_TOPOLOGY = flags.DEFINE_string(
    'topology', None, 'With --compile_only: a Cloud TPU slice to compile for '
    'with the TPU compiler (libtpu), e.g. v3-32, v4-64, v5litepod-256.')
flags.adopt_module_key_flags(cli)  # --help lists the multi-process flags.


def main(argv) -> None:
  if len(argv) > 1:
    cli.fail(f'unexpected arguments {argv[1:]}; pass options as --flag=value.')
  if _CONFIG.value is None:
    cli.fail('--config is required, e.g. --config=configs/quickstart.py')
  if _TOPOLOGY.value and not _COMPILE_ONLY.value:
    cli.fail('--topology goes with --compile_only (a run uses the devices it '
             'is on); add --compile_only.')
  if _COMPILE_ONLY.value:
    _compile_only(_CONFIG.value, _TOPOLOGY.value)
    return
  if not _WORKDIR.value:
    cli.fail('--workdir is required: the directory for checkpoints and metrics.')
  with preemption.handled():  # SIGTERM from here on: recorded, honoured.
    result = _train(_CONFIG.value, _WORKDIR.value)
  import jax  # pylint: disable=g-import-not-at-top  (loaded by _train)
  from vit_jax import train  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:
    exported = (result.status == train.RunStatus.DONE and
                _CONFIG.value.export_npz)
    params = os.path.join(_WORKDIR.value, workdir_lib.PARAMS)
    print(summary_line(result, params if exported else None), flush=True)
  if result.status == train.RunStatus.BUDGET_EXHAUSTED:
    sys.exit(train.EXIT_BUDGET_EXHAUSTED)


def _train(config, workdir: str):
  """The run (transfer.run: sweep, training, VTAB) with one-line errors."""
  cli.configure_logging()  # Third-party INFO lines only with -v 0 or --logger_levels.
  # Imported after the flags are parsed: a bad flag fails before jax loads.
  from vit_jax import parallel, train, transfer  # pylint: disable=g-import-not-at-top
  from vit_jax import train_checkpoint  # pylint: disable=g-import-not-at-top
  train_checkpoint.install_run_hooks()  # A failed save: one line, exit 74.
  try:
    cli.start_distributed()  # Several processes: jax's preemption sync.
    with parallel.lost_peer_explains_errors():  # exit 76 when a peer was lost
      return transfer.run(config, workdir)
  except train.NonFiniteLossError as e:
    cli.fail(str(e), status=1)
  except train.SaveError as e:
    _exit_save_failed(str(e))
  except (ValueError, FileNotFoundError, KeyError) as e:
    cli.fail(cli.message_of(e))
  except OSError as e:
    if e.errno not in train_checkpoint.DISK_FULL_ERRNOS:
      raise
    _exit_save_failed(f'{e.filename or workdir}: {e.strerror} [errno '
                      f'{e.errno}]; free space, then rerun to resume from the '
                      f'last checkpoint.')


def _compile_only(config, topology: Optional[str]) -> None:
  """The preflight (vit_jax.preflight): report, then exit 0 or 2."""
  cli.configure_logging()
  from vit_jax import config_lib, preflight, train  # pylint: disable=g-import-not-at-top
  try:
    config_lib.check_schema(config)
    train.resolve_model(config)
    report = preflight.run(config, topology)
  except (ValueError, FileNotFoundError, KeyError) as e:
    cli.fail(cli.message_of(e))
  print(preflight.format_report(report), flush=True)
  try:
    preflight.check(report)
  except preflight.PreflightError as e:
    cli.fail(str(e))


def _exit_save_failed(message: str) -> None:
  """One line and exit 74, without joining orbax's save threads.

  They may still run; exiting without them keeps their shutdown errors off
  the console (the checkpoints on disk are final).
  """
  from vit_jax import train  # pylint: disable=g-import-not-at-top  (loaded by then)
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(train.EXIT_SAVE_FAILED)  # pylint: disable=protected-access


def summary_line(result, params_path: Optional[str] = None) -> str:
  """One line a person reads at the end: how it ended, what it measured and
  where the final parameters were written (`params_path`, when exported)."""
  parts = [f'SUMMARY status={result.status}',
           f'steps={result.step}/{result.total_steps}']
  if result.stopped_in:
    parts.append(f'stopped_in="{result.stopped_in}"')
  parts += [f'{k}={v:.4f}' for k, v in sorted(result.eval_metrics.items())
            if isinstance(v, float) and 'num_examples' not in k]
  if result.img_per_sec:
    parts.append(f'img/s={result.img_per_sec:.1f}')
  parts.append(f'core_hours={result.core_hours:.4f}')
  if params_path:
    parts.append(f'params={params_path}')
  return '  '.join(parts)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
