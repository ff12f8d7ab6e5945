"""Command-line entry: python -m vit_jax.main --config=configs/X.py:ARGS --workdir=DIR.

Trains (pretraining or fine-tuning) with the config file's recipe; rerunning
the same command resumes from the workdir's latest checkpoint. Exit status: 0
when done or saved after a preemption, 75 when the compute cap stopped the
run, 1 on a non-finite loss, 2 on bad input.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

from absl import app, flags
from ml_collections import config_flags

from vit_jax import cli

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, optionally with named arguments: '
    'configs/finetune.py:model=B/16,dataset=cifar10', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, '
                               'metrics and the exported params.npz.')
flags.adopt_module_key_flags(cli)  # --help lists the multi-process flags.


def main(argv) -> None:
  if len(argv) > 1:
    cli.fail(f'unexpected arguments {argv[1:]}; pass options as --flag=value.')
  if _CONFIG.value is None:
    cli.fail('--config is required, e.g. --config=configs/quickstart.py')
  if not _WORKDIR.value:
    cli.fail('--workdir is required: the directory for checkpoints and metrics.')
  cli.configure_logging()  # Third-party INFO lines only with -v 0 or --logger_levels.

  # Imported after the flags are parsed: a bad flag fails before jax loads.
  import jax  # pylint: disable=g-import-not-at-top
  from vit_jax import train, transfer  # pylint: disable=g-import-not-at-top
  try:
    cli.start_distributed()
    result = transfer.run(_CONFIG.value, _WORKDIR.value)
  except train.NonFiniteLossError as e:
    cli.fail(str(e), status=1)
  except (ValueError, FileNotFoundError, KeyError) as e:
    cli.fail(str(e).strip('"\''))
  if jax.process_index() == 0:
    exported = result.status == 'done' and _CONFIG.value.export_npz
    print(summary_line(result, os.path.join(_WORKDIR.value, 'params.npz')
                       if exported else None), flush=True)
  if result.status == 'budget_exhausted':
    sys.exit(train.EXIT_BUDGET_EXHAUSTED)


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
