"""Command line: python -m vit_jax.evaluate --config=configs/evaluate.py:ARGS
--checkpoint=PATH --workdir=DIR.

Runs the config's evaluators on a released .npz or one of our runs, prints a
table and writes DIR/results.json (VTAB also writes DIR/vtab/.../
vtab_results.{json,md}). Exit status 0 on success, 2 on bad input.
"""

from __future__ import annotations

import os

from absl import app, flags
from ml_collections import config_flags

from vit_jax import cli

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file with named arguments, e.g. '
    'configs/evaluate.py:evals=classify+fewshot,dataset=digits,fewshot=digits')
_CHECKPOINT = flags.DEFINE_string(
    'checkpoint', None, 'A released .npz or the workdir of a vit_jax run.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where results are written.')
flags.adopt_module_key_flags(cli)  # --help lists the multi-process flags.


def main(argv) -> None:
  if len(argv) > 1:
    cli.fail(f'unexpected arguments {argv[1:]}; pass options as --flag=value.')
  for flag, example in ((_CONFIG, 'configs/evaluate.py:evals=fewshot'),
                        (_CHECKPOINT, 'runs/quickstart or ViT-B_16.npz'),
                        (_WORKDIR, 'runs/eval')):
    if not flag.value:
      cli.fail(f'--{flag.name} is required, e.g. --{flag.name}={example}')
  cli.configure_logging()  # Third-party INFO lines only with -v 0 or --logger_levels.

  # Imported after the flags are parsed: a bad flag fails before jax loads.
  import jax  # pylint: disable=g-import-not-at-top
  from vit_jax.evaluate import run  # pylint: disable=g-import-not-at-top
  from vit_jax import parallel, train_checkpoint  # pylint: disable=g-import-not-at-top
  from vit_jax.transfer import vtab_checkpoint  # pylint: disable=g-import-not-at-top
  config = _CONFIG.value
  vtab_mode = config.get('vtab') and config.vtab.mode
  if vtab_mode:  # It trains a run per task (main.py installs the same).
    train_checkpoint.install_run_hooks()
  try:
    cli.start_distributed()
    results = table = None
    with parallel.lost_peer_explains_errors():  # exit 76 when a peer was lost
      if config.evals or not vtab_mode:
        results = run.evaluate_checkpoint(config, _CHECKPOINT.value,
                                          _WORKDIR.value)
      if vtab_mode:
        # VTAB-1k trains a run per task: the transfer layer runs it.
        table = vtab_checkpoint.run(config, _CHECKPOINT.value, _WORKDIR.value)
  except (ValueError, FileNotFoundError, KeyError) as e:
    cli.fail(cli.message_of(e))
  if jax.process_index() != 0:
    return
  if results is not None:
    print(run.table(results), flush=True)
    print(f'wrote {os.path.join(_WORKDIR.value, run.RESULTS)}', flush=True)
  if table is not None:
    print(table['markdown'], flush=True)
    if table['stopped']:
      print(f'VTAB stopped early ({table["stopped"]}); rerun the same command '
            f'to resume.', flush=True)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
