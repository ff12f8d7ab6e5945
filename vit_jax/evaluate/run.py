"""Evaluating one checkpoint: load it, rebuild its model, run, write results.

`evaluate_checkpoint(config, checkpoint, workdir)` is what
`python -m vit_jax.evaluate` runs. The checkpoint is a released `.npz` or the
workdir of one of our runs (its latest orbax checkpoint, or its exported
`params.npz`; its `config.json` names the model). The class count and the
representation size come from the checkpoint itself, and its head is used
exactly as saved (a head that does not fit the model is an error).

The resolution, when the config gives none, is the checkpoint's own: its
position-embedding grid times the model's pixels per token (the patch size,
times the ResNet stem's stride for hybrids), e.g. 384 for a released 384-px
fine-tuned file. A checkpoint without a learned position embedding uses its
run's image_size, else 224. A given resolution that differs from the
checkpoint's resamples the position embedding, and the log line that starts
the evaluation says so. Results go to `WORKDIR/results.json` (with
`image_size` and `checkpoint_image_size`) and are returned for the table.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Optional

from absl import logging
import jax

from vit_jax import models, parallel
from vit_jax.evaluate import build_evaluators, inputs

RESULTS = 'results.json'


def read_checkpoint(path: str) -> tuple[dict, Optional[dict]]:
  """(parameter tree, the run's config as a dict or None) of `path`."""
  from vit_jax import checkpoint  # pylint: disable=g-import-not-at-top
  if path.endswith('.npz'):
    if '://' not in path and not os.path.exists(path):
      raise FileNotFoundError(f'--checkpoint={path} does not exist; pass a '
                              f'released .npz or the workdir of a run.')
    return checkpoint.load_npz(path), None
  if not os.path.isdir(path):
    raise FileNotFoundError(f'--checkpoint={path} is neither an .npz file nor '
                            f'a run directory.')
  run_config = None
  config_path = os.path.join(path, 'config.json')
  if os.path.exists(config_path):
    with open(config_path) as f:
      run_config = json.load(f)
  if os.path.isdir(os.path.join(path, 'checkpoints')):
    from vit_jax import train_checkpoint  # pylint: disable=g-import-not-at-top
    return train_checkpoint.restore_params(path), run_config
  exported = os.path.join(path, 'params.npz')
  if os.path.exists(exported):
    return checkpoint.load_npz(exported), run_config
  raise FileNotFoundError(f'{path} holds neither checkpoints/ nor params.npz; '
                          f'pass a run directory or an .npz file.')


def model_config_for(config: Any, params: dict, run_config: Optional[dict],
                     checkpoint_path: str) -> dict:
  """The model section: the run's, overridden by what the config sets."""
  from vit_jax import config_lib  # pylint: disable=g-import-not-at-top
  defaults = config_lib.base_config().model
  model = dict((run_config or {}).get('model', {}))
  for key, value in inputs.as_dict(config.model).items():
    # What the config sets beyond the schema's defaults wins over the run's.
    if value not in (None, '') and (key not in model or key == 'name' or
                                    value != defaults.get(key)):
      model[key] = value
  if not model.get('name'):
    stem = os.path.basename(checkpoint_path).rsplit('.', 1)[0]
    try:
      model['name'] = models.get_spec(stem.split('_', 1)[-1]
                                      if stem.count('_') > 1 else stem).name
    except ValueError:
      raise ValueError(f'cannot tell the model of {checkpoint_path}; pass '
                       f'model=NAME, e.g. model=ViT-B/16.') from None
  if 'pre_logits' in params and not model.get('representation_size'):
    model['representation_size'] = int(params['pre_logits']['kernel'].shape[-1])
  return model


def head_classes(params: dict) -> Optional[int]:
  head = params.get('head')
  return int(head['kernel'].shape[-1]) if head and 'kernel' in head else None


def evaluate_checkpoint(config: Any, checkpoint_path: str, workdir: str
                        ) -> dict:
  """Runs every evaluator of `config.evals` on the checkpoint; see module doc."""
  from vit_jax import checkpoint, train  # pylint: disable=g-import-not-at-top
  workdir = train.check_workdir(workdir)
  if not inputs.as_dict(config.evals):
    raise ValueError('config.evals is empty: name at least one evaluator, '
                     'e.g. evals=classify.')
  tree, run_config = read_checkpoint(checkpoint_path)
  model_config = model_config_for(config, tree, run_config, checkpoint_path)
  num_classes = config.num_classes or head_classes(tree)
  model, _ = train.build_model(_as_config(model_config), num_classes)
  native = native_image_size(tree, model, run_config)
  image_size = config.image_size or native
  shapes = models.param_shapes(model, image_size)
  params = checkpoint.load_pretrained(tree, shapes, keep_head=True,
                                      name=checkpoint_path)
  logging.info('Evaluating %s (%s) at %s px%s: %s.', checkpoint_path,
               model_config['name'], image_size, _resolution_note(
                   image_size, native, bool(config.image_size)),
               ', '.join(inputs.as_dict(config.evals)))

  mesh = parallel.make_mesh(dict(config.mesh))
  rules = [tuple(r) for r in config.sharding.rules]
  params = parallel.put_sharded(params, parallel.tree_shardings(
      params, mesh, rules, config.sharding.fsdp_min_size))
  evaluators = build_evaluators(
      config.evals, model=model, mesh=mesh, image_size=image_size,
      num_classes=num_classes, data_dir=config.get('data_dir'),
      workdir=workdir, model_config=model_config, mesh_config=config.mesh)

  results = {'checkpoint': checkpoint_path, 'model': model_config['name'],
             'image_size': image_size, 'checkpoint_image_size': native,
             'num_classes': num_classes,
             'devices': f'{jax.device_count()} x {jax.devices()[0].device_kind}',
             'metrics': {}, 'seconds': {}}
  for ev in evaluators:
    start = time.perf_counter()
    results['metrics'][ev.name] = ev.run(params)
    results['seconds'][ev.name] = round(time.perf_counter() - start, 2)
    _write_json(os.path.join(workdir, RESULTS), results)  # After each one.
  return results


def native_image_size(tree: dict, model: Any,
                      run_config: Optional[dict] = None) -> int:
  """The resolution the checkpoint was trained or fine-tuned at.

  Its position-embedding grid times the model's pixels per token; without a
  learned position embedding, the run's image_size, else 224.
  """
  from vit_jax import checkpoint  # pylint: disable=g-import-not-at-top
  grid = checkpoint.posemb_grid(tree)
  if grid is None:
    size = (run_config or {}).get('image_size', 224)
    return size if isinstance(size, int) else tuple(size)
  (gh, gw), (ph, pw) = grid, models.pixels_per_token(model)
  return gh * ph if gh * ph == gw * pw else (gh * ph, gw * pw)


def _resolution_note(image_size, native, given: bool) -> str:
  if not given:
    return " (the checkpoint's own resolution)"
  if image_size != native:
    return (f' (given; the checkpoint is for {native} px: its position '
            f'embeddings are resampled)')
  return ''


def _as_config(model_config: dict):
  from vit_jax import config_lib  # pylint: disable=g-import-not-at-top
  c = config_lib.base_config().model
  unknown = sorted(set(model_config) - set(c))
  if unknown:
    raise ValueError(f'model config has unknown key(s) {unknown}; known: '
                     f'{sorted(c)}.')
  c.update(model_config)
  return c


def _write_json(path: str, obj: Any) -> None:
  if jax.process_index() != 0:
    return
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2)
  os.replace(tmp, path)


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
  return '\n'.join(lines)
