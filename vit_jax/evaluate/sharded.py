"""Running a jitted per-batch reduction over an evaluation split on the mesh.

Every evaluator has the same inner loop: host batches from a data pipeline
become global arrays sharded over the mesh's batch axes, one jitted function
maps (params, batch) to per-batch sums or gathered values, and the sums are
added on device. Counts are integers, so every example counts exactly once and
nothing is a mean of batch means.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from vit_jax import parallel

HostBatch = Mapping[str, np.ndarray]


def place_params(params: Any, mesh: Mesh) -> Any:
  """Replicates host (numpy) parameters over `mesh`; jax.Arrays stay put.

  Parameters that the training loop already placed (replicated or FSDP
  sharded) are used as they are, so an evaluator never copies them.
  """
  leaves = jax.tree.leaves(params)
  if leaves and all(isinstance(x, jax.Array) for x in leaves):
    return params
  replicated = parallel.replicated(mesh)
  shardings = jax.tree.map(lambda _: replicated, params)
  return parallel.put_sharded(params, shardings)


def pad_rows(batch: HostBatch, rows: int) -> dict[str, np.ndarray]:
  """Pads every array to `rows` rows; padded rows get mask 0."""
  batch = {k: np.asarray(v) for k, v in batch.items()}
  n = len(batch['mask'])
  if n > rows:
    raise ValueError(f'a host batch has {n} rows but the evaluator expects at '
                     f'most {rows}; pass the same batch_size to the pipeline.')
  if n == rows:
    return batch
  out = {}
  for k, v in batch.items():
    pad = np.zeros((rows - n,) + v.shape[1:], v.dtype)
    out[k] = np.concatenate([v, pad], axis=0)
  return out


def host_rows(global_batch_size: int, mesh: Mesh) -> int:
  """Rows of one host batch, checked against the processes and the mesh."""
  procs = jax.process_count()
  shards = mesh.shape['data'] * mesh.shape['fsdp']
  if global_batch_size <= 0 or global_batch_size % procs or (
      global_batch_size % shards):
    raise ValueError(f'evaluation batch_size={global_batch_size} must be a '
                     f'positive multiple of the {shards} batch shards '
                     f'(data x fsdp) and of the {procs} processes.')
  return global_batch_size // procs


class BatchReducer:
  """Applies a jitted `fn(params, batch) -> pytree` to every batch of a split.

  `fn` sees the global batch (sharded over (data, fsdp)); what it returns must
  be replicated (sums, or gathered values) so every host reads all of it.
  `sum` adds the outputs on device; `concat` collects the outputs of every
  batch on the host (features for few-shot probes). `keys` are the batch
  entries that go to the devices.
  """

  def __init__(self, fn: Callable[[Any, Any], Any], mesh: Mesh,
               global_batch_size: int, keys: tuple[str, ...]):
    self.mesh = mesh
    self.rows = host_rows(global_batch_size, mesh)
    self.keys = keys
    self._fn = jax.jit(fn, out_shardings=parallel.replicated(mesh))

  def _global_batches(self, batches: Iterable[HostBatch]):
    for batch in batches:
      missing = [k for k in self.keys if k not in batch]
      if missing:
        raise ValueError(f'evaluation batches lack {missing}; they have '
                         f'{sorted(batch)}.')
      host = pad_rows({k: batch[k] for k in self.keys}, self.rows)
      yield parallel.host_to_global(host, self.mesh)

  def sum(self, params: Any, batches: Iterable[HostBatch],
          host_inputs: Optional[Callable[[HostBatch], dict]] = None) -> dict:
    """Sums `fn`'s outputs over all batches; returns host numpy values.

    `host_inputs(batch)` may add arrays computed on the host (e.g. ReaL label
    sets looked up by file name) before the batch goes to the devices.
    """
    total = None
    params = place_params(params, self.mesh)
    for batch in self._global_batches(_with_host_inputs(batches, host_inputs)):
      out = self._fn(params, batch)
      total = out if total is None else jax.tree.map(jnp.add, total, out)
    if total is None:
      raise ValueError('the evaluation split yielded no batches; check its '
                       'split name and data_dir.')
    return parallel.global_to_host(total)

  def concat(self, params: Any, batches: Iterable[HostBatch]) -> dict:
    """Concatenates `fn`'s per-batch outputs over all batches (on the host)."""
    parts = []
    params = place_params(params, self.mesh)
    for batch in self._global_batches(batches):
      parts.append(parallel.global_to_host(self._fn(params, batch)))
    if not parts:
      raise ValueError('the evaluation split yielded no batches; check its '
                       'split name and data_dir.')
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _with_host_inputs(batches, host_inputs):
  for batch in batches:
    yield batch if host_inputs is None else {**batch, **host_inputs(batch)}
