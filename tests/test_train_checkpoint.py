"""TrainCheckpointer on 8 simulated devices: which replicated arrays are written in slices, and that orbax's standard handler reads the files."""

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from vit_jax import parallel, train_checkpoint

FLOOR = train_checkpoint.MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL


def _replicated(mesh, **arrays):
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return {k: jax.device_put(v, sharding) for k, v in arrays.items()}


def _save_counting_compiles(directory, state):
  """Saves `state` as step 1 and waits; returns the programs compiled meanwhile."""
  compiles = []

  def listener(event, duration, **kwargs):
    del duration, kwargs
    if event == '/jax/core/compile/backend_compile_duration':
      compiles.append(event)
  jax.monitoring.register_event_duration_secs_listener(listener)
  checkpointer = train_checkpoint.TrainCheckpointer(str(directory))
  try:
    checkpointer.save(1, state, {'model': 'test'})
    checkpointer.wait()
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
    checkpointer.close()
  return len(compiles)


def _standard_read(directory, state):
  """Step 1 read back by orbax's StandardCheckpointHandler, on the host."""
  manager = ocp.CheckpointManager(
      directory / 'checkpoints',
      options=ocp.CheckpointManagerOptions(read_only=True),
      item_handlers={'state': ocp.StandardCheckpointHandler()})
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), state)
  try:
    return jax.device_get(manager.restore(1, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))['state'])
  finally:
    manager.close()


def test_small_replicated_arrays_are_written_whole_without_compiling(tmp_path):
  """Slicing a replicated array across replicas compiles a program per shape
  and device (88 for the quickstart's first save on 8 devices): below the
  floor one replica writes the array whole, and the save compiles nothing."""
  mesh = parallel.make_mesh({'data': -1})
  rng = np.random.default_rng(0)
  state = _replicated(mesh, kernel=rng.normal(size=(64, 128)).astype(np.float32),
                      bias=np.arange(128, dtype=np.float32),
                      step=np.int32(7))
  jax.block_until_ready(state)
  assert _save_counting_compiles(tmp_path, state) == 0
  read = _standard_read(tmp_path, state)
  for key, value in state.items():
    np.testing.assert_array_equal(read[key], np.asarray(value))


@pytest.mark.parametrize('slice_bytes', [FLOOR // 2, FLOOR])
def test_replicas_write_slices_of_an_array_from_the_floor_up(tmp_path, slice_bytes):
  """8 replicas: an array of 8 x `slice_bytes` is written in slices (one
  compiled slice per device) only when a slice reaches the floor; either
  way it reads back equal."""
  mesh = parallel.make_mesh({'data': -1})
  n = len(mesh.devices.flat)
  values = jnp.arange(n * slice_bytes // 4, dtype=jnp.float32).reshape(n, -1)
  state = _replicated(mesh, big=values)
  jax.block_until_ready(state)
  compiles = _save_counting_compiles(tmp_path, state)
  assert compiles == (n if slice_bytes >= FLOOR else 0), compiles
  np.testing.assert_array_equal(_standard_read(tmp_path, state)['big'],
                                np.asarray(values))
