"""vit_jax.planner.tpu and the TPU side of collectives.py: slices, the quickstart step compiled by the TPU compiler, against hand counts and XLA:CPU.

Every TPU compile runs in a child process (tpu_compile.py) and is skipped
when libtpu is not installed (`make test` installs it). Nothing executes on
a TPU: programs are compiled for a slice's devices and read.
"""

import dataclasses
import inspect
import json
import re
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vit_jax.budget import hardware
from vit_jax.planner import collectives, fit, tpu

import tpu_compile

N = 8
IMAGE, CLASSES, BATCH = 32, 10, 64
#: The quickstart's model (configs/quickstart.py) at 32 px, batch 64, Adam;
#: FSDP shards arrays of 1024 elements and more (the default 2**16 would
#: shard none of this model).
SPEC = fit.StepSpec(
    model='ViT-Ti/16', batch_size=BATCH, image_size=IMAGE,
    num_classes=CLASSES,
    model_options=dict(hidden_size=64, num_layers=4, mlp_dim=128,
                       num_heads=4, patch_size=(4, 4)),
    optim=dict(name='adam', weight_decay=1e-4, grad_clip_norm=1.0),
    fsdp_min_size=1024)
SCANNED = dataclasses.replace(
    SPEC, model_options=dict(SPEC.model_options, scan_layers=True))
LAYOUTS = {'data': ({'data': 8}, SPEC), 'fsdp': ({'fsdp': 8}, SPEC),
           'data_scanned': ({'data': 8}, SCANNED)}

#: (devices, device_kind, topology) of each slice name, as libtpu 0.0.42.1
#: makes them.
SLICES = {
    'v2-8': (8, 'TPU v2', 'v2:2x2'),
    'v3-8': (8, 'TPU v3', 'v3:2x2'),
    'v3-32': (32, 'TPU v3', 'v3:4x4'),
    'v3-256': (256, 'TPU v3', 'v3:8x16'),
    'v4-8': (4, 'TPU v4', 'v4:2x2x1'),
    'v4-32': (16, 'TPU v4', 'v4:2x2x4'),
    'v5e-16': (16, 'TPU v5 lite', 'v5e:4x4'),
    'v5litepod-16': (16, 'TPU v5 lite', 'v5e:4x4'),
    'v5p-16': (8, 'TPU v5', 'v5p:2x2x2'),
    'v6e-16': (16, 'TPU v6 lite', 'v6e:4x4'),
}


# --------------------------------------------------------------- slice names


def test_slice_names_give_libtpu_topologies():
  for name, (_, _, topology) in SLICES.items():
    assert tpu.topology(name) == topology, name
  assert tpu.topology('v3-2048') == 'v3:32x32'
  assert tpu.topology('v4-128') == 'v4:4x4x4'
  assert tpu.topology('v5litepod-1') == 'v5e:1x1'
  assert tpu.topology('v4:2x4x4') == 'v4:2x4x4'


@pytest.mark.parametrize('name', ['v3', 'h100', 'v3-12', 'v3-4', 'v7-8',
                                  'v5p-3', 'nonsense'])
def test_a_bad_slice_name_is_one_line_with_examples(name):
  with pytest.raises(ValueError) as e:
    tpu.slice_devices(name)
  assert '\n' not in str(e.value)
  assert 'v3-8' in str(e.value) or 'topology' in str(e.value)


def test_parse_hardware_takes_every_slice_name():
  chips = {'v2-8': 4, 'v3-8': 4, 'v3-32': 16, 'v3-256': 128, 'v4-8': 4,
           'v4-32': 16, 'v5e-16': 16, 'v5litepod-16': 16, 'v5p-16': 8,
           'v6e-16': 16}
  for name, (devices, kind, _) in SLICES.items():
    hw, n = hardware.parse_hardware(name)
    assert n == chips[name] and n * hw.devices_per_chip == devices, name
    assert hardware.for_device_kind(kind) is hw, name


def test_every_tpu_generation_has_its_published_figures():
  for key in ('v2', 'v3', 'v4', 'v5e', 'v5p', 'v6e'):
    hw = hardware.HARDWARE[key]
    assert hw.hbm_bytes_per_device and hw.peak_flops_per_device, key
    assert key in hardware.SOURCES
  v6e = hardware.HARDWARE['v6e']
  assert v6e.interconnect_bytes_per_s_per_device == 400e9   # 800 GBps both ways
  assert hardware.HARDWARE['v5p'].hbm_bandwidth_bytes_per_s_per_device == 2765e9
  assert hardware.HARDWARE['v3'].hbm_bytes_per_device == 16 * 2**30


def test_without_libtpu_the_error_says_how_to_install(monkeypatch):
  monkeypatch.setattr(tpu, 'libtpu_available', lambda: False)
  with pytest.raises(ValueError, match=r'make install') as e:
    tpu.require_libtpu()
  assert '\n' not in str(e.value) and 'jax[tpu]' in str(e.value)


@tpu_compile.requires_libtpu
def test_slice_devices_counts_and_kinds_from_libtpu(tpu_child):
  out = tpu_child['slices']
  for name, (devices, kind, _) in SLICES.items():
    assert out[name] == [devices, kind, devices], name
  assert out['v3-8 x 2'] == [16, [0, 1]]
  assert out['cached']
  assert out['megacore'] == 4          # libtpu's default would be 8
  assert 'v4:3x5x7' in out['refused'] and '\n' not in out['refused']


# ------------------------------------------------- the quickstart on a v3-8

_TPU_STEPS = '''
    import json
    import jax
    from vit_jax import parallel
    from vit_jax.planner import fit, tpu
    devices = tpu.slice_devices('v3-8')
    # compile_step lays its mesh over jax.devices(); these are the slice's.
    fit._mesh = lambda sizes, n: parallel.make_mesh(dict(sizes), devices)
    result = {}
    for key, (mesh, spec) in json.loads(LAYOUTS).items():
      spec = fit.StepSpec.from_dict(spec)
      compiled, seconds, _, _ = fit.compile_step(spec, mesh, 8,
                                                 compiler_options={})
      text = compiled.as_text()
      step = tpu.analyze(compiled)
      result[key] = dict(
          step.to_dict(), compile_s=seconds,
          tiled=sum(tpu.tiled_bytes(p) for p in tpu.entry_parameters(text)),
          known_trip_count='known_trip_count' in text,
          loops=text.count(' while('),
          kinds=sorted({d.device_kind
                        for s in jax.tree.leaves(compiled.input_shardings)
                        for d in s.device_set}))
'''


_SLICES = f'''
      from vit_jax.planner import tpu
      result = {{}}
      for name in {list(SLICES)!r}:
        devices = tpu.slice_devices(name)
        result[name] = [len(devices), devices[0].device_kind,
                        len({{d.id for d in devices}})]
      two = tpu.slice_devices('v3-8', num_slices=2)
      result['v3-8 x 2'] = [len(two), sorted({{d.slice_index for d in two}})]
      result['cached'] = tpu.slice_devices('v3-8')[0] is tpu.slice_devices('V3-8')[0]
      result['megacore'] = len(tpu.slice_devices('v4:2x2x1'))
      try:
        tpu.slice_devices('v4:3x5x7')
      except ValueError as e:
        result['refused'] = str(e)
  '''

_GROUPS = '''
    import re
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from vit_jax.planner import collectives, tpu
    SUM_OVER_FSDP
    compiled = _sum_over_fsdp(tpu.slice_devices('v3-8'))
    text = compiled.as_text()
    result = dict(
        groups=re.findall(r"replica_groups=(mesh[^{]*\\{[^}]*\\})", text),
        found=[[c.kind, c.group] for c in collectives.parse(text, 8)],
        bytes=collectives.summarize_hlo(text, 8).bytes_per_device)
'''


@pytest.fixture(scope='module')
def tpu_child():
  """Every TPU compile of this module in one child (one libtpu start):
  the slices' devices, the quickstart step of each layout, a reduction over
  one axis of a 2 x 4 mesh."""
  if not tpu_compile.libtpu_importable():
    pytest.skip('libtpu (the TPU compiler) is not installed; `make test` '
                'installs it')
  layouts = json.dumps({k: (m, s.to_dict()) for k, (m, s) in LAYOUTS.items()})
  groups = textwrap.dedent(_GROUPS).replace(
      'SUM_OVER_FSDP', inspect.getsource(_sum_over_fsdp))
  return tpu_compile.run(
      textwrap.dedent(_SLICES) + 'slices = result\n' +
      f'LAYOUTS = {layouts!r}\n' + textwrap.dedent(_TPU_STEPS) +
      'steps = result\n' + groups +
      'result = dict(slices=slices, steps=steps, groups=result)\n')


@pytest.fixture(scope='module')
def tpu_steps(tpu_child):
  return tpu_child['steps']


_CPU = {}


def cpu_step(key):
  """The same step compiled by XLA:CPU on the 8 simulated devices."""
  if key not in _CPU:
    mesh, spec = LAYOUTS[key]
    _CPU[key] = fit.measure(spec, mesh, N)
  return _CPU[key]


def hand_count(mesh):
  """Per-device argument bytes by hand: parameters and optimizer state from
  the sharding rules (fit.state_bytes), the step counter, one device's
  slice of the batch."""
  state = fit.state_bytes(SPEC, mesh, N)
  batch = BATCH // N * (IMAGE * IMAGE * 3 * 4 + CLASSES * 4)
  return state['params'] + state['opt_state'] + 4 + batch


@pytest.mark.parametrize('key', ['data', 'fsdp'])
def test_tpu_argument_bytes_are_the_hand_count_in_tpu_tiles(tpu_steps, key):
  step = tpu_steps[key]
  assert step['kinds'] == ['TPU v3']
  # The arrays each device holds are exactly those the rules give it...
  assert step['logical_argument_bytes'] == hand_count(LAYOUTS[key][0])
  assert cpu_step(key)['argument'] == hand_count(LAYOUTS[key][0])
  # ... stored in the TPU's tiles: memory_analysis counts the padding (an
  # f32 [4,16] bias takes a 4 x 128 tile); at width 64 that is 1.7-4.8 x.
  assert step['argument_bytes'] == step['tiled']
  assert step['argument_bytes'] > 1.5 * step['logical_argument_bytes']
  assert step['peak_bytes'] == (step['argument_bytes'] + step['output_bytes']
                                - step['alias_bytes'] + step['temp_bytes'])
  assert step['alias_bytes'] > 0.99 * step['output_bytes']   # donated state
  assert step['flops'] > 0 and step['optimal_seconds'] > 0
  assert step['generated_code_bytes'] > 0


def test_data_parallel_collectives_agree_with_xla_cpu(tpu_steps):
  tpu_bytes = tpu_steps['data']['collective_bytes']
  cpu_bytes = cpu_step('data')['collective_bytes']
  assert tpu_bytes == cpu_bytes
  assert tpu_bytes['all-reduce'] > 0


def test_fsdp_gradients_are_all_reduced_whole_by_the_tpu_compiler(tpu_steps):
  """Where the compilers differ: under FSDP XLA:CPU reduce-scatters the
  gradients (read from all-reduce + slice, collectives.py), but this
  libtpu all-reduces them whole (one combined all-reduce whose users slice
  their part in a fusion) and gathers bfloat16 parameters in the forward
  and again in the backward pass, where XLA:CPU gathers float32 once."""
  tpu_fsdp = tpu_steps['fsdp']['collective_bytes']
  cpu_fsdp = cpu_step('fsdp')['collective_bytes']
  data = tpu_steps['data']['collective_bytes']['all-reduce']
  assert tpu_fsdp['reduce-scatter'] == 0 and cpu_fsdp['reduce-scatter'] > 0
  assert tpu_fsdp['all-reduce'] == pytest.approx(data, rel=1e-3)
  assert tpu_fsdp['all-gather'] == pytest.approx(cpu_fsdp['all-gather'],
                                                 rel=0.1)
  assert tpu_steps['fsdp']['collective_count']['all-gather'] > \
      cpu_step('fsdp')['collective_count']['all-gather']


def test_scanned_layers_send_what_unrolled_layers_send_on_tpu(tpu_steps):
  scanned, unrolled = tpu_steps['data_scanned'], tpu_steps['data']
  assert scanned['loops'] >= 2 and not scanned['known_trip_count']
  assert scanned['collective_bytes'] == unrolled['collective_bytes']
  # One all-reduce outside the loops; the layers' run 4 times in them.
  assert scanned['collective_count']['all-reduce'] > 1


# ------------------------------------------------ trip counts on XLA:CPU

def test_trip_count_read_from_the_loop_equals_xla_cpus_annotation():
  mesh, spec = LAYOUTS['data_scanned']
  compiled, _, _, _ = fit.compile_step(spec, mesh, N)
  text = compiled.as_text()
  assert 'known_trip_count' in text
  stripped = re.sub(r'"known_trip_count":\{"n":"\d+"\},?', '', text)
  assert 'known_trip_count' not in stripped
  annotated = collectives.summarize_hlo(text, N)
  read = collectives.summarize_hlo(stripped, N)
  assert read == annotated
  assert annotated.bytes_per_device == cpu_step('data')['collective_bytes']


def test_a_loop_of_unknown_length_is_refused():
  def f(x, n):
    return jax.lax.while_loop(lambda c: c[0] < n,
                              lambda c: (c[0] + 1, c[1] * 2), (0, x))[1]
  text = jax.jit(f).lower(jnp.ones(4), 3).compile().as_text()
  with pytest.raises(ValueError, match='no known trip count'):
    collectives.summarize_hlo(text, 1)


def test_iterations_of_shifted_and_unrolled_loops():
  assert collectives.iterations(0, 12, 1, 'LT') == 12
  assert collectives.iterations(1, 12, 2, 'LT') == 6
  assert collectives.iterations(0, 11, 1, 'LE') == 12
  assert collectives.iterations(11, -1, -1, 'GT') == 12
  assert collectives.iterations(0, 12, 3, 'NE') == 4
  assert collectives.iterations(0, 12, -1, 'LT') is None


# --------------------------------------------------- replica groups on TPU

def _sum_over_fsdp(devices):
  mesh = Mesh(np.asarray(devices).reshape(2, 4), ('data', 'fsdp'))
  x = jax.ShapeDtypeStruct((16, 1024), jnp.float32,
                           sharding=NamedSharding(mesh, P('data', 'fsdp')))
  f = jax.jit(lambda x: jnp.sum(x, axis=1),
              out_shardings=NamedSharding(mesh, P('data')))
  return f.lower(x).compile()


@tpu_compile.requires_libtpu
def test_mesh_axis_replica_groups_give_the_group_size(tpu_child):
  """The TPU compiler prints `replica_groups=mesh['axis_0'=2,...] {...}`;
  a reduction over the 4-device axis of a 2 x 4 mesh is counted as a group
  of 4 on both compilers."""
  out = tpu_child['groups']
  assert out['groups'] and all('mesh[' in g for g in out['groups'])
  assert out['found'] and all(group == 4 for _, group in out['found'])
  cpu = collectives.summarize_hlo(_sum_over_fsdp(jax.devices()[:N]).as_text(),
                                  N)
  assert out['bytes'] == cpu.bytes_per_device


def test_group_size_of_mesh_axes():
  attrs = "replica_groups=mesh['a'=2,'b'=4] {'b'}, dimensions={0}"
  assert collectives.group_size(attrs, 8) == 4
  assert collectives.group_size("replica_groups=mesh['a'=2,'b'=4] {'a','b'}",
                                8) == 8
  assert collectives.group_size("replica_groups=mesh['a'=2,'b'=8] {'b':(2)4}",
                                16) == 4


def test_tiled_bytes_pad_to_the_tile_in_memory_order():
  assert tpu.tiled_bytes('f32[64,10]{0,1:T(8,128)}') == 16 * 128 * 4
  assert tpu.tiled_bytes('f32[64]{0:T(256)}') == 256 * 4
  assert tpu.tiled_bytes('s32[]{:T(256)}') == 256 * 4
  assert tpu.tiled_bytes('f32[8,32,32,3]{2,1,3,0:T(8,128)}') == \
      8 * 3 * 32 * 128 * 4
  assert tpu.tiled_bytes('f32[3,5]{1,0}') == 60
