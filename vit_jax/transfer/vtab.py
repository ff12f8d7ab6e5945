"""VTAB-1k: fine-tune one checkpoint on each of the 19 tasks and tabulate.

The paper's protocol (App. B.1.1, after BiT): "the same hyperparameter
setting for all tasks": SGD with momentum 0.9, batch 512, 384 px, 2,500 steps,
learning rate 0.01, cosine decay, gradient clipping at 1, no weight decay;
each task trains on its 1,000 examples (`train800val200`) and is scored on
its test split. BiT's VTAB preprocessing: training resizes to a square of
448/384 of the crop, takes a random square crop and a random horizontal flip;
testing only resizes. No flip for dSprites-orientation, smallNORB-azimuth and
dSprites-location; no random crop for CLEVR-count, CLEVR-distance, DMLab,
KITTI-distance and dSprites-location.

Modes (`vtab.mode`), each named in the results it writes:

  paper         the setting above (default). Comparable with the paper's
                VTAB-1k numbers (Table 2 and Table 9).
  paper_select  re-makes the paper's choice: every setting of the grid
                (learning rates x schedules) trains on `train800` of every
                task, the setting with the best MEAN val200 accuracy over
                the tasks is chosen once, then all tasks train with it on
                1,000 examples and report test. Comparable with the paper.
  per_task      the grid on val200 per task, each task keeps its own best
                setting. Inflates the mean: not comparable with the paper.
  quick         500 steps at 224 px with the paper's setting: for cheap
                comparisons between checkpoints only.

Every run goes through the training loop via `runs.RunComposer`, in its own
directory under the VTAB workdir, so an interrupted run resumes from its
checkpoint and a finished run (`result.json`) is never redone. Datasets that
are not prepared are listed, with how to prepare them, before anything
trains. The table (per task, the three group means and the overall mean) is
written as `vtab_results.json` and `vtab_results.md`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np

from vit_jax import config_lib, files
from vit_jax import workdir as workdir_lib
from vit_jax.data import vtab_tasks
from vit_jax.transfer import runs

#: mode -> (protocol values, how the setting is selected).
MODES = {
    'paper': dict(steps=2500, image_size=384, learning_rates=(0.01,),
                  decay_types=('cosine',), selection='none'),
    'paper_select': dict(steps=2500, image_size=384,
                         learning_rates=(0.01, 0.03),
                         decay_types=('cosine', 'linear'), selection='mean'),
    'per_task': dict(steps=2500, image_size=384, learning_rates=(0.01, 0.03),
                     decay_types=('cosine', 'linear'), selection='task'),
    'quick': dict(steps=500, image_size=224, learning_rates=(0.01,),
                  decay_types=('cosine',), selection='none'),
}
COMPARABLE = {'paper': 'paper Table 2 / Table 9 (VTAB-1k)',
              'paper_select': 'paper Table 2 / Table 9 (VTAB-1k)',
              'per_task': 'not the paper (per-task selection inflates the mean)',
              'quick': 'not the paper (500 steps at 224 px)'}
SELECTIONS = ('none', 'mean', 'task')
#: BiT's exceptions to the random flip and the random crop.
NO_FLIP = frozenset({'dsprites_orientation', 'smallnorb_azimuth',
                     'dsprites_location'})
NO_CROP = frozenset({'clevr_count', 'clevr_distance', 'dmlab',
                     'kitti_distance', 'dsprites_location'})


@dataclasses.dataclass(frozen=True)
class Protocol:
  """How each task is fine-tuned; `MODES` holds the standard ones."""
  mode: str
  steps: int
  image_size: int
  learning_rates: tuple[float, ...]
  decay_types: tuple[str, ...]
  selection: str
  batch_size: int = 512
  warmup_steps: int = 200
  eval_batch_size: int = 512
  checkpoint_every: int = 500

  @property
  def settings(self) -> list[tuple[float, str]]:
    return [(lr, d) for lr in self.learning_rates for d in self.decay_types]

  @property
  def comparable_with(self) -> str:
    return COMPARABLE[self.mode]


def protocol_from_config(config: Any) -> Protocol:
  """From a `vtab` config section: `mode` plus any field to override."""
  config = dict(config or {})
  mode = config.get('mode') or 'paper'
  if mode not in MODES:
    raise ValueError(f'VTAB mode {mode!r} is unknown; choose one of '
                     f'{", ".join(MODES)}.')
  values = dict(MODES[mode], mode=mode)
  for field in dataclasses.fields(Protocol):
    value = config.get(field.name)
    if field.name != 'mode' and value not in (None, (), []):
      values[field.name] = value
  values['learning_rates'] = tuple(float(v) for v in values['learning_rates'])
  values['decay_types'] = tuple(str(v) for v in values['decay_types'])
  if values['selection'] not in SELECTIONS:
    raise ValueError(f'vtab.selection={values["selection"]!r}; choose one of '
                     f'{", ".join(SELECTIONS)}.')
  return Protocol(**values)


def train_pp(task: str, size: int, num_classes: int) -> str:
  """BiT's VTAB training preprocessing for `task` at `size` px."""
  crop = task not in NO_CROP
  ops = ['decode', f'vtab_label("{task}")',
         f'resize({size * 448 // 384 if crop else size})']
  if crop:
    ops.append(f'random_crop({size})')
  if task not in NO_FLIP:
    ops.append('flip_lr')
  return '|'.join(ops + ['value_range(-1, 1)', f'onehot({num_classes})'])


def eval_pp(task: str, size: int, num_classes: int) -> str:
  """Testing only resizes."""
  return (f'decode|vtab_label("{task}")|resize({size})|value_range(-1, 1)|'
          f'onehot({num_classes})')


def _key(lr: float, decay: str) -> str:
  return f'lr{lr:g}_{decay}'


class VtabRunner:
  """Fine-tunes one checkpoint on VTAB-1k tasks; see the module docstring.

  `model_config` is a training config's `model` section (the architecture the
  checkpoint was saved from); `base_config` a training config whose mesh,
  sharding and logging settings the task runs inherit; `split_sizes(task)`
  defaults to the prepared TFDS splits' sizes; `seed` is every task run's
  (the paper's mean ± std is over three such fine-tunings).
  """

  def __init__(self, protocol: Protocol, model_config: Any, *,
               tasks: Sequence[str] = vtab_tasks.TASK_NAMES,
               data_dir: Optional[str] = None, base_config: Any = None,
               skip_missing: bool = False, keep_checkpoints: bool = False,
               split_sizes: Optional[Callable[[Any], dict]] = None,
               seed: int = 0):
    if model_config is None:
      raise ValueError('VTAB fine-tuning needs the model config (a training '
                       "config's `model` section) to rebuild the network.")
    self.protocol = protocol
    self.model_config = dict(model_config)
    self.tasks = [vtab_tasks.get_task(t) for t in tasks]
    self.data_dir = data_dir
    self.base_config = base_config
    self.skip_missing = skip_missing
    self.keep_checkpoints = keep_checkpoints
    self.seed = seed  # Of every task run (data order, head, dropout keys).
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
          f'prepared ({listing}). Prepare them, or set vtab.skip_missing=True '
          f'or vtab.tasks=... to run the others.')
    for name in missing:
      logging.warning('VTAB: skipping %s (not prepared: %s).', name,
                      missing[name])
    return [t for t in self.tasks if t.name not in missing]

  # ------------------------------------------------------------- configs
  def task_config(self, task, *, init_from: str, train_split: str,
                  eval_split: str, learning_rate: float, decay_type: str):
    """The training config of one fine-tuning run."""
    p = self.protocol
    c = config_lib.base_config()
    if self.base_config is not None:
      for key in ('mesh', 'sharding', 'log_every'):
        if key in self.base_config:
          c[key] = self.base_config[key]
    c.model.update(self.model_config)
    # As the paper transfers: the pre-logits layer and the head are replaced
    # by one zero-initialised layer with the task's classes.
    c.model.representation_size = None
    # Fine-tuning has no dropout (App. B.1.1 lists none); a pretraining run's
    # model section carries its own (0.1 for the ImageNet and ImageNet-21k
    # recipes), which is not the fine-tuning's.
    c.model.update(dropout_rate=0.0, attention_dropout_rate=0.0)
    c.seed = self.seed
    c.num_classes = task.num_classes
    c.image_size = p.image_size
    c.total_steps = p.steps
    c.batch_size = p.batch_size
    c.init_from = init_from
    c.input.data.update(name=task.tfds_name, split=train_split)
    c.input.data_dir = self.data_dir
    c.input.pp = train_pp(task.name, p.image_size, task.num_classes)
    c.optim.update(name='sgd', momentum=0.9, weight_decay=0.0,
                   grad_clip_norm=1.0)
    c.schedule.update(base_lr=learning_rate,
                      warmup_steps=min(p.warmup_steps, p.steps),
                      decay_type=decay_type, linear_end=0.0)
    c.evals.eval = config_lib.evaluator_config(
        'classify', split=eval_split,
        pp=eval_pp(task.name, p.image_size, task.num_classes),
        data=dict(name=task.tfds_name), batch_size=p.eval_batch_size)
    c.checkpoint_every = p.checkpoint_every
    c.keep_checkpoints = 1
    c.export_npz = False
    return c

  # ----------------------------------------------------------------- runs
  def _train(self, composer: runs.RunComposer, config, workdir: str,
             what: str) -> float:
    """Runs (or resumes, or reads back) one fine-tuning; its eval top-1."""
    result = composer.train(config, workdir, what)
    checkpoints = os.path.join(workdir, workdir_lib.CHECKPOINTS)
    if not self.keep_checkpoints and jax.process_index() == 0 and (
        os.path.isdir(checkpoints)):
      shutil.rmtree(checkpoints)
    return float(result.metrics['eval/top1'])

  def _val200(self, composer, task, init_from, root, splits) -> dict:
    """The grid of settings on train800 -> val200 for one task."""
    val = {}
    for lr, decay in self.protocol.settings:
      config = self.task_config(task, init_from=init_from,
                                train_split=splits['train800'],
                                eval_split=splits['val200'],
                                learning_rate=lr, decay_type=decay)
      val[_key(lr, decay)] = self._train(
          composer, config, os.path.join(root, f'sweep_{_key(lr, decay)}'),
          f'VTAB {task.name} {_key(lr, decay)} (val200)')
    return val

  def _final(self, composer, task, init_from, root, splits, setting,
             val) -> dict:
    lr, decay = setting
    config = self.task_config(task, init_from=init_from,
                              train_split=splits['train800val200'],
                              eval_split=splits['test'], learning_rate=lr,
                              decay_type=decay)
    top1 = self._train(composer, config, os.path.join(root, 'final'),
                       f'VTAB {task.name} (final)')
    return {'task': task.name, 'group': task.group, 'top1': top1,
            'learning_rate': lr, 'decay_type': decay,
            'steps': self.protocol.steps, 'val200': val}

  def run(self, init_from: str, workdir: str, composer: runs.RunComposer,
          missing: Optional[dict] = None) -> dict:
    """Runs every available task; writes and returns the results table.

    Raises runs.Stopped when a run is preempted or the cap is reached; the
    same call later resumes.
    """
    tasks = self.available_tasks(missing)
    splits = {t.name: t.splits(self._split_sizes(t)) for t in tasks}
    roots = {t.name: os.path.join(workdir, t.name) for t in tasks}
    p = self.protocol
    val = {t.name: {} for t in tasks}
    if p.selection != 'none' and len(p.settings) > 1:
      for task in tasks:
        val[task.name] = self._val200(composer, task, init_from,
                                      roots[task.name], splits[task.name])
    chosen = self._choose(tasks, val)
    results = {}
    for task in tasks:
      logging.info('VTAB: %s (%s), lr %g, %s', task.name, task.group,
                   *chosen[task.name])
      results[task.name] = self._final(composer, task, init_from,
                                       roots[task.name], splits[task.name],
                                       chosen[task.name], val[task.name])
      write_table(results, self.tasks, workdir, p)
    return write_table(results, self.tasks, workdir, p)

  def _choose(self, tasks, val: dict) -> dict:
    """The (lr, schedule) each task trains its final run with."""
    settings = self.protocol.settings
    if self.protocol.selection == 'task':
      return {t.name: max(settings, key=lambda s, t=t: val[t.name][_key(*s)])
              for t in tasks}
    if self.protocol.selection == 'mean' and len(settings) > 1 and tasks:
      best = max(settings, key=lambda s: np.mean(
          [val[t.name][_key(*s)] for t in tasks]))
      return {t.name: best for t in tasks}
    return {t.name: settings[0] for t in tasks}


def summary(results: dict) -> dict[str, float]:
  """{task: top1, natural, specialized, structured, mean, num_tasks}."""
  accs = {name: r['top1'] for name, r in results.items()}
  return {**accs, **vtab_tasks.group_means(accs),
          'num_tasks': float(len(accs))}


def markdown(results: dict, tasks: Sequence[Any], protocol: Protocol) -> str:
  """The results table: one row per task, then group and overall means."""
  lines = [f'VTAB-1k, mode `{protocol.mode}` ({protocol.steps} steps, '
           f'{protocol.image_size} px); comparable with: '
           f'{protocol.comparable_with}.', '',
           '| task | group | top-1 | lr | schedule |', '|---|---|---|---|---|']
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
  table = {'protocol': dataclasses.asdict(protocol),
           'comparable_with': protocol.comparable_with, 'tasks': results,
           'summary': summary(results)}
  if jax.process_index() == 0:
    files.write_json(os.path.join(workdir, 'vtab_results.json'), table)
    files.write_text(os.path.join(workdir, 'vtab_results.md'),
                     markdown(results, tasks, protocol))
  return table


def runner_from_config(vtab_config: Any, model_config: Any, *,
                       data_dir: Optional[str] = None,
                       base_config: Any = None) -> VtabRunner:
  """A runner from a config's `vtab` section (keys: config_lib.vtab_config)."""
  c = dict(vtab_config)
  return VtabRunner(
      protocol_from_config(c), model_config,
      tasks=vtab_tasks.task_names(c.get('tasks') or 'all'),
      data_dir=c.get('data_dir') or data_dir, base_config=base_config,
      skip_missing=bool(c.get('skip_missing')),
      keep_checkpoints=bool(c.get('keep_checkpoints')))
