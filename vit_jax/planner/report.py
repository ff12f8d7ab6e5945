"""What runs have cost: a workdir's metrics.jsonl and config.json, summarised.

A workdir holds `metrics.jsonl` (one JSON object per log step, written by the
training loop from `CoreHoursTracker.metrics()` and the evaluators) and
`config.json` (the resolved config). A preempted and resumed run logs some
steps twice: the later rows win (`trajectory`), and the core-hours the lost
rows had counted are reported as lost to preemption (from
`session_core_hours`, the hours each process counted itself).
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
from typing import Any, Mapping, Optional

from vit_jax import models
from vit_jax import workdir as workdir_lib

_PROJECTION_WINDOW = 10  # log rows whose slope projects the rest of the run


class NotARunError(FileNotFoundError):
  """A path given as a workdir is not one: not a directory, or no metrics.jsonl."""


def read_metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, workdir_lib.METRICS)
  if not os.path.isdir(workdir):
    what = 'is not a directory' if os.path.exists(workdir) else 'does not exist'
    raise NotARunError(f'{workdir} {what}; pass the --workdir of a training run.')
  if not os.path.isfile(path):
    raise NotARunError(f'no {workdir_lib.METRICS} in {workdir}; is it the '
                       f'--workdir of a training run?')
  rows = []
  with open(path) as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f'{path} line {number} is not JSON ({e.msg}).')
      if not isinstance(row, dict) or not isinstance(row.get('step'), (int, float)):
        raise ValueError(f'{path} line {number} has no numeric "step".')
      rows.append(row)
  if not rows:
    raise ValueError(f'{path} is empty: the run has not logged a step yet.')
  return rows


def read_config(workdir: str) -> dict:
  """The resolved config, or {} when the run wrote none."""
  path = os.path.join(workdir, workdir_lib.CONFIG)
  if not os.path.isfile(path):
    return {}
  with open(path) as f:
    try:
      config = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f'{path} is not JSON ({e.msg}, line {e.lineno}).')
  if not isinstance(config, dict):
    raise ValueError(f'{path} holds a {type(config).__name__}, not an object.')
  return config


def lookup(config: dict, dotted: str, default: Any = None) -> Any:
  """config['a']['b'] for 'a.b' (flat 'a.b' keys also work)."""
  if dotted in config:
    return config[dotted]
  node: Any = config
  for part in dotted.split('.'):
    if not isinstance(node, dict) or part not in node:
      return default
    node = node[part]
  return node


def segments(rows: list[dict]) -> list[list[dict]]:
  """Rows split where a new process starts (the step or its count goes back)."""
  out: list[list[dict]] = []
  for row in rows:
    restarted = bool(out) and (
        row['step'] <= out[-1][-1]['step'] or
        row.get('session_core_hours', 0) < out[-1][-1].get('session_core_hours', 0))
    if not out or restarted:
      out.append([])
    out[-1].append(row)
  return out


def trajectory(rows: list[dict]) -> list[dict]:
  """The rows of the run as it stands: a resumed process's rows replace the
  rows it re-did, those from the first step it logged on."""
  kept: list[dict] = []
  for segment in segments(rows):
    first = segment[0]['step']
    kept = [r for r in kept if r['step'] < first] + segment
  return kept


def eval_keys(rows: list[dict]) -> list[str]:
  """Logged evaluation metrics ('val/top1', 'imagenet_real/top1', ...)."""
  keys = sorted({k for r in rows for k in r if '/' in k and not k.startswith(
      ('core_hours/', 'pause_hours/'))})
  return sorted(keys, key=lambda k: (k != 'val/top1', not k.endswith('top1'), k))


@dataclasses.dataclass
class RunReport:
  """What a run has cost so far and what it will cost at its configured end."""
  workdir: str
  model: Optional[str]
  step: int
  total_steps: Optional[int]
  core_hours: float
  core_hours_by_kind: dict
  pause_hours: dict
  restarts: int
  lost_core_hours: Optional[float]
  mfu: Optional[float]
  img_per_sec_per_core: Optional[float]
  projected_core_hours: Optional[float]
  plan_core_hours: Optional[float]
  max_core_hours: Optional[float]
  eval_metric: Optional[str]
  best_eval: Optional[float]
  train_loss: Optional[float]
  #: Held wall hours by activity: held, training, input_wait (a part of
  #: training), each pause reason, other. Empty for runs logged before
  #: held time was counted.
  held_hours: dict = dataclasses.field(default_factory=dict)

  @property
  def name(self) -> str:
    return os.path.basename(os.path.normpath(self.workdir))


def _model_label(config: Mapping[str, Any]) -> Optional[str]:
  """The run's model as it is reported: not a registered name if overridden."""
  model = lookup(config, 'model') or {}
  if not model.get('name'):
    return None
  try:
    return models.describe(model['name'], models.model_overrides(model))
  except ValueError:
    return model['name']


def _median(rows: list[dict], key: str) -> Optional[float]:
  values = [float(r[key]) for r in rows if isinstance(r.get(key), (int, float))]
  return statistics.median(values) if values else None


def _projection(segment: list[dict], total_steps: Optional[int]) -> Optional[float]:
  """Core-hours at `total_steps`, from the slope of the latest log rows."""
  last = segment[-1]
  if not total_steps or 'core_hours' not in last:
    return None
  if last['step'] >= total_steps:
    return float(last['core_hours'])
  window = [r for r in segment if 'core_hours' in r][-_PROJECTION_WINDOW:]
  first = window[0] if len(window) > 1 else {'step': 0, 'core_hours': 0.0}
  steps = last['step'] - first['step']
  if steps <= 0:
    return None
  rate = (last['core_hours'] - first['core_hours']) / steps
  return float(last['core_hours'] + rate * (total_steps - last['step']))


def summarize(workdir: str) -> RunReport:
  rows = read_metrics(workdir)
  config = read_config(workdir)
  parts = segments(rows)
  kept = trajectory(rows)
  last = kept[-1]
  core_hours = float(last.get('core_hours', 0.0))
  lost = None
  if all('session_core_hours' in s[-1] for s in parts):
    spent = sum(float(s[-1]['session_core_hours']) for s in parts)
    lost = max(spent - core_hours, 0.0)
  total_steps = lookup(config, 'total_steps')
  keys = eval_keys(kept)
  evals = [r[keys[0]] for r in kept if keys and keys[0] in r]
  losses = [r['train_loss'] for r in kept if 'train_loss' in r]
  max_hours = lookup(config, 'budget.max_core_hours') or (
      24. * (lookup(config, 'budget.max_core_days') or 0) or None)
  return RunReport(
      workdir=workdir, model=_model_label(config), step=int(last['step']),
      total_steps=total_steps, core_hours=core_hours,
      core_hours_by_kind={k.split('/', 1)[1]: float(v) for k, v in last.items()
                          if k.startswith('core_hours/')},
      pause_hours={k.split('/', 1)[1]: float(v) for k, v in last.items()
                   if k.startswith('pause_hours/')},
      restarts=len(parts) - 1, lost_core_hours=lost,
      mfu=_median(kept, 'mfu'),
      img_per_sec_per_core=_median(kept, 'img_per_sec_per_core'),
      projected_core_hours=_projection(parts[-1], total_steps),
      plan_core_hours=lookup(config, 'budget.plan_core_hours'),
      max_core_hours=max_hours, eval_metric=keys[0] if evals else None,
      best_eval=max(evals) if evals else None,
      train_loss=losses[-1] if losses else None,
      held_hours=_held_hours(last))


def _held_hours(row: dict) -> dict:
  if 'held_hours' not in row:
    return {}
  out = {'held': float(row['held_hours']),
         'training': float(row.get('training_hours', 0.0)),
         'input_wait': float(row.get('input_wait_hours', 0.0))}
  out.update({k.split('/', 1)[1]: float(v) for k, v in row.items()
              if k.startswith('pause_hours/')})
  out['other'] = float(row.get('other_hours', 0.0))
  return out


def _held_line(r: RunReport) -> str:
  if not r.held_hours:
    pauses = ', '.join(f'{k} {v:,.2f}' for k, v in r.pause_hours.items())
    return f'pauses (wall hours, not counted): {pauses or "-"}'
  h = dict(r.held_hours)
  held, training, wait = h.pop('held'), h.pop('training'), h.pop('input_wait')
  parts = ', '.join(f'{k} {v:,.2f}' for k, v in h.items())
  return (f'wall hours held (all counted): {held:,.2f} = training '
          f'{training:,.2f} (input wait {wait:,.2f}), {parts}')


def summarize_runs(workdirs: list[str]) -> tuple[list[RunReport], list[str]]:
  """Reports of the paths that are runs, and why each other path was skipped.

  Raises NotARunError when none of `workdirs` is a run.
  """
  reports, skipped = [], []
  for workdir in workdirs:
    try:
      reports.append(summarize(workdir))
    except NotARunError as e:
      skipped.append(str(e))
  if not reports:
    raise NotARunError(skipped[0] if len(skipped) == 1 else
                       f'none of the {len(skipped)} paths is the --workdir of a '
                       f'training run (no {workdir_lib.METRICS} in any of '
                       f'them).')
  return reports, skipped


def _fmt(value: Optional[float], spec: str = ',.2f', none: str = '-') -> str:
  return none if value is None else format(value, spec)


def format_reports(reports: list[RunReport]) -> str:
  """One row per run (compare runs by compute spent), then per-run detail."""
  # The model column is as wide as the longest name: 'custom ViT (width 64,
  # ...; from ViT-Ti/16)' cut to 14 characters named no model.
  width = max([len('model')] + [len(r.model or '?') for r in reports])
  header = (f'{"run":18s} {"model":{width}s} {"step":>15s} {"core-h":>9s} '
            f'{"projected":>9s} {"plan":>9s} {"cap":>9s} {"lost":>7s} '
            f'{"MFU":>6s} {"img/s/core":>10s} {"best eval":>10s} {"loss":>7s}')
  lines = [header]
  reports = sorted(reports, key=lambda r: r.core_hours)
  for r in reports:
    total = f'/{r.total_steps:,}' if r.total_steps else ''
    lines.append(
        f'{r.name[:18]:18s} {r.model or "?":{width}s} '
        f'{f"{r.step:,}{total}":>15s} {_fmt(r.core_hours):>9s} '
        f'{_fmt(r.projected_core_hours):>9s} {_fmt(r.plan_core_hours):>9s} '
        f'{_fmt(r.max_core_hours):>9s} {_fmt(r.lost_core_hours):>7s} '
        f'{_fmt(r.mfu, ".1%"):>6s} {_fmt(r.img_per_sec_per_core, ",.1f"):>10s} '
        f'{_fmt(r.best_eval, ".4f"):>10s} {_fmt(r.train_loss, ".4f"):>7s}')
  for r in reports:
    kinds = ', '.join(f'{k} {v:,.2f}' for k, v in r.core_hours_by_kind.items())
    lines.append(f'{r.name}: core-hours by device kind: {kinds or "-"}; '
                 f'{_held_line(r)}; restarts: {r.restarts}'
                 + (f'; best {r.eval_metric}' if r.eval_metric else ''))
  return '\n'.join(lines)
