"""VTAB-1k of a checkpoint (a released .npz or a run's workdir): what `python -m vit_jax.evaluate ... evals=vtab` runs.

The model comes from the checkpoint (and its run's config.json), as for the
read-only evaluators; every task is fine-tuned through the training loop under
`WORKDIR/vtab/` (vtab.py), resumably.
"""

from __future__ import annotations

import os
from typing import Any

from vit_jax import workdir as workdir_lib
from vit_jax.evaluate import run as evaluate_run
from vit_jax.transfer import runs, vtab


def run(config: Any, checkpoint_path: str, workdir: str) -> dict:
  """Runs (or resumes) VTAB-1k; the table plus 'markdown' and 'stopped'."""
  workdir = workdir_lib.writable(workdir)  # The task runs check theirs.
  _, info = evaluate_run.describe(config, checkpoint_path)
  runner = vtab.runner_from_config(config.vtab, info.model,
                                   data_dir=config.get('data_dir'),
                                   base_config=config)
  root = os.path.join(workdir, 'vtab')
  with runs.RunComposer(workdir) as composer:
    try:
      table = runner.run(os.path.abspath(checkpoint_path)
                         if '://' not in checkpoint_path else checkpoint_path,
                         root, composer)
      stopped = None
    except runs.Stopped as stop:
      table, stopped = {'summary': {}}, f'{stop.where}: {stop.status}'
  markdown_path = os.path.join(root, 'vtab_results.md')
  markdown = open(markdown_path).read() if os.path.exists(markdown_path) else ''
  return {**table, 'markdown': markdown, 'stopped': stopped}
