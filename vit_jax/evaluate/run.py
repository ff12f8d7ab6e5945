"""Evaluating one checkpoint: load it, rebuild its model, run, write results.

`evaluate_checkpoint(config, checkpoint, workdir)` is what
`python -m vit_jax.evaluate` runs. The checkpoint is a released `.npz` or the
workdir of one of our runs; vit_jax.pretrained reads its model (the run's
config.json, or the file name and the arrays), class count and resolution.
Without an image size the evaluation runs at the checkpoint's own resolution;
with another one the position embeddings are resampled and the log line that
starts the evaluation says so. Results go to `WORKDIR/results.json` and are
returned for the table; `protocol` there (and lines under the printed table)
says what an evaluator scored beyond its numbers (ReaL's view, the datasets
of the few-shot mean).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import jax

from vit_jax import (checkpoint, config_lib, files, models, parallel,
                     pretrained)
from vit_jax import workdir as workdir_lib
from vit_jax.evaluate import build_evaluators, inputs

RESULTS = 'results.json'


def requested_model(config: Any) -> dict:
  """What the evaluation config sets in `model` beyond the schema's defaults."""
  defaults = config_lib.base_config().model
  return {k: v for k, v in inputs.as_dict(config.model).items()
          if v not in (None, '') and (k == 'name' or v != defaults.get(k))}


def describe(config: Any, checkpoint_path: str) -> tuple[dict, Any]:
  """(parameter tree, pretrained.Described) of the checkpoint to evaluate."""
  tree, run_config = pretrained.read(checkpoint_path)
  return tree, pretrained.describe(checkpoint_path, tree, run_config,
                                   requested_model(config))


def evaluate_checkpoint(config: Any, checkpoint_path: str, workdir: str
                        ) -> dict:
  """Runs every evaluator of `config.evals` on the checkpoint; see module doc."""
  if not inputs.as_dict(config.evals):
    raise ValueError('config.evals is empty: name at least one evaluator, '
                     'e.g. evals=classify.')
  tree, info = describe(config, checkpoint_path)
  num_classes = config.num_classes or info.num_classes
  image_size = config.image_size or info.image_size
  model, _ = models.build(info.model, num_classes)
  models.check_image_size(model, image_size, label=info.label)
  params = checkpoint.load_pretrained(
      tree, models.param_shapes(model, image_size), name=checkpoint_path,
      keep_head=True)  # Evaluation uses the head exactly as saved.
  note = (" (the checkpoint's own resolution)" if image_size == info.image_size
          else f' (given; the checkpoint is for {info.image_size} px: its '
          f'position embeddings are resampled)')
  logging.info('Evaluating %s (%s) at %s px%s.', checkpoint_path, info.label,
               image_size, note)

  mesh = parallel.make_mesh(dict(config.mesh))
  rules = [tuple(r) for r in config.sharding.rules]
  params = parallel.put_sharded(params, parallel.tree_shardings(
      params, mesh, rules, config.sharding.fsdp_min_size))
  evaluators = build_evaluators(
      config.evals, model=model, mesh=mesh, image_size=image_size,
      num_classes=num_classes, data_dir=config.get('data_dir'))
  # After the checks: a refusal writes nothing. No checkpoints/ (it trains
  # nothing): results.json only.
  workdir = workdir_lib.writable(workdir)

  results = {'checkpoint': checkpoint_path, 'model': info.label,
             'image_size': image_size,
             'checkpoint_image_size': info.image_size,
             'num_classes': num_classes,
             'class_names': info.class_names,
             'devices': f'{jax.device_count()} x {jax.devices()[0].device_kind}',
             'metrics': {}, 'seconds': {}, 'protocol': {}}
  for ev in evaluators:
    # What was scored beyond the numbers: ReaL's view, the few-shot mean's
    # datasets (an evaluator's `protocol`, where it has one).
    if getattr(ev, 'protocol', None):
      results['protocol'][ev.name] = ev.protocol
    start = time.perf_counter()
    results['metrics'][ev.name] = ev.run(params)
    results['seconds'][ev.name] = round(time.perf_counter() - start, 2)
    _write_json(os.path.join(workdir, RESULTS), results)  # After each one.
  return results


def _write_json(path: str, obj: Any) -> None:
  if jax.process_index() == 0:
    files.write_json(path, obj)


def table(results: dict) -> str:
  """The printed table: evaluator, metric, value (accuracies in percent)."""
  rows = [('evaluator', 'metric', 'value')]
  for name, metrics in results['metrics'].items():
    for metric, value in metrics.items():
      percent = not ('num_' in metric or metric.endswith('_reg'))
      rows.append((name, metric, f'{100 * value:.2f}' if percent
                   else f'{value:g}'))
  widths = [max(len(r[i]) for r in rows) for i in range(3)]
  lines = [f'{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}'
           for r in rows]
  lines.insert(1, '-' * len(lines[0]))
  for name, protocol in results.get('protocol', {}).items():
    parts = [f'{key.replace("_", " ")}: ' + (
        ', '.join(value) if isinstance(value, (list, tuple)) else str(value))
             for key, value in protocol.items()
             if value not in (None, '', [], ())]
    if parts:  # e.g. "real: view: resize; pp: decode|resize(384)|..."
      lines.append(f'{name}: ' + '; '.join(parts))
  return '\n'.join(lines)
