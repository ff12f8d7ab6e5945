"""The fine-tuning learning-rate sweep: Table 4's grid on the dev split, then the final run with the best rate.

Paper App. B.1.1: the learning rate is chosen on a dev part of the training
set, then "for final results we train on the entire training set and evaluate
on the respective test data". `run_sweep(config, workdir, composer)` trains
one run per rate of `config.sweep.learning_rates` on `sweep.train_split`,
scored on `sweep.eval_split` (each in `WORKDIR/sweep/lr<rate>/`), picks the
rate with the best dev top-1, and returns the final config (the input config
with that rate), which the caller trains in WORKDIR itself. The table goes to
`WORKDIR/sweep_results.{json,md}`.

`final_learning_rate(config, workdir)` names the rate of a final run that
runs no sweep (`lr_source`): 'given' (the config's rate), 'sweep:<path>' (the
rate a finished sweep in the workdir chose on dev: the default of
configs/finetune.py:protocol=final) or 'table:configs/finetune.py' (its
per-dataset default, with its source in that file). A config whose rate is
the default says so with the sweep's dev splits and no rates.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional

import jax
import ml_collections

from vit_jax import config_lib, files
from vit_jax.transfer import runs

DEV = 'dev'
RESULTS = 'sweep_results.json'
TABLE_SOURCE = 'table:configs/finetune.py'


def dev_config(config: Any, learning_rate: float):
  """The config of one dev run: same recipe, dev splits, this rate, no export."""
  c = config.copy_and_resolve_references()
  c.sweep.update(learning_rates=(), train_split='', eval_split='')
  c.vtab.mode = None
  c.schedule.base_lr = float(learning_rate)
  c.input.data.split = config.sweep.train_split
  template = next(iter(config.evals.values()), None)
  if template is None:
    raise ValueError('the sweep scores each rate with the config\'s first '
                     'evaluator: add a classify evaluator to config.evals.')
  data = template.get('data') or config.input.data
  data = dict(data.to_dict() if hasattr(data, 'to_dict') else data)
  data['split'] = config.sweep.eval_split
  values = {k: v for k, v in template.items() if k not in ('type', 'split',
                                                           'data')}
  c.evals = ml_collections.ConfigDict()
  c.evals[DEV] = config_lib.evaluator_config(template.get('type', 'classify'),
                                             data=data, **values)
  c.export_npz = False
  return c


def chosen_rate(directory: str, train_split: str = '') -> Optional[float]:
  """The rate a finished sweep in `directory` chose (None: no finished sweep,
  or one on other dev splits than `train_split`, when given)."""
  table = files.read_json(os.path.join(directory, RESULTS))
  if not table or table.get('chosen_learning_rate') is None:
    return None
  if train_split and table.get('dev_train_split') != train_split:
    logging.warning('%s chose a rate on %s, not on %s: not used.',
                    os.path.join(directory, RESULTS),
                    table.get('dev_train_split'), train_split)
    return None
  return float(table['chosen_learning_rate'])


def final_learning_rate(config: Any, workdir: str) -> tuple[Any, str]:
  """(config with the final run's rate, lr_source) for a run without a sweep.

  The rate is the config's ('given') unless the config marks it as the
  default (sweep dev splits set, no rates: configs/finetune.py:protocol=final
  without lr=); then a finished sweep's choice in `workdir` replaces it
  ('sweep:<path>'), else it stays ('table:configs/finetune.py').
  """
  if config.sweep.learning_rates or not config.sweep.train_split:
    return config, 'given'
  rate = chosen_rate(workdir, config.sweep.train_split)
  final = config.copy_and_resolve_references()
  final.sweep.update(train_split='', eval_split='')  # The run sweeps nothing.
  if rate is None:
    return final, TABLE_SOURCE
  final.schedule.base_lr = rate
  return final, f'sweep:{os.path.join(workdir, RESULTS)}'


def run_sweep(config: Any, workdir: str, composer: runs.RunComposer):
  """Trains the grid on the dev protocol; returns the final config."""
  rates = tuple(float(r) for r in config.sweep.learning_rates)
  if not (config.sweep.train_split and config.sweep.eval_split):
    raise ValueError('sweep.learning_rates needs sweep.train_split and '
                     'sweep.eval_split (the dev protocol); configs/finetune.py'
                     ':protocol=sweep sets all three.')
  scores = {}
  for rate in rates:
    result = composer.train(dev_config(config, rate),
                            os.path.join(workdir, 'sweep', f'lr{rate:g}'),
                            f'sweep lr={rate:g} (dev)')
    scores[rate] = result.metrics[f'{DEV}/top1']
  best = max(rates, key=lambda r: scores[r])
  final = config.copy_and_resolve_references()
  final.sweep.update(learning_rates=(), train_split='', eval_split='')
  final.schedule.base_lr = best
  write_table(workdir, config, scores, best)
  logging.info('sweep: dev top-1 %s; chose lr=%g, now trained on %s '
               '(table: %s).', ', '.join(
                   f'lr={r:g} {100 * s:.2f}%' for r, s in scores.items()),
               best, config.input.data.split,
               os.path.join(workdir, 'sweep_results.md'))
  return final


def write_table(workdir: str, config: Any, scores: dict, best: float) -> None:
  """sweep_results.json and .md: dev top-1 per rate, the chosen one."""
  if jax.process_index() != 0:
    return
  files.write_json(os.path.join(workdir, RESULTS), {
      'dev_train_split': config.sweep.train_split,
      'dev_eval_split': config.sweep.eval_split,
      'dev_top1': {f'{r:g}': s for r, s in scores.items()},
      'chosen_learning_rate': best})
  lines = [f'Learning-rate sweep: trained on `{config.sweep.train_split}`, '
           f'scored on `{config.sweep.eval_split}` (dev protocol); the final '
           f'run trains with the chosen rate on the whole training split.', '',
           '| learning rate | dev top-1 | |', '|---|---|---|']
  for rate, score in scores.items():
    lines.append(f'| {rate:g} | {100 * score:.2f} | '
                 f'{"chosen" if rate == best else ""} |')
  files.write_text(os.path.join(workdir, 'sweep_results.md'),
                   '\n'.join(lines) + '\n')
