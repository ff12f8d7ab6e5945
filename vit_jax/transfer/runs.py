"""Training runs composed by the transfer layer: each in its own workdir, one preemption rule, one account.

A `RunComposer` runs `train.train_and_evaluate` once per child config (a VTAB
task, a learning rate of a sweep), each in its own workdir, so every child
resumes from its own checkpoints and a finished child (its `result.json`) is
never redone. Around them it keeps:

- preemption (vit_jax/preemption.py, the one SIGTERM handler): SIGTERM while
  a child trains stops the child (it saves and returns 'preempted'); between
  children it stops before the next one.
  Either way `Stopped('preempted')` reaches the caller, which exits 0, and
  rerunning the same command resumes where it stopped;
- the compute account: every child's core-hours are added to the parent's in
  `WORKDIR/transfer_account.json`, and each child runs with the parent's cap
  less what the parent and the other children have spent, so the cap sees
  all of it;
- errors in context: a non-finite loss inside a child names the child and its
  workdir, not the parent's step.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Callable, Optional

import jax

from vit_jax import budget, files, preemption, train
from vit_jax import workdir as workdir_lib

ACCOUNT = 'transfer_account.json'
RESULT = 'result.json'


class Stopped(Exception):
  """A child run ended early: `status` is PREEMPTED or BUDGET_EXHAUSTED.

  `step` is the child's last saved step (None: none saved) of its
  `total_steps`: what the SUMMARY line reports beside `stopped_in`.
  """

  def __init__(self, status: train.RunStatus, where: str,
               step: Optional[int] = None, total_steps: Optional[int] = None):
    super().__init__(f'{where} stopped early ({status})')
    self.status = status
    self.where = where
    self.step = step
    self.total_steps = total_steps


def saved_step(workdir: str) -> Optional[int]:
  """The newest finished checkpoint step in `workdir` (orbax names a
  finished step's directory by its number), or None."""
  try:
    names = os.listdir(os.path.join(workdir, workdir_lib.CHECKPOINTS))
  except OSError:
    return None
  return max((int(n) for n in names if n.isdigit()), default=None)


@dataclasses.dataclass
class ChildResult:
  """What a finished child run measured (read back from its result.json)."""
  metrics: dict
  core_hours: float
  step: int


class RunComposer:
  """Runs child trainings under one preemption rule and one compute account."""

  def __init__(self, workdir: str, budget_config: Any = None,
               parent_core_hours: float = 0.0,
               train_fn: Optional[Callable[[Any, str], Any]] = None):
    """`train_fn(config, workdir)` defaults to train.train_and_evaluate."""
    self.workdir = workdir
    self._train_fn = train_fn or train.train_and_evaluate
    self.cap = budget.BudgetCap.from_config(budget_config)
    self.parent_core_hours = parent_core_hours
    self._path = os.path.join(workdir, ACCOUNT)
    self.account = files.read_json(self._path) or {}

  # --------------------------------------------------------- preemption
  def __enter__(self) -> 'RunComposer':
    self._handled = preemption.handled()  # SIGTERM: the one handler.
    self._handled.__enter__()
    return self

  def __exit__(self, *exc) -> None:
    self._handled.__exit__(*exc)

  # ------------------------------------------------------------ account
  @property
  def core_hours(self) -> float:
    """The parent's core-hours plus every child's."""
    return self.parent_core_hours + sum(self.account.values())

  def _record(self, workdir: str, core_hours: float) -> None:
    self.account[os.path.relpath(workdir, self.workdir)] = core_hours
    if jax.process_index() == 0:
      files.write_json(self._path, self.account)

  def _child_cap(self, child_workdir: str) -> Optional[float]:
    if not self.cap.enabled:
      return None
    key = os.path.relpath(child_workdir, self.workdir)
    others = self.core_hours - self.account.get(key, 0.0)
    # The child's own counter starts from what it spent before a resume.
    return self.cap.max_core_hours - others

  # --------------------------------------------------------------- runs
  def train(self, config: Any, workdir: str, what: str) -> ChildResult:
    """Runs (or resumes, or reads back) one child; raises Stopped if cut short."""
    done = files.read_json(os.path.join(workdir, RESULT))
    if done is not None:
      scores = '  '.join(f'{k}={v:.4f}' for k, v in sorted(
          done['metrics'].items()) if 'num_examples' not in k)
      logging.info('%s: finished earlier in %s (step %d%s); not rerun.', what,
                   workdir, done['step'], f': {scores}' if scores else '')
      return ChildResult(done['metrics'], done['core_hours'], done['step'])
    total = config.get('total_steps')
    if preemption.requested():
      raise Stopped(train.RunStatus.PREEMPTED, what, saved_step(workdir),
                    total)
    cap = self._child_cap(workdir)
    if cap is not None:
      if cap <= 0:
        raise Stopped(train.RunStatus.BUDGET_EXHAUSTED, what,
                      saved_step(workdir), total)
      config = config.copy_and_resolve_references()
      config.budget.max_core_hours = cap
      config.budget.max_core_days = None
    logging.info('%s: training in %s.', what, workdir)
    try:
      result = self._train_fn(config, workdir)
    except train.NonFiniteLossError as e:
      raise train.NonFiniteLossError(f'{what} ({workdir}): {e}') from None
    self._record(workdir, result.core_hours)
    if result.status != train.RunStatus.DONE:
      raise Stopped(result.status, what, result.step,
                    getattr(result, 'total_steps', total))
    metrics = {k: float(v) for k, v in result.eval_metrics.items()
               if isinstance(v, (int, float))}
    if jax.process_index() == 0:
      files.write_json(os.path.join(workdir, RESULT), {
          'metrics': metrics, 'core_hours': result.core_hours,
          'step': result.step})
    return ChildResult(metrics, result.core_hours, result.step)
