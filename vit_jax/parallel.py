"""Device mesh, sharding rules, host<->global arrays and multi-host start-up.

One path for parallelism: `jax.jit` over a `Mesh` with axes (data, fsdp,
model). Data parallelism is a mesh whose only non-trivial axis is `data`;
FSDP and tensor parallelism are sharding rules over parameter names.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vit_jax import rules as rules_lib

MESH_AXES = ('data', 'fsdp', 'model')
#: The batch dimension is split over both data-parallel axes.
BATCH_AXES = ('data', 'fsdp')


def initialize_distributed(coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None) -> None:
  """Starts jax.distributed when this is one process of several.

  Explicit flags win; otherwise Cloud TPU VMs with several hosts and SLURM jobs
  with several tasks are detected from their environment (jax reads the
  details itself); otherwise this is a single-process run and nothing happens.
  """
  explicit = [coordinator_address, num_processes, process_id]
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise ValueError('--coordinator_address, --num_processes and '
                       '--process_id go together: pass all three or none.')
    if not 0 <= process_id < num_processes:
      raise ValueError(f'--process_id={process_id} is outside [0, '
                       f'{num_processes}); ids count from 0.')
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes,
                               process_id=process_id)
    return
  if on_cloud_tpu() or int(os.environ.get('SLURM_NTASKS', '1')) > 1:
    jax.distributed.initialize()  # jax reads the cluster from its metadata.


def on_cloud_tpu() -> bool:
  """True on a Cloud TPU VM (GKE sets TPU_WORKER_HOSTNAMES; a VM made with
  `gcloud compute tpus tpu-vm create` has TPU device files but not that
  variable). jax.distributed then finds the hosts from the TPU metadata; a
  single-host slice becomes a one-process cluster."""
  if os.environ.get('TPU_WORKER_HOSTNAMES'):
    return True
  return any(os.path.exists(p) for p in ('/dev/accel0', '/dev/vfio/0'))


def configure_cpu() -> None:
  """Synchronous dispatch on CPU backends.

  With several simulated CPU devices on few cores, executions in flight
  together deadlock in the collectives' rendezvous; one at a time they do not.
  Accelerators keep asynchronous dispatch.
  """
  if jax.default_backend() == 'cpu':
    jax.config.update('jax_cpu_enable_async_dispatch', False)


def mesh_shape(axis_sizes: Mapping[str, int], num_devices: int
               ) -> tuple[int, int, int]:
  """Resolves {'data': -1, 'fsdp': 2, 'model': 1} against the device count."""
  unknown = set(axis_sizes) - set(MESH_AXES)
  if unknown:
    raise ValueError(f'unknown mesh axes {sorted(unknown)}; the mesh axes are '
                     f'{MESH_AXES}.')
  sizes = [int(axis_sizes.get(a, 1)) for a in MESH_AXES]
  if sum(s == -1 for s in sizes) > 1:
    raise ValueError(f'at most one mesh axis may be -1 (the rest), got '
                     f'{dict(zip(MESH_AXES, sizes))}.')
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f'mesh axis sizes must be positive or -1, got '
                     f'{dict(zip(MESH_AXES, sizes))}.')
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(f'mesh {dict(zip(MESH_AXES, sizes))} does not divide '
                       f'the {num_devices} devices; choose axis sizes whose '
                       f'product divides {num_devices}.')
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(f'mesh {dict(zip(MESH_AXES, sizes))} has '
                     f'{math.prod(sizes)} devices but {num_devices} are present;'
                     f' set one axis to -1 or make the product {num_devices}.')
  return tuple(sizes)


def make_mesh(axis_sizes: Mapping[str, int],
              devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A Mesh over all devices (or `devices`) with axes (data, fsdp, model)."""
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(axis_sizes, len(devices))
  try:
    grid = mesh_utils.create_device_mesh(shape, devices,
                                         allow_split_physical_axes=True)
  except (ValueError, NotImplementedError, AssertionError):
    grid = np.asarray(devices).reshape(shape)
  return Mesh(grid, MESH_AXES)


def _fsdp_axis(shape, spec, fsdp_size):
  """Largest dimension not yet sharded and divisible by the fsdp size."""
  best = None
  for i in np.argsort(shape)[::-1]:
    if spec[i] is None and shape[i] % fsdp_size == 0:
      best = int(i)
      break
  return best


def spec_for(name: str, shape: Sequence[int], rules: Sequence[tuple[str, Any]],
             mesh: Mesh, fsdp_min_size: int = 2**16) -> P:
  """PartitionSpec of one array by the first rule that matches `name`.

  Patterns follow vit_jax.rules (whole name or a '/'-bounded suffix).

  A rule's value is 'replicate', 'fsdp' (shard the largest divisible dimension
  over `fsdp` when the array has at least `fsdp_min_size` elements), or a
  tuple of axis names / None for the trailing dimensions (tensor
  parallelism; leading dimensions such as the layer axis of scanned blocks
  stay unsharded), optionally followed by FSDP when the tuple ends with
  '+fsdp'. An axis of size 1 in the
  mesh is dropped, so the same rules serve every mesh.
  """
  shape = tuple(shape)
  if not isinstance(rules, rules_lib.Rules):
    rules = sharding_rules(rules)
  i = rules.index(name)
  pattern, rule = rules.rules[i] if i is not None else ('', 'replicate')
  add_fsdp = False
  if rule == 'replicate':
    spec = [None] * len(shape)
  elif rule == 'fsdp':
    spec, add_fsdp = [None] * len(shape), True
  else:
    rule = list(rule)
    if rule and rule[-1] == '+fsdp':
      rule, add_fsdp = rule[:-1], True
    if len(rule) > len(shape):
      raise ValueError(f'sharding rule {pattern!r} -> {tuple(rule)} has '
                       f'{len(rule)} entries but {name} has shape {shape}; '
                       f'give at most one entry per dimension.')
    # A rule names the trailing dimensions; leading ones (the layer axis of
    # scanned blocks) stay unsharded.
    rule = [None] * (len(shape) - len(rule)) + rule
    spec = []
    for axis, dim in zip(rule, shape):
      if axis is not None and axis not in MESH_AXES:
        raise ValueError(f'sharding rule {pattern!r} names axis {axis!r}; '
                         f'mesh axes are {MESH_AXES}.')
      size = mesh.shape[axis] if axis else 1
      if size > 1 and dim % size:
        raise ValueError(f'{name} dimension {dim} is not divisible by mesh '
                         f'axis {axis!r} of size {size}; change the mesh or '
                         f'the rule {pattern!r}.')
      spec.append(axis if size > 1 else None)
  fsdp = mesh.shape['fsdp']
  if add_fsdp and fsdp > 1 and math.prod(shape) >= fsdp_min_size:
    axis = _fsdp_axis(shape, spec, fsdp)
    if axis is not None:
      spec[axis] = 'fsdp'
  return P(*spec)


def sharding_rules(rules: Sequence[tuple[str, Any]]) -> rules_lib.Rules:
  """`config.sharding.rules` in the rule dialect of vit_jax.rules."""
  return rules_lib.Rules(rules, what='sharding.rules', default='replicate')


def tree_shardings(tree: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]],
                   fsdp_min_size: int = 2**16) -> Any:
  """NamedShardings for every leaf of `tree` (arrays or ShapeDtypeStructs).

  Every rule must match some leaf of `tree` (vit_jax.rules).
  """
  rules = sharding_rules(rules)
  rules.check_used([name for name, _ in rules_lib.named_leaves(tree)])
  def one(path, x):
    shape = getattr(x, 'shape', ())
    return NamedSharding(mesh, spec_for(rules_lib.path_name(path), shape,
                                        rules, mesh, fsdp_min_size))
  return jax.tree_util.tree_map_with_path(one, tree)


def default_sharding_rules() -> tuple:
  """Tensor parallelism over `model` for attention heads and the MLP, FSDP
  for the rest of every large array. With model=1 and fsdp=1 (the default
  mesh) every rule reduces to replication: plain data parallelism."""
  block = r'Transformer/encoderblock(_\d+)?(/block)?'
  attn = block + '/MultiHeadDotProductAttention_1'
  mlp = block + '/MlpBlock_3'
  # Scanned blocks carry a leading layer axis, which the rules leave alone.
  return (
      (attn + r'/(query|key|value)/kernel', (None, 'model', None, '+fsdp')),
      (attn + r'/(query|key|value)/bias', ('model', None)),
      (attn + r'/out/kernel', ('model', None, None, '+fsdp')),
      (mlp + r'/Dense_0/kernel', (None, 'model', '+fsdp')),
      (mlp + r'/Dense_0/bias', ('model',)),
      (mlp + r'/Dense_1/kernel', ('model', None, '+fsdp')),
      ('.*', 'fsdp'),
  )


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension over (data, fsdp); the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def host_to_global(batch: Any, mesh: Mesh) -> Any:
  """Turns this host's slice of a batch into global arrays sharded by batch.

  Every host passes its own `global_batch / process_count` rows; the result
  has the global batch as its leading dimension.
  """
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      batch)


def global_to_host(tree: Any) -> Any:
  """Fully replicated copy of every array on every host, as numpy."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def check_batch_divisible(global_batch: int, accum_steps: int, mesh: Mesh
                          ) -> None:
  """Raises a clear error when the batch cannot be split as configured."""
  shards = mesh.shape['data'] * mesh.shape['fsdp']
  procs = jax.process_count()
  if global_batch <= 0 or accum_steps <= 0:
    raise ValueError(f'batch_size={global_batch} and accum_steps={accum_steps} '
                     f'must be positive.')
  if global_batch % procs:
    raise ValueError(f'batch_size={global_batch} is not divisible by the '
                     f'{procs} processes; use a multiple of {procs}.')
  if global_batch % (accum_steps * shards):
    raise ValueError(
        f'batch_size={global_batch} is not divisible by accum_steps '
        f'({accum_steps}) x data-parallel shards ({shards} = data x fsdp); '
        f'use a multiple of {accum_steps * shards}.')


def put_sharded(tree: Any, shardings: Any) -> Any:
  """Places host values (identical on every host) with the given shardings.

  Each device receives only its own shard, so a tree larger than one device's
  memory can be placed as long as each host holds it in host memory.
  """
  def one(x, sharding):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
  return jax.tree.map(one, tree, shardings)
