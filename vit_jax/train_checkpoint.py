"""Training checkpoints: an orbax manager around the state and its counters.

A checkpoint holds two items: `state` (step, parameters, optimizer state, EMA;
sharded arrays, written by every host) and `meta` (JSON: the data iterator's
position, the compute-budget counters and the model name). orbax writes each
step into a temporary directory and renames it when complete, so a run killed
mid-save leaves the previous checkpoint as the latest one.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from vit_jax import rules


def _abs(path: str) -> str:
  if '://' in path:
    return path
  return os.path.abspath(os.path.expanduser(path))


def _handlers() -> dict:
  """How each item is written; named so that a fresh process can read it."""
  return {'state': ocp.StandardCheckpointHandler(),
          'meta': ocp.JsonCheckpointHandler()}


class TrainCheckpointer:
  """Saves and restores (state, meta) under WORKDIR/checkpoints."""

  def __init__(self, workdir: str, *, keep: int = 2,
               keep_every: Optional[int] = None, async_save: bool = True):
    self.directory = os.path.join(_abs(workdir), 'checkpoints')
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, keep_period=keep_every,
        enable_async_checkpointing=async_save, create=True)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_handlers=_handlers())

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, meta: dict, *, force: bool = True
           ) -> None:
    """Starts an (asynchronous) save; `wait()` blocks until it is complete."""
    self._manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      meta=ocp.args.JsonSave(meta)),
        force=force)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

  def restore(self, abstract_state: Any, shardings: Any,
              step: Optional[int] = None) -> tuple[Any, dict]:
    """Restores into the given shardings; refuses a state of another shape.

    Restoring onto another mesh or another number of processes works: every
    array is read into the sharding the current run asks for.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {self.directory}.')
    check_compatible(self.stored_shapes(step), abstract_state, self.directory)
    target = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        abstract_state, shardings)
    restored = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                      meta=ocp.args.JsonRestore()))
    return restored['state'], dict(restored['meta'])

  def restore_meta(self, step: Optional[int] = None) -> dict:
    step = self.latest_step() if step is None else step
    restored = self._manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(restored['meta'])

  def stored_shapes(self, step: int) -> dict[str, tuple[int, ...]]:
    """{name: shape} of every array of the stored state."""
    metadata = self._manager.item_metadata(step)['state']
    tree = getattr(metadata, 'tree', metadata)
    return {name: tuple(getattr(leaf, 'shape', ()) or ())
            for name, leaf in rules.named_leaves(tree)}


def check_compatible(stored: dict[str, tuple[int, ...]], abstract_state: Any,
                     where: str) -> None:
  """One error listing missing, unexpected and mismatched arrays, if any."""
  wanted = {name: tuple(x.shape) for name, x in
            rules.named_leaves(abstract_state)}
  missing = sorted(set(wanted) - set(stored))
  unexpected = sorted(set(stored) - set(wanted))
  mismatched = sorted(n for n in set(wanted) & set(stored)
                      if wanted[n] != stored[n])
  if not (missing or unexpected or mismatched):
    return
  def few(names, fmt=str):
    shown = ', '.join(fmt(n) for n in names[:4])
    return f'{len(names)} ({shown}{", ..." if len(names) > 4 else ""})'
  parts = []
  if missing:
    parts.append(f'missing {few(missing)}')
  if unexpected:
    parts.append(f'unexpected {few(unexpected)}')
  if mismatched:
    parts.append('mismatched shapes ' + few(
        mismatched, lambda n: f'{n}: stored {stored[n]} vs model {wanted[n]}'))
  raise ValueError(f'the checkpoint in {where} does not fit this model/'
                   f'optimizer: {"; ".join(parts)}. Use another --workdir, or '
                   f'the same model and optimizer settings as that run.')


def restore_params(workdir_or_checkpoints: str) -> dict:
  """Parameters (as numpy) of the latest checkpoint of another run.

  For `init_from` and the evaluators: reads the state on the host, whatever
  mesh wrote it, and returns its `params` subtree.
  """
  path = _abs(workdir_or_checkpoints)
  if os.path.basename(path.rstrip('/')) != 'checkpoints':
    path = os.path.join(path, 'checkpoints')
  if not os.path.isdir(path):
    raise FileNotFoundError(f'no checkpoints directory at {path}; pass a '
                            f'workdir of a vit_jax run or a released .npz.')
  manager = ocp.CheckpointManager(
      path, options=ocp.CheckpointManagerOptions(read_only=True, create=False),
      item_handlers=_handlers())
  step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f'{path} holds no finished checkpoint.')
  metadata = manager.item_metadata(step)['state']
  tree = getattr(metadata, 'tree', metadata)
  target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(
          m.shape, m.dtype, sharding=jax.sharding.SingleDeviceSharding(
              jax.local_devices()[0])), tree)
  restored = manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
  manager.close()
  return jax.tree.map(np.asarray, restored['state']['params'])
