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
  cli.configure_logging()  # Third-party INFO lines only with -v 1 or --logger_levels.

  import jax  # pylint: disable=g-import-not-at-top
  from vit_jax.evaluate import run  # pylint: disable=g-import-not-at-top
  try:
    cli.start_distributed()
    results = run.evaluate_checkpoint(_CONFIG.value, _CHECKPOINT.value,
                                      _WORKDIR.value)
  except (ValueError, FileNotFoundError, KeyError) as e:
    cli.fail(str(e).strip('"\''))
  if jax.process_index() == 0:
    print(run.table(results), flush=True)
    print(f'wrote {os.path.join(_WORKDIR.value, run.RESULTS)}', flush=True)


def _parse_flags(argv):
  """absl's parser, with a config file's error as one line and status 2."""
  cli.exit_on_help(argv)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    errors = [l for l in lines if l.split(':', 1)[0].endswith(('Error', 'Exception'))]
    line = (errors or lines)[-1]
    cli.fail(line.split(': ', 1)[1] if errors else line)


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
