"""Several slices joined by DCN (multislice): the hybrid mesh, the step across simulated slices, what crosses DCN."""

import importlib.util
import os

import jax
import numpy as np
import pytest

from vit_jax import assembly, parallel
from vit_jax.budget import collectives

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(ROOT, 'configs', 'quickstart.py')
#: 8 simulated CPU devices as 2 slices of 4, interleaved so that a plain
#: reshape of the device list would mix them.
SLICES = [0, 1, 0, 1, 0, 1, 0, 1]


def _config(**mesh):
  spec = importlib.util.spec_from_file_location('quickstart', QUICKSTART)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.model.update(hidden_size=32, num_layers=2, mlp_dim=64, num_heads=4)
  c.optim.name = 'sgd'   # Adam's 1/sqrt(v) would amplify float noise.
  c.schedule.update(base_lr=0.1, warmup_steps=0)
  c.batch_size = 32
  c.mesh.update(mesh)
  return c


def _mesh(config, slices=None):
  return parallel.make_mesh(dict(config.mesh), jax.devices(), slices=slices)


def test_the_slices_are_the_outermost_part_of_the_dcn_axis():
  mesh = _mesh(_config(data=4, fsdp=2, num_slices=2), SLICES)
  assert dict(mesh.shape) == {'data': 4, 'fsdp': 2, 'model': 1}
  slice_of = {d.id: SLICES[i] for i, d in enumerate(jax.devices())}
  # data rows 0-1 are slice 0, rows 2-3 slice 1; fsdp never leaves a slice.
  assert [[slice_of[d.id] for d in row.flat] for row in mesh.devices] == [
      [0, 0], [0, 0], [1, 1], [1, 1]]
  # dcn_axis=fsdp: the slices split the fsdp axis instead.
  mesh = _mesh(_config(data=2, fsdp=4, num_slices=2, dcn_axis='fsdp'), SLICES)
  assert [[slice_of[d.id] for d in row.flat] for row in mesh.devices] == [
      [0, 0, 1, 1], [0, 0, 1, 1]]


@pytest.mark.parametrize('mesh, slices, match', [
    (dict(data=3, fsdp=1, num_slices=2), None, "'data': 3"),  # the axes first
    (dict(data=1, fsdp=8, num_slices=2), SLICES, r'mesh.data=1 is not a multiple of mesh.num_slices=2'),
    (dict(data=-1, num_slices=2), None, r'are 1 slice\(s\) .* mesh.num_slices=2'),
    (dict(data=-1, num_slices=1), SLICES, r'are 2 slice\(s\) .* --config.mesh.num_slices=2'),
    (dict(data=-1, num_slices=2), [0, 0, 0, 0, 0, 0, 1, 1], 'different numbers of devices'),
    (dict(data=-1, num_slices=2, dcn_axis='batch'), SLICES, 'not a mesh axis'),
])
def test_a_mesh_that_does_not_divide_into_the_slices_is_one_line(mesh, slices, match):
  with pytest.raises(ValueError, match=match) as info:
    parallel.make_mesh(mesh, jax.devices(), slices=slices)
  assert '\n' not in str(info.value)


def _losses(config, slices, steps=2):
  mesh = _mesh(config, slices)
  asm = assembly.assemble(config, mesh, 10)
  state = asm.init_state()
  rng = np.random.default_rng(0)
  losses = []
  for _ in range(steps):
    batch = {'image': rng.uniform(-1, 1, (32, 16, 16, 3)).astype(np.float32),
             'labels': np.eye(10, dtype=np.float32)[rng.integers(0, 10, 32)]}
    state, metrics = asm.step(state, parallel.host_to_global(batch, mesh))
    losses.append(float(jax.device_get(metrics['train_loss'])))
  return losses, asm


def test_a_step_across_two_slices_equals_the_one_slice_step_and_one_all_reduce_crosses():
  one, _ = _losses(_config(data=4, fsdp=2), None)
  two, asm = _losses(_config(data=4, fsdp=2, num_slices=2), SLICES)
  np.testing.assert_allclose(two, one, rtol=0, atol=1e-6)
  assert one[1] != one[0]   # the step did update the parameters
  # In the compiled program (one program over all 8 devices on XLA:CPU) the
  # collectives whose replica groups hold devices of both slices: the
  # gradient's one all-reduce over data (and the metrics'), nothing else.
  order = {d.id: i for i, d in enumerate(jax.devices())}
  slice_of = [SLICES[order[d.id]] for d in asm.mesh.devices.flat]
  found = collectives.parse(asm.compile().as_text(), 8)
  ici, dcn = collectives.slice_split(found, slice_of)
  assert dcn.count == {'all-reduce': 1, 'all-gather': 0, 'reduce-scatter': 0,
                       'all-to-all': 0, 'collective-permute': 0}, dcn
