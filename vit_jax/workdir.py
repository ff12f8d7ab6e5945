"""A run's workdir: the names of what it holds, and the check that it can hold them.

    WORKDIR/
      config.json          the run's resolved config, rewritten at every start
                           (train.py; read by resume_check, pretrained and
                           budget's report)
      class_names.json     the training data's class names, when it names
                           them (class_names.py)
      lock                 one run per workdir: {host, pid, start}
                           (workdir_lock.py)
      metrics.jsonl        one JSON row per log step (metrics.py)
      checkpoints/STEP/    orbax steps: state and meta (train_checkpoint.py)
      checkpoints_aside/   damaged or rolled-back steps, renamed, never
                           deleted (train_checkpoint.py)
      params.npz           the evaluated parameters in the released layout,
                           exported at the end (train.py)
      events.out.tfevents.*  TensorBoard's event files (metrics.py, by clu)
      plugins/profile/     a jax.profiler trace, when config.profile asks
                           (TensorBoard's name; profiling.py)

Every module that reads or writes one of these names it from here. The
transfer layer keeps its own files and child workdirs beside them
(vit_jax/transfer); an evaluation's workdir holds its results only.
A workdir may be a local path or a URI (gs://...).
"""

from __future__ import annotations

import os

from vit_jax import files

CONFIG = 'config.json'
CLASS_NAMES = 'class_names.json'
LOCK = 'lock'
METRICS = 'metrics.jsonl'
CHECKPOINTS = 'checkpoints'
CHECKPOINTS_ASIDE = 'checkpoints_aside'
PARAMS = 'params.npz'


def absolute(workdir: str) -> str:
  """The absolute path of a local workdir (`~` expanded); a URI unchanged."""
  if '://' in workdir:
    return workdir
  return os.path.abspath(os.path.expanduser(workdir))


def writable(workdir: str) -> str:
  """The absolute workdir, created and writable, or a one-line ValueError.

  What a command that only writes results checks (evaluate); a training
  run checks more (`check_workdir`).
  """
  workdir = absolute(workdir)
  if '://' in workdir:
    return workdir
  try:
    files.probe_writable(workdir)
  except OSError as e:
    raise ValueError(f'--workdir={workdir} cannot be written ({e.strerror}); '
                     f'choose a directory you can write to.') from None
  return workdir


def check_workdir(workdir: str) -> str:
  """The absolute workdir of a training run, or a one-line ValueError.

  The workdir and WORKDIR/checkpoints must be directories this process can
  write: orbax would otherwise wait minutes in its own retries first.
  """
  workdir = writable(workdir)
  if '://' in workdir:
    return workdir
  path = os.path.join(workdir, CHECKPOINTS)
  if os.path.exists(path) and not os.path.isdir(path):
    raise ValueError(f'{path} is a file, not a directory: move it away or '
                     f'choose another --workdir.')
  try:
    files.probe_writable(path)
  except OSError as e:
    raise ValueError(f'{path} cannot be written ({e.strerror}); fix its '
                     f'permissions or choose another --workdir.') from None
  return workdir
