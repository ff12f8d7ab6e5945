"""SIGTERM, handled in one place for the whole process.

A Cloud TPU VM (or SLURM, or a person) asks a job to stop with SIGTERM. One
handler records the request; each layer reads it where stopping is safe:

- the training loop at a step boundary: it saves that step and returns
  `RunStatus.PREEMPTED` (before the first step it saves nothing);
- the transfer layer's composer between two child runs: it starts no next one;
- `python -m vit_jax.main` installs the handler before anything is imported,
  so a SIGTERM while jax loads or the step compiles is honoured too.

With several processes, jax's preemption sync receives SIGTERM instead (its
handler is installed by `jax.distributed.initialize`; ours is removed just
before, `hand_to_jax`), and every process stops at the same step
(`reached`). A SIGTERM that came before that hand-over ends the process at
once: nothing was trained, and a process that stays would wait for its peers.

This module imports nothing beyond the standard library: the entry points use
it before jax loads.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from typing import Iterator

BEFORE_TRAINING = ('SIGTERM before the first step: nothing was trained in '
                   'this run; rerun the same command to start or resume.')


class _State:
  requested = False  # A SIGTERM arrived while handled.
  depth = 0          # Nesting of `handled()`; the outermost installs.
  previous = None    # The handler the outermost `handled()` replaced.
  jax_owns = False   # Handed to jax's preemption sync (several processes).


def _on_sigterm(signum, frame) -> None:
  del signum, frame
  _State.requested = True


def _several_processes() -> bool:
  if _State.jax_owns:
    return True
  jax = sys.modules.get('jax')  # Not imported here: only asked when loaded.
  return jax is not None and jax.process_count() > 1


@contextlib.contextmanager
def handled() -> Iterator[None]:
  """SIGTERM is recorded (not fatal) inside; re-entrant.

  The outermost `with` installs the handler and, on leaving, restores the
  previous one and forgets the request. Inside a multi-process run it
  installs nothing: jax's preemption sync has SIGTERM.
  """
  outermost = _State.depth == 0
  if outermost and not _several_processes():
    _State.previous = signal.signal(signal.SIGTERM, _on_sigterm)
  _State.depth += 1
  try:
    yield
  finally:
    _State.depth -= 1
    if outermost:
      if _State.previous is not None and not _State.jax_owns:
        signal.signal(signal.SIGTERM, _State.previous)
      _State.previous = None
      _State.requested = False


def requested() -> bool:
  """A SIGTERM arrived (single process; see `reached` for several)."""
  return _State.requested


def reached(step: int) -> bool:
  """Whether to stop after `step`: the same answer on every process."""
  if _several_processes():
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return multihost_utils.reached_preemption_sync_point(step)
  return _State.requested


def hand_to_jax() -> None:
  """Called right before `jax.distributed.initialize` on several processes.

  jax installs its own SIGTERM handler there (which agrees a stop step across
  processes); ours must be gone first or the processes die of SIGTERM. A
  SIGTERM already received ends this process now, with status 0.
  """
  if _State.requested:
    stop_before_training()
  signal.signal(signal.SIGTERM, signal.SIG_DFL)
  _State.jax_owns = True


def stop_before_training() -> None:
  """Exit 0 with one line: the job was asked to stop before it trained."""
  print(BEFORE_TRAINING, file=sys.stderr, flush=True)
  sys.exit(0)
