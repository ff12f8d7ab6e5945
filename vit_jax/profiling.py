"""A jax.profiler trace of a chosen window of training steps, where TensorBoard's profile plugin reads it.

config.profile = dict(start_step=10, num_steps=3) traces steps 10, 11 and 12
(the steps the loop runs as its 11th to 13th, counted from 0 as
`state['step']` is) into WORKDIR/plugins/profile/<timestamp>/, on any
backend. `tensorboard --logdir WORKDIR` shows it under "Profile" (with the
xprof / tensorboard-plugin-profile package installed). Steps after a resume
count from the restored step; a window already passed does nothing.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional

import jax

#: Under the log directory, the folder TensorBoard's profile plugin lists.
PLUGIN_DIR = os.path.join('plugins', 'profile')


class ProfileWindow:
  """Starts a trace before step `start_step` and stops it after `num_steps` steps.

  The loop calls `before(step)` ahead of running step `step` and
  `after(step, outputs)` once it is dispatched; stopping waits for
  `outputs`, so the trace holds the device work of every step in the window.
  """

  def __init__(self, logdir: str, start_step: Optional[int] = None,
               num_steps: int = 3, *, enabled: bool = True):
    if start_step is not None and (start_step < 0 or num_steps <= 0):
      raise ValueError(f'profile window start_step={start_step}, '
                       f'num_steps={num_steps}: need start_step >= 0 and '
                       f'num_steps >= 1 (or start_step=None for no profile).')
    self.logdir = logdir
    self.start_step = start_step
    self.stop_step = None if start_step is None else start_step + num_steps
    self.enabled = enabled and start_step is not None
    self.active = False

  @classmethod
  def from_config(cls, profile_config: Any, workdir: str) -> 'ProfileWindow':
    """From `config.profile` (start_step None: off); traces on process 0."""
    config = dict(profile_config or {})
    unknown = sorted(set(config) - {'start_step', 'num_steps'})
    if unknown:
      raise ValueError(f'unknown config.profile key(s) {unknown}; expected '
                       f'start_step and num_steps.')
    return cls(workdir, config.get('start_step'), config.get('num_steps', 3),
               enabled=jax.process_index() == 0)

  @property
  def trace_dir(self) -> str:
    return os.path.join(self.logdir, PLUGIN_DIR)

  def before(self, step: int) -> None:
    """Starts tracing when `step` is inside the window and no trace runs."""
    if (self.enabled and not self.active
        and self.start_step <= step < self.stop_step):
      jax.profiler.start_trace(self.logdir)
      self.active = True
      logging.info('Profiling steps %d to %d into %s.', step,
                   self.stop_step - 1, self.trace_dir)

  def after(self, step: int, outputs: Any = None) -> None:
    """Stops tracing after the window's last step, once its work is done."""
    if self.active and step + 1 >= self.stop_step:
      self.stop(outputs)

  def stop(self, outputs: Any = None) -> None:
    """Ends a running trace (e.g. when the loop stops inside the window)."""
    if not self.active:
      return
    jax.block_until_ready(outputs)
    jax.profiler.stop_trace()
    self.active = False
    self.enabled = False  # One window per run.
