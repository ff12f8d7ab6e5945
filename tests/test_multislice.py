"""Several slices joined by DCN (multislice): the hybrid mesh, the step across simulated slices, what crosses DCN."""

import importlib.util
import os

import jax
import numpy as np
import pytest

from vit_jax import assembly, parallel
from vit_jax.planner import collectives

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


import tpu_compile  # noqa: E402  (tests/ is on sys.path under pytest)

_TPU_STEP = f'''
import importlib.util, math
import jax
from vit_jax import assembly, parallel
from vit_jax.planner import collectives, tpu
spec = importlib.util.spec_from_file_location('q', {QUICKSTART!r})
q = importlib.util.module_from_spec(spec); spec.loader.exec_module(q)
result = {{}}
for slices in (1, 2):
  c = q.get_config()
  c.model.update(hidden_size=128, num_layers=1, mlp_dim=512, num_heads=4)
  c.sharding.fsdp_min_size = 1      # FSDP shards every parameter
  c.batch_size = 32 * slices        # 32 images per slice either way
  c.mesh.update(data=slices, fsdp=16, num_slices=slices)
  devices = tpu.slice_devices('v5e-16', slices)
  mesh = parallel.make_mesh(dict(c.mesh), devices)
  asm = assembly.assemble(c, mesh, 16, backend='tpu')
  found = collectives.parse(asm.compile().as_text(), len(devices))
  ici, dcn = collectives.slice_split(found)
  shard = sum(math.prod(s.shard_shape(x.shape)) * 4 for x, s in zip(
      jax.tree.leaves(asm.abstract_params), jax.tree.leaves(asm.shardings['params'])))
  result[slices] = dict(
      ici=ici.bytes_per_device, ici_count=ici.count, dcn=dcn.bytes_per_device,
      dcn_count=dcn.count, shard=shard,
      largest_ici_group=max(x.group for x in found if not x.dcn),
      dcn_groups=sorted({{x.group for x in found if x.dcn}}),
      dcn_operands=sorted(x.operand_bytes for x in found if x.dcn))
'''


_PREFLIGHT = f'''
import importlib.util
from vit_jax import preflight
spec = importlib.util.spec_from_file_location('q', {QUICKSTART!r})
q = importlib.util.module_from_spec(spec); spec.loader.exec_module(q)
c = q.get_config()
c.model.num_layers = 1
c.evals = {{}}
c.mesh.num_slices = 2            # from the config, as main passes it
p = preflight.run(c, 'v5e-16')
result = dict(dcn=p.dcn_bytes, dcn_s=p.dcn_step_s, total=p.train.collectives.total_bytes_per_device,
              devices=p.num_devices, mesh=p.mesh, report=preflight.format_report(p))
'''


@pytest.fixture(scope='module')
def v5e_16():
  """Both TPU compiles of this module in one child (one libtpu start):
  the step on 1 and 2 slices, and the preflight of 2 slices."""
  if not tpu_compile.libtpu_importable():
    pytest.skip('libtpu (the TPU compiler) is not installed; `make test` '
                'installs it')
  return tpu_compile.run(_TPU_STEP + 'steps = result\n' + _PREFLIGHT +
                         'result = dict(steps=steps, preflight=result)\n',
                         accelerator='v5e-16')


@tpu_compile.requires_libtpu
def test_two_v5e_16_slices_fsdp_inside_data_across_what_crosses_dcn(v5e_16):
  out = v5e_16['steps']
  one, two = out['1'], out['2']
  assert sum(one['dcn'].values()) == 0 and sum(one['dcn_count'].values()) == 0
  # XLA:TPU compiles one slice's program: its collectives stay in the slice
  # (groups of at most 16); what crosses slices is the megascale runtime's
  # host transfers, each an all-reduce over the 2 slices.
  assert two['largest_ici_group'] == 16
  assert two['dcn_groups'] == [2]
  assert two['dcn_count'] == {'all-reduce': 14, 'all-gather': 0, 'reduce-scatter': 0,
                              'all-to-all': 0, 'collective-permute': 0}
  # Each device all-reduces its own FSDP shard of the gradient with the same
  # device of the other slice: 2 (s-1)/s x the shard, = the shard for s = 2;
  # but the shard as the TPU stores it, in tiles of 128 lanes. The MLP
  # kernels' shards ([128, 512] / 16 = 4096 f32 = 16,384 bytes) are exact;
  # the four attention kernels' ([128, 4, 32] / 16 = [8, 4, 32]: 4,096 bytes)
  # take 16,384 each, their 32-wide head dimension padded to 128 lanes.
  assert two['dcn']['all-reduce'] == sum(two['dcn_operands']) == 151_040
  assert two['dcn_operands'].count(16_384) == 6   # 2 MLP + 4 attention kernels
  assert two['shard'] == one['shard'] == 55_652   # the rules' count, untiled
  assert two['shard'] < two['dcn']['all-reduce'] < 3 * two['shard']
  # Not whole gradients: 16 devices of a slice each send their 1/16.
  assert two['dcn']['all-reduce'] < 16 * two['shard'] / 4
  # The slice's own collectives are not those of the one-slice step with
  # the same 32 images a slice: this libtpu schedules the two programs
  # differently (measured: all-reduce 1.58 MB vs 1.20 MB, all-gather
  # 2.31 MB vs 3.13 MB, all-to-all 0.02 MB vs 0.41 MB per device).
  assert two['ici'] == {'all-reduce': 1580505.0, 'all-gather': 2306880.0,
                        'reduce-scatter': 0.0, 'all-to-all': 16320.0,
                        'collective-permute': 0.0}
  assert one['ici'] == {'all-reduce': 1200667.5, 'all-gather': 3125640.0,
                        'reduce-scatter': 0.0, 'all-to-all': 408000.0,
                        'collective-permute': 0.0}


@tpu_compile.requires_libtpu
def test_preflight_reports_dcn_apart_from_ici_and_its_time_at_v5e_dcn_bandwidth(v5e_16):
  out = v5e_16['preflight']
  assert out['devices'] == 32 and out['mesh'] == {'data': 32, 'fsdp': 1, 'model': 1}
  assert 0 < out['dcn'] < out['total']
  assert out['dcn_s'] == pytest.approx(out['dcn'] / 3.125e9)   # 25 Gbps a v5e chip
  assert 'on 2 x v5e-16 (32 devices); compiled by XLA:TPU' in out['report']
  assert (f'of which over DCN between the 2 slices: {out["dcn"] / 2**20:,.2f} MiB'
          in out['report'])
