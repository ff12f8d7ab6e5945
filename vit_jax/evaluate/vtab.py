"""VTAB-1k: fine-tune a checkpoint on each of the 19 tasks and tabulate.

The paper's protocol (after BiT): SGD with momentum 0.9, batch 512, 384 px,
2,500 steps, gradient clipping at 1, no weight decay. Each setting of the
sweep (learning rates x decay schedules) is fine-tuned on `train800` and
scored on `val200`; the best one is fine-tuned again on all 1,000 examples
(`train800val200`) and scored on the task's test split. The `quick` mode
trains one setting for fewer steps at 224 px straight on the 1,000 examples,
for cheap comparisons between checkpoints.

Every run goes through `vit_jax.train.train_and_evaluate`, in its own
directory under the VTAB workdir, so an interrupted run resumes from its
checkpoint and a finished run or task (`result.json`) is never redone.
Datasets that are not prepared are listed, with how to prepare them, before
anything trains. The table (per task, the three group means and the overall
mean) is written as `vtab_results.json` and `vtab_results.md`.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import shutil
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from vit_jax import parallel
from vit_jax.evaluate import inputs, vtab_tasks

MODES = {
    'full': dict(steps=2500, image_size=384, batch_size=512,
                 learning_rates=(0.01, 0.03), decay_types=('cosine', 'linear'),
                 warmup_steps=200),
    'quick': dict(steps=500, image_size=224, batch_size=512,
                  learning_rates=(0.01,), decay_types=('cosine',),
                  warmup_steps=50),
}
RESULT = 'result.json'


@dataclasses.dataclass(frozen=True)
class Protocol:
  """How each task is fine-tuned; `MODES` holds the two standard ones."""
  steps: int
  image_size: int
  batch_size: int
  learning_rates: tuple[float, ...]
  decay_types: tuple[str, ...]
  warmup_steps: int
  eval_batch_size: int = 512
  checkpoint_every: int = 500

  @property
  def settings(self) -> list[tuple[float, str]]:
    return [(lr, d) for lr in self.learning_rates for d in self.decay_types]


def protocol_from_config(config: Any) -> Protocol:
  mode = inputs.get(config, 'mode', 'full')
  if mode not in MODES:
    raise ValueError(f'VTAB mode {mode!r} is unknown; choose one of '
                     f'{", ".join(MODES)}.')
  values = dict(MODES[mode])
  for key in list(values) + ['eval_batch_size', 'checkpoint_every']:
    value = inputs.get(config, key)
    if value is not None:
      values[key] = tuple(value) if isinstance(value, (list, tuple)) else value
  values['learning_rates'] = tuple(float(v) for v in values['learning_rates'])
  values['decay_types'] = tuple(str(v) for v in values['decay_types'])
  return Protocol(**values)


def _read_json(path: str) -> Optional[dict]:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _write(path: str, text: str) -> None:
  """Writes atomically (temp file + rename), on the primary process only."""
  if jax.process_index() != 0:
    return
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f'{path}.tmp'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)


class VtabRunner:
  """Fine-tunes one checkpoint on VTAB-1k tasks; see the module docstring.

  `model_config` is a training config's `model` section (the architecture the
  checkpoint was saved from); `base_config` a training config whose mesh,
  sharding and logging settings the task runs inherit. `train_fn(config,
  workdir)` defaults to `vit_jax.train.train_and_evaluate`; `split_sizes(task)`
  to the prepared TFDS splits' sizes.
  """

  def __init__(self, protocol: Protocol, model_config: Any, *,
               tasks: Sequence[str] = vtab_tasks.TASK_NAMES,
               data_dir: Optional[str] = None, base_config: Any = None,
               skip_missing: bool = False, keep_checkpoints: bool = False,
               train_fn: Optional[Callable[[Any, str], Any]] = None,
               split_sizes: Optional[Callable[[Any], dict]] = None):
    if model_config is None:
      raise ValueError('VTAB fine-tuning needs the model config (a training '
                       "config's `model` section) to rebuild the network.")
    self.protocol = protocol
    self.model_config = model_config
    self.tasks = [vtab_tasks.get_task(t) for t in tasks]
    self.data_dir = data_dir
    self.base_config = base_config
    self.skip_missing = skip_missing
    self.keep_checkpoints = keep_checkpoints
    self._train_fn = train_fn
    self._split_sizes = split_sizes or (
        lambda task: vtab_tasks.split_sizes(task, data_dir))

  # ----------------------------------------------------------- data check
  def available_tasks(self, missing: Optional[dict] = None) -> list:
    """The tasks to run; raises up front when data is missing (unless skipped)."""
    if missing is None:
      missing = vtab_tasks.missing_tasks(self.tasks, self.data_dir)
    if missing and not self.skip_missing:
      listing = '; '.join(f'{name}: {hint}' for name, hint in missing.items())
      raise FileNotFoundError(
          f'VTAB: {len(missing)} of {len(self.tasks)} datasets are not '
          f'prepared ({listing}). Prepare them, or set skip_missing=True or '
          f'tasks=... to run the others.')
    for name in missing:
      logging.warning('VTAB: skipping %s (not prepared: %s).', name,
                      missing[name])
    return [t for t in self.tasks if t.name not in missing]

  # ------------------------------------------------------------- configs
  def task_config(self, task, *, init_from: str, train_split: str,
                  eval_split: str, learning_rate: float, decay_type: str):
    """The training config of one fine-tuning run."""
    from vit_jax import config_lib  # pylint: disable=g-import-not-at-top
    p = self.protocol
    c = config_lib.base_config()
    if self.base_config is not None:
      for key in ('mesh', 'sharding', 'log_every'):
        if key in self.base_config:
          c[key] = copy.deepcopy(self.base_config[key])
    c.model.update(inputs.as_dict(self.model_config))
    # As the paper transfers: the pre-logits layer and the head are replaced
    # by one zero-initialised layer with the task's classes.
    c.model.representation_size = None
    c.num_classes = task.num_classes
    c.image_size = p.image_size
    c.total_steps = p.steps
    c.batch_size = p.batch_size
    c.init_from = init_from
    pp = (f'decode|vtab_label("{task.name}")|resize({p.image_size})|'
          f'value_range(-1, 1)|onehot({task.num_classes})')
    c.input.data = dict(name=task.tfds_name, split=train_split)
    c.input.data_dir = self.data_dir
    c.input.pp = pp
    c.optim.name = 'sgd'
    c.optim.momentum = 0.9
    c.optim.weight_decay = 0.0
    c.optim.grad_clip_norm = 1.0
    c.schedule = dict(base_lr=learning_rate,
                      warmup_steps=min(p.warmup_steps, p.steps),
                      decay_type=decay_type, linear_end=0.0)
    c.evals = {'eval': dict(type='classify', split=eval_split, pp=pp,
                            data=dict(name=task.tfds_name),
                            batch_size=p.eval_batch_size, every=0)}
    c.checkpoint_every = p.checkpoint_every
    c.keep_checkpoints = 1
    c.export_npz = False
    return c

  # ----------------------------------------------------------------- runs
  def _train(self, config, workdir: str) -> float:
    """Runs (or resumes) one fine-tuning; returns its eval top-1."""
    done = _read_json(os.path.join(workdir, RESULT))
    if done is not None:
      return done['top1']
    train_fn = self._train_fn
    if train_fn is None:
      from vit_jax import train  # pylint: disable=g-import-not-at-top
      train_fn = train.train_and_evaluate
    result = train_fn(config, workdir)
    if result.status != 'done':
      raise RuntimeError(f'VTAB run {workdir} stopped early ({result.status}); '
                         f'rerun the same command to resume it.')
    top1 = float(result.eval_metrics['eval/top1'])
    _write(os.path.join(workdir, RESULT), json.dumps(
        {'top1': top1, 'split': config.evals.eval.split,
         'train_split': config.input.data.split,
         'learning_rate': config.schedule.base_lr,
         'decay_type': config.schedule.decay_type,
         'steps': config.total_steps}, indent=2))
    checkpoints = os.path.join(workdir, 'checkpoints')
    if not self.keep_checkpoints and jax.process_index() == 0 and (
        os.path.isdir(checkpoints)):
      shutil.rmtree(checkpoints)
    return top1

  def run_task(self, task, init_from: str, workdir: str) -> dict:
    """Sweep on val200 (when there is a choice), then train800val200 -> test."""
    root = os.path.join(workdir, task.name)
    done = _read_json(os.path.join(root, RESULT))
    if done is not None:
      return done
    splits = task.splits(self._split_sizes(task))
    settings = self.protocol.settings
    val = {}
    if len(settings) > 1:
      for lr, decay in settings:
        config = self.task_config(task, init_from=init_from,
                                  train_split=splits['train800'],
                                  eval_split=splits['val200'],
                                  learning_rate=lr, decay_type=decay)
        val[f'lr{lr:g}_{decay}'] = self._train(
            config, os.path.join(root, f'sweep_lr{lr:g}_{decay}'))
    best = max(settings, key=lambda s: val.get(f'lr{s[0]:g}_{s[1]}', 0.0))
    lr, decay = best
    config = self.task_config(task, init_from=init_from,
                              train_split=splits['train800val200'],
                              eval_split=splits['test'], learning_rate=lr,
                              decay_type=decay)
    top1 = self._train(config, os.path.join(root, 'final'))
    result = {'task': task.name, 'group': task.group, 'top1': top1,
              'learning_rate': lr, 'decay_type': decay,
              'steps': self.protocol.steps, 'val200': val}
    _write(os.path.join(root, RESULT), json.dumps(result, indent=2))
    return result

  def run(self, init_from: str, workdir: str,
          missing: Optional[dict] = None) -> dict:
    """Runs every available task; writes and returns the results table."""
    tasks = self.available_tasks(missing)
    results = {}
    for task in tasks:
      logging.info('VTAB: %s (%s)', task.name, task.group)
      results[task.name] = self.run_task(task, init_from, workdir)
      write_table(results, self.tasks, workdir, self.protocol)
    return write_table(results, self.tasks, workdir, self.protocol)


def summary(results: dict) -> dict[str, float]:
  """{task: top1, natural, specialized, structured, mean, num_tasks}."""
  accs = {name: r['top1'] for name, r in results.items()}
  return {**accs, **vtab_tasks.group_means(accs),
          'num_tasks': float(len(accs))}


def markdown(results: dict, tasks: Sequence[Any]) -> str:
  """The results table: one row per task, then group and overall means."""
  lines = ['| task | group | top-1 | lr | schedule |', '|---|---|---|---|---|']
  for task in tasks:
    r = results.get(task.name)
    if r is None:
      lines.append(f'| {task.name} | {task.group} | - | | |')
    else:
      lines.append(f'| {task.name} | {task.group} | {100 * r["top1"]:.1f} | '
                   f'{r["learning_rate"]:g} | {r["decay_type"]} |')
  means = vtab_tasks.group_means({n: r['top1'] for n, r in results.items()})
  for group in (*vtab_tasks.GROUPS, 'mean'):
    total = sum(1 for t in tasks if group in (t.group, 'mean'))
    done = sum(1 for n in results
               if group in (vtab_tasks.get_task(n).group, 'mean'))
    value = f'{100 * means[group]:.1f}' if group in means else '-'
    lines.append(f'| **{group}** ({done}/{total} tasks) | | {value} | | |')
  return '\n'.join(lines) + '\n'


def write_table(results: dict, tasks: Sequence[Any], workdir: str,
                protocol: Protocol) -> dict:
  table = {'protocol': dataclasses.asdict(protocol), 'tasks': results,
           'summary': summary(results)}
  _write(os.path.join(workdir, 'vtab_results.json'),
         json.dumps(table, indent=2))
  _write(os.path.join(workdir, 'vtab_results.md'), markdown(results, tasks))
  return table


# ------------------------------------------------------------ the evaluator


def fingerprint(params: Any) -> str:
  """A short hash of the parameter values: which checkpoint a run scored."""
  digest = hashlib.sha256()
  for name, leaf in sorted(parallel.named_leaves(params)):
    digest.update(name.encode())
    digest.update(np.ascontiguousarray(leaf).tobytes())
  return digest.hexdigest()[:12]


@dataclasses.dataclass
class VtabEvaluator:
  """VTAB-1k as an evaluator: fine-tunes the given parameters on each task.

  The parameters are written once as `WORKDIR/<fingerprint>/init.npz`, so a
  restarted training (or CLI) run finds the finished tasks of the same
  parameters and does not redo them.
  """
  name: str
  every: int
  runner: VtabRunner
  workdir: str

  def run(self, params: Any) -> dict[str, float]:
    from vit_jax import checkpoint  # pylint: disable=g-import-not-at-top
    missing = vtab_tasks.missing_tasks(self.runner.tasks, self.runner.data_dir)
    self.runner.available_tasks(missing)  # Fail before any work.
    host = parallel.global_to_host(params)
    root = os.path.join(self.workdir, fingerprint(host))
    init = os.path.join(root, 'init.npz')
    if jax.process_index() == 0 and not os.path.exists(init):
      os.makedirs(root, exist_ok=True)
      checkpoint.save_npz(init, host)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices('vtab_init_npz')
    return summary(self.runner.run(init, root, missing)['tasks'])


def from_config(name: str, config: Any, *, model: Any, mesh: Mesh,
                context: inputs.EvalContext) -> VtabEvaluator:
  """Config keys: mode ('full' | 'quick'), tasks (all 19), steps, image_size,
  batch_size, learning_rates, decay_types, warmup_steps, skip_missing,
  keep_checkpoints, workdir (default: the run's workdir/vtab), data_dir,
  every."""
  del model, mesh  # Each task builds its own (new head) on its own mesh.
  workdir = inputs.get(config, 'workdir') or (
      os.path.join(context.workdir, name) if context.workdir else None)
  if not workdir:
    raise ValueError(f'evaluator {name!r} (VTAB) needs a directory for its '
                     f'runs: set evals.{name}.workdir.')
  model_config = inputs.get(config, 'model', context.model_config)
  base = {'mesh': context.mesh_config} if context.mesh_config else None
  runner = VtabRunner(
      protocol_from_config(config), model_config,
      tasks=tuple(inputs.get(config, 'tasks', vtab_tasks.TASK_NAMES)),
      data_dir=inputs.get(config, 'data_dir', context.data_dir),
      base_config=base,
      skip_missing=bool(inputs.get(config, 'skip_missing', False)),
      keep_checkpoints=bool(inputs.get(config, 'keep_checkpoints', False)))
  return VtabEvaluator(name=name, every=int(inputs.get(config, 'every', 0)),
                       runner=runner, workdir=os.path.abspath(workdir))
