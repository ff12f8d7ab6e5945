"""Metric writers and console progress for the training loop.

Process 0 writes TensorBoard event files and `WORKDIR/metrics.jsonl`, one
JSON object per logged step; every other process writes nothing. After a
resume, rows past the restored step are dropped so the file never holds a
step twice.

The event file of a local workdir is written with tensorboard's record
writer and protos, without TensorFlow: importing TensorFlow for a few scalars
cost every run 5-10 s of start-up. A workdir that is a URI (gs://) is written
by clu's writer, through TensorFlow's file system.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import socket
import time
from typing import Any, Mapping, Optional

import numpy as np

from vit_jax import files
from vit_jax import workdir as workdir_lib



def _plain(value: Any) -> Any:
  if isinstance(value, (np.generic, np.ndarray)):
    value = value.item() if np.ndim(value) == 0 else value.tolist()
  if hasattr(value, 'item') and getattr(value, 'ndim', 1) == 0:
    value = value.item()
  return value


def truncate_jsonl(path: str, last_step: int) -> None:
  """Keeps only the rows with step <= last_step (atomically)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    rows = [line for line in f if line.strip()]
  kept = []
  for line in rows:
    try:
      if json.loads(line).get('step', 0) <= last_step:
        kept.append(line)
    except json.JSONDecodeError:
      continue  # A row cut by a kill: drop it.
  files.write_text(path, ''.join(kept))


class MetricWriter:
  """TensorBoard (clu) + metrics.jsonl on process 0; a no-op elsewhere."""

  def __init__(self, workdir: str, *, is_primary: bool,
               resume_step: Optional[int] = None):
    self.is_primary = is_primary
    self.path = os.path.join(workdir, workdir_lib.METRICS)
    self._tb = None
    if not is_primary:
      return
    if resume_step is not None:
      truncate_jsonl(self.path, resume_step)
    elif os.path.exists(self.path):
      os.remove(self.path)  # A fresh run in a reused workdir.
    if '://' in workdir:
      from clu import metric_writers  # pylint: disable=g-import-not-at-top
      self._tb = metric_writers.create_default_writer(
          workdir, just_logging=False, asynchronous=True)
    else:
      self._tb = EventFile(workdir)

  def write(self, step: int, scalars: Mapping[str, Any]) -> None:
    if not self.is_primary:
      return
    row = {'step': int(step)}
    row.update({k: _plain(v) for k, v in scalars.items()})
    with open(self.path, 'a') as f:
      f.write(json.dumps(row) + '\n')
    numeric = {k: v for k, v in row.items()
               if k != 'step' and isinstance(v, (int, float)) and v is not None}
    self._tb.write_scalars(int(step), numeric)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.flush()
      self._tb.close()


class EventFile:
  """TensorBoard scalars in a local directory, written without TensorFlow.

  One `events.out.tfevents.*` file per writer, as TensorFlow names them;
  every write is flushed, so a killed run leaves a readable file.
  """

  _count = itertools.count()

  def __init__(self, logdir: str):
    # Late: the planner and the evaluators import this module too.
    from tensorboard.compat.proto import event_pb2, summary_pb2  # pylint: disable=g-import-not-at-top
    from tensorboard.summary.writer import record_writer  # pylint: disable=g-import-not-at-top
    self._event, self._summary = event_pb2.Event, summary_pb2.Summary
    os.makedirs(logdir, exist_ok=True)
    name = (f'events.out.tfevents.{int(time.time())}.{socket.gethostname()}.'
            f'{os.getpid()}.{next(self._count)}.v2')
    self._file = open(os.path.join(logdir, name), 'wb')  # pylint: disable=consider-using-with
    self._records = record_writer.RecordWriter(self._file)
    self._write(self._event(wall_time=time.time(),
                            file_version='brain.Event:2'))

  def _write(self, event) -> None:
    self._records.write(event.SerializeToString())
    self._records.flush()

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    values = [self._summary.Value(tag=k, simple_value=float(v))
              for k, v in scalars.items()]
    self._write(self._event(wall_time=time.time(), step=int(step),
                            summary=self._summary(value=values)))

  def flush(self) -> None:
    self._records.flush()

  def close(self) -> None:
    if not self._file.closed:
      self._records.close()


class Progress:
  """Steps/s and ETA for the console, measured between log steps."""

  def __init__(self, total_steps: int, start_step: int):
    self.total_steps = total_steps
    self._last_step = start_step
    self._last_time = time.perf_counter()

  def update(self, step: int) -> tuple[float, float]:
    """Returns (steps per second since the last call, seconds to the end)."""
    now = time.perf_counter()
    rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
    self._last_step, self._last_time = step, now
    eta = (self.total_steps - step) / rate if rate > 0 else float('inf')
    return rate, eta

  def reset_clock(self) -> None:
    """Forget time spent outside training (evaluation, checkpoints)."""
    self._last_time = time.perf_counter()


def format_eta(seconds: float) -> str:
  if not np.isfinite(seconds):
    return '?'
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m' if h else f'{m}m{s:02d}s'


def log_line(step: int, total: int, scalars: Mapping[str, Any], rate: float,
             eta: float) -> None:
  keys = ('train_loss', 'learning_rate', 'grad_norm', 'img_per_sec', 'mfu',
          'core_hours')
  parts = [f'{k}={scalars[k]:.4g}' for k in keys
           if k in scalars and scalars[k] is not None]
  logging.info('step %d/%d  %s  %.2f steps/s  ETA %s', step, total,
               '  '.join(parts), rate, format_eta(eta))


def _number(value: Any) -> str:
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return str(value)
  return f'{value:.4g}'


def eval_lines(step: int, results: Mapping[str, Any]) -> list[str]:
  """One line per evaluator: `step 200 eval val: num_examples=300  top1=0.9533`.

  `results` maps `EVALUATOR/METRIC` (as written to metrics.jsonl) to values;
  the evaluators appear in the order they ran, their metrics sorted.
  """
  grouped: dict[str, dict[str, Any]] = {}
  for key, value in results.items():
    name, _, metric = key.partition('/')
    grouped.setdefault(name, {})[metric or name] = _plain(value)
  return [f'step {step} eval {name}: ' + '  '.join(
      f'{k}={_number(v)}' for k, v in sorted(metrics.items()))
          for name, metrics in grouped.items()]


def log_evals(step: int, results: Mapping[str, Any]) -> None:
  """Logs the evaluations of `step` on the console (process 0's log shows them)."""
  for line in eval_lines(step, results):
    logging.info('%s', line)
