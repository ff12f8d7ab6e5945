"""The compute cap: warn once at 80% of `budget.max_core_hours`, stop at 100%.

The training loop asks `cap.check(tracker.core_hours)` after each step it logs,
a `Verdict`: WARN (once per process, when the run first stands at or past 80%)
-> log `cap.warn_message(...)`; STOP -> save a checkpoint, log
`cap.stop_message(...)` and exit with `EXIT_BUDGET_EXHAUSTED`. Raising the cap
and starting the same command with the same --workdir resumes the run and its
count (the counters live in the checkpoint).
"""

from __future__ import annotations

import enum
import math
from typing import Any, Optional

#: Exit status of a run stopped by its cap (sysexits' EX_TEMPFAIL: try again).
EXIT_BUDGET_EXHAUSTED = 75
#: Fraction of the cap at which the run warns.
WARN_FRACTION = 0.8



class Verdict(enum.StrEnum):
  """What `BudgetCap.check` says; str-valued ('ok', 'warn', 'stop')."""
  OK = 'ok'
  WARN = 'warn'
  STOP = 'stop'


def _get(config: Any, key: str) -> Any:
  """config[key] for dicts and ConfigDicts alike; None when absent."""
  if config is None:
    return None
  if hasattr(config, 'get'):
    return config.get(key)
  return getattr(config, key, None)


class BudgetCap:
  """A cap on training core-hours; `None` means no cap."""

  def __init__(self, max_core_hours: Optional[float],
               warn_fraction: float = WARN_FRACTION):
    if max_core_hours is not None and not (
        isinstance(max_core_hours, (int, float)) and max_core_hours > 0
        and math.isfinite(max_core_hours)):
      raise ValueError(f'budget.max_core_hours must be a positive number of '
                       f'core-hours (or None for no cap), got {max_core_hours!r}.')
    if not 0 < warn_fraction < 1:
      raise ValueError(f'warn_fraction must be in (0, 1), got {warn_fraction}.')
    self.max_core_hours = None if max_core_hours is None else float(max_core_hours)
    self.warn_fraction = warn_fraction
    self._warned = False

  @classmethod
  def from_config(cls, budget: Any) -> 'BudgetCap':
    """From `config.budget`: `max_core_hours` or `max_core_days` (not both).

    Zero or None means no cap.
    """
    hours = _get(budget, 'max_core_hours') or None
    days = _get(budget, 'max_core_days') or None
    if hours is not None and days is not None:
      raise ValueError(f'set budget.max_core_hours ({hours}) or '
                       f'budget.max_core_days ({days}), not both.')
    if days is not None:
      if not isinstance(days, (int, float)) or days < 0:
        raise ValueError(f'budget.max_core_days must be a positive number, '
                         f'got {days!r}.')
      hours = days * 24.
    return cls(hours)

  @property
  def enabled(self) -> bool:
    return self.max_core_hours is not None

  def fraction(self, core_hours: float) -> float:
    return core_hours / self.max_core_hours if self.enabled else 0.0

  def check(self, core_hours: float) -> Verdict:
    """STOP at or past the cap; WARN the first time past 80%; else OK."""
    if not self.enabled:
      return Verdict.OK
    if core_hours >= self.max_core_hours:
      return Verdict.STOP
    if core_hours >= self.warn_fraction * self.max_core_hours and not self._warned:
      self._warned = True
      return Verdict.WARN
    return Verdict.OK

  def warn_message(self, core_hours: float) -> str:
    return (f'compute budget: {core_hours:,.2f} of {self.max_core_hours:,.2f} '
            f'core-hours spent ({self.fraction(core_hours):.0%}); the run will '
            f'save a checkpoint and stop at 100% (budget.max_core_hours).')

  def stop_message(self, core_hours: float, workdir: Optional[str] = None,
                   projected_core_hours: Optional[float] = None) -> str:
    """What happened and how to go on: raise the cap, same --workdir."""
    suggestion = 2 * self.max_core_hours
    if projected_core_hours and projected_core_hours > self.max_core_hours:
      suggestion = projected_core_hours * 1.05
    new = f'{math.ceil(suggestion):d}'
    where = f'--workdir={workdir}' if workdir else 'the same --workdir'
    return (f'compute budget exhausted: {core_hours:,.2f} core-hours spent, '
            f'cap budget.max_core_hours={self.max_core_hours:g}; a checkpoint '
            f'was saved and the run stopped (exit status '
            f'{EXIT_BUDGET_EXHAUSTED}). To continue, run the same command with '
            f'--config.budget.max_core_hours={new} and {where}'
            + (f' (projected total {projected_core_hours:,.1f} core-hours).'
               if projected_core_hours else '.'))
