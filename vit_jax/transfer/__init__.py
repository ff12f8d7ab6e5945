"""Transfer: what trains on top of the training loop (the fine-tuning sweep, VTAB-1k).

    result = transfer.run(config, workdir)   # what `python -m vit_jax.main` runs

`run` composes `train.train_and_evaluate` runs; the loop itself never imports
this package. In order:

1. `config.sweep.learning_rates` set (configs/finetune.py:protocol=sweep):
   the grid under the dev protocol, each rate in `WORKDIR/sweep/lr<rate>/`,
   then the run in WORKDIR with the best rate (sweep.py). Otherwise a
   fine-tuning whose rate is the recipe's default takes the rate a finished
   sweep in WORKDIR chose (`sweep.final_learning_rate`; the log names the
   `lr_source`).
2. The run in WORKDIR.
3. `config.vtab.mode` set: VTAB-1k of the run's final parameters, each task
   run in `WORKDIR/vtab/step_<N>/<task>/...` (vtab.py).

`python -m vit_jax.transfer.table` (table.py) composes the same runs into
the paper's Table 2 column of one checkpoint: every row fine-tuned per
seed, VTAB-1k, mean ± std and core-hours per row.

Every run has its own workdir, checkpoints and preemption handling; SIGTERM
anywhere saves and ends with status 'preempted' (exit 0), and rerunning the
same command resumes. The children's core-hours are added to the run's
(`WORKDIR/transfer_account.json`) and the compute cap sees all of them
(runs.py).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

from vit_jax import train
from vit_jax import workdir as workdir_lib
from vit_jax.transfer import runs, sweep, vtab


def run(config: Any, workdir: str) -> train.TrainResult:
  """The sweep (if any), the run itself, then VTAB-1k (if asked for)."""
  # Not created or probed here: each run checks its inputs first, then its
  # workdir, so that a refused command leaves the workdir as it found it.
  workdir = workdir_lib.absolute(workdir)
  with runs.RunComposer(workdir, config.budget) as composer:
    try:
      if config.sweep.learning_rates:
        config = sweep.run_sweep(config, workdir, composer)
      elif config.init_from:  # A fine-tuning: say where its rate came from.
        config, source = sweep.final_learning_rate(config, workdir)
        logging.info('learning rate %g (lr_source=%s).',
                     config.schedule.base_lr, source)
      result = train.train_and_evaluate(config, workdir)
      composer.parent_core_hours = result.core_hours
      if result.status == train.RunStatus.DONE and config.vtab.mode:
        metrics = run_vtab(config, workdir, result.step, composer)
        result = dataclasses.replace(
            result, eval_metrics={**result.eval_metrics, **metrics})
    except runs.Stopped as stop:  # The steps are the stopped run's.
      return train.TrainResult(status=stop.status, step=stop.step or 0,
                               total_steps=(stop.total_steps or
                                            config.total_steps),
                               eval_metrics={}, img_per_sec=None,
                               core_hours=composer.core_hours,
                               stopped_in=stop.where)
  return dataclasses.replace(result, core_hours=composer.core_hours)


def run_vtab(config: Any, workdir: str, step: int,
             composer: runs.RunComposer) -> dict:
  """VTAB-1k of the run in `workdir` at `step`; {'vtab/<metric>': value}."""
  runner = vtab.runner_from_config(
      config.vtab, config.model, data_dir=config.input.get('data_dir'),
      base_config=config)
  table = runner.run(workdir, os.path.join(workdir, 'vtab', f'step_{step}'),
                     composer)
  return {f'vtab/{k}': v for k, v in table['summary'].items()}
