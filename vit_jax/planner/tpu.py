"""TPU slices through the TPU compiler, without a TPU: the devices to compile for, and what the compiled program needs.

libtpu (the TPU compiler, a pip package: `pip install -c constraints.txt
"jax[tpu]"`) compiles for any slice shape on a machine without a TPU:

    devices = tpu.slice_devices('v3-32')             # 32 'TPU v3' devices
    mesh = parallel.make_mesh({'fsdp': 8}, devices)  # a Mesh over them
    compiled = step.lower(*abstract_inputs_on(mesh)).compile()
    tpu.analyze(compiled)   # bytes per device, FLOPs, collectives

Nothing runs: the program is compiled for the slice and read. `jax.devices()`
still lists the host's own devices (CPU here).

A slice is named as Cloud TPU names it. The number counts TensorCores on
v2, v3, v4 and v5p (two per chip; a v2/v3 chip is two JAX devices, a v4/v5p
chip one "megacore" device) and chips on v5e and v6e (one core each), so
v3-8 is 4 chips = 8 devices, v4-32 16 chips = 16 devices, v5p-16 8 chips =
8 devices, v5e-16 16 chips = 16 devices. The chips are laid out as Cloud TPU
lays them out: a 2D torus on v2, v3, v5e, v6e (v3-8 2x2, v3-32 4x4, v3-256
8x16, v5e-16 4x4) and 3D on v4, v5p (v4-8 2x2x1, v4-32 2x2x4, v5p-16
2x2x2). libtpu's own topology names ('v4:2x4x4') are accepted as they are.
libtpu would make a v4 chip two devices; it is asked for the megacore
chip a Cloud TPU v4 runs JAX on (`_CHIP_CONFIG`).

Memory per device is what the TPU's layouts take: arrays are stored in
tiles (f32 in 8 x 128 elements, a vector in 256 or 1024), so a small or
narrow array takes more than its elements (`CompiledStep.argument_bytes`
against `logical_argument_bytes`, the same arrays untiled).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import math
import os
import re
from typing import Any, Iterator, Optional

from vit_jax import parallel
from vit_jax.budget import hardware as hardware_lib
from vit_jax.planner import collectives as collectives_lib

INSTALL = 'pip install -c constraints.txt "jax[tpu]" (or make install)'
EXAMPLES = ('v2-8, v3-8, v3-32, v3-256, v4-8, v4-32, v5e-16 (v5litepod-16), '
            'v5p-16, v6e-16, or a topology such as v4:2x2x4')

#: Per generation: libtpu's topology prefix, the torus' dimensions, and the
#: smallest and largest slice in chips (Cloud TPU's system-architecture
#: pages: v2 and v3 pods of 256 and 1024 chips from 4-chip v2-8/v3-8; v4
#: 4096 chips from v4-8; v5p jobs of up to 6144 chips from v5p-8; v5e and
#: v6e 256 chips from one). Slices are powers of two; other shapes by
#: topology name.
_GENERATIONS = {
    'v2': ('v2', 2, 4, 256),
    'v3': ('v3', 2, 4, 1024),
    'v4': ('v4', 3, 4, 4096),
    'v5p': ('v5p', 3, 4, 6144),
    'v5e': ('v5e', 2, 1, 256),
    'v6e': ('v6e', 2, 1, 256),
}
#: libtpu makes a v4 chip two devices (one per TensorCore) unless told the
#: chip is a megacore, as JAX sees it on a Cloud TPU v4 (v4-8: 4 devices).
#: v5p chips are megacores by default; v2 and v3 have no such mode.
_CHIP_CONFIG = {'v4': 'megacore'}
_TOPOLOGY = re.compile(r'(v2|v3|v4|v5p|v5e|v6e):(\d+(?:x\d+){1,2})')


def libtpu_available() -> bool:
  """Whether the TPU compiler (the libtpu package) can be imported."""
  return (importlib.util.find_spec('libtpu') is not None or
          bool(os.environ.get('TPU_LIBRARY_PATH')))


def require_libtpu() -> None:
  """Raises a one-line ValueError saying how to install libtpu when it is missing."""
  if not libtpu_available():
    raise ValueError(f'the TPU compiler (libtpu) is not installed; install it '
                     f'with {INSTALL}.')


def topology(name: str) -> str:
  """libtpu's topology of a Cloud TPU slice name: 'v3-8' -> 'v3:2x2'."""
  text = name.strip().lower()
  if _TOPOLOGY.fullmatch(text):
    return text
  try:
    hardware, chips = hardware_lib.parse_hardware(text)
  except ValueError:
    hardware, chips = None, None
  if hardware is None or hardware.key not in _GENERATIONS or not chips:
    raise ValueError(f'{name!r} is not a TPU slice name; use one such as '
                     f'{EXAMPLES}.')
  prefix, rank, smallest, largest = _GENERATIONS[hardware.key]
  if chips & (chips - 1) or not smallest <= chips <= largest:
    raise ValueError(
        f'{name!r} is {chips} {hardware.name} chips; slice names cover '
        f'powers of two from {smallest} to {largest} chips; give another '
        f'shape as a topology such as {prefix}:{"x".join(["4"] * rank)}.')
  # Cloud TPU's shapes: double the smallest dimension, the last of equals.
  dims = [2, 2, 1] if rank == 3 else [1, 1]
  while math.prod(dims) < chips:
    smallest_dim = min(dims)
    last = max(i for i, d in enumerate(dims) if d == smallest_dim)
    dims[last] *= 2
  return f'{prefix}:{"x".join(map(str, dims))}'


def _prepare_environment(accelerator: Optional[str] = None) -> None:
  """Lets libtpu start as a compiler only, on a machine without a TPU.

  libtpu takes /tmp/libtpu_lockfile for the TPU chips of the host; any
  other jax process that loaded it (one started without JAX_PLATFORMS=cpu)
  would make it refuse to start. With no chips here there is nothing to
  guard, nor a TPU metadata server to ask.
  """
  if not parallel.on_cloud_tpu():
    os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
    os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')
    # Told the slice and the one host, libtpu does not log its failed
    # search for a TPU's host bounds and workers when it starts.
    if accelerator:
      os.environ.setdefault('TPU_ACCELERATOR_TYPE', accelerator)


@contextlib.contextmanager
def _one_host() -> Iterator[None]:
  """TPU_WORKER_HOSTNAMES=localhost while libtpu starts (quiet), off a TPU
  only, and unset again after: `parallel.on_cloud_tpu` reads it."""
  if parallel.on_cloud_tpu():
    yield
    return
  os.environ['TPU_WORKER_HOSTNAMES'] = 'localhost'
  try:
    yield
  finally:
    os.environ.pop('TPU_WORKER_HOSTNAMES', None)


@functools.lru_cache(maxsize=None)
def _slice(name: str, num_slices: int) -> tuple:
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  require_libtpu()
  _prepare_environment(None if _TOPOLOGY.fullmatch(name.strip().lower())
                       else name.strip().lower())
  name = topology(name)
  options = {}
  if name.split(':')[0] in _CHIP_CONFIG:
    options['chip_config_name'] = _CHIP_CONFIG[name.split(':')[0]]
  try:
    with _one_host():
      return tuple(topologies.get_topology_desc(
          platform='tpu', topology_name=name, num_slices=num_slices,
          **options).devices)
  except Exception as e:  # pylint: disable=broad-except
    first = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
    raise ValueError(f'libtpu could not make the {name} topology '
                     f'(num_slices={num_slices}): {first}') from e


def slice_devices(name: str, num_slices: int = 1) -> list:
  """The JAX devices of a TPU slice ('v3-8', 'v5e-16', ...), for compiling.

  `num_slices` > 1: that many slices joined by the data-center network
  (multislice); each device's `slice_index` says which. The topology is
  made once per (name, num_slices).
  """
  if not isinstance(num_slices, int) or num_slices < 1:
    raise ValueError(f'num_slices must be a positive integer, got '
                     f'{num_slices!r}.')
  topology(name)  # A bad name fails first.
  return list(_slice(name.strip().lower(), num_slices))


@dataclasses.dataclass(frozen=True)
class CompiledStep:
  """What one compiled program needs of each device, as its compiler says.

  Bytes are per device (memory_analysis): arguments, outputs, the outputs
  that reuse an argument's buffer (donated state), temporaries, and the
  program's code. FLOPs, bytes accessed and the compiler's estimate of the
  shortest run time (`optimal_seconds`) are per device from cost_analysis,
  None where the compiler gives none; they count a while loop's body once
  (a scanned step's layers once), so take them from an unrolled program.
  Collectives are counted by `collectives.py`, loops included.
  """
  argument_bytes: int
  output_bytes: int
  alias_bytes: int
  temp_bytes: int
  generated_code_bytes: int
  #: The arguments at their shapes, without the tiles of their layouts.
  logical_argument_bytes: Optional[int]
  flops: Optional[float]
  bytes_accessed: Optional[float]
  optimal_seconds: Optional[float]
  collectives: collectives_lib.CollectiveSummary

  @property
  def peak_bytes(self) -> int:
    """Arguments, outputs not written over an argument, and temporaries."""
    return (self.argument_bytes + self.output_bytes - self.alias_bytes +
            self.temp_bytes)

  @property
  def collective_bytes(self) -> dict:
    """Bytes each device sends per call, by collective kind."""
    return dict(self.collectives.bytes_per_device)

  def to_dict(self) -> dict:
    d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
         if f.name != 'collectives'}
    return dict(d, peak_bytes=self.peak_bytes,
                collective_bytes=self.collective_bytes,
                collective_count=dict(self.collectives.count))


_DTYPE = re.compile(r'([a-z][a-z0-9]*)\[([0-9,]*)\]\{([0-9,]*)(?::([^}]*))?\}')


def tiled_bytes(shape: str) -> float:
  """Bytes of the arrays of an HLO shape with layout, tiles included.

  'f32[64,10]{0,1:T(8,128)}': the dimensions in memory order (minor-to-
  major 0,1: 10 rows of 64) padded to the tile (16 x 128) -> 8192 bytes.
  An array without a tile counts its elements.
  """
  total = 0.0
  for dtype, dims_text, order, layout in _DTYPE.findall(shape):
    if dtype not in collectives_lib.DTYPE_BYTES:
      continue
    dims = [int(d) for d in dims_text.split(',') if d]
    minor_to_major = [int(d) for d in order.split(',') if d]
    physical = [dims[i] for i in reversed(minor_to_major)] or [1]
    tile = re.match(r'T\(([\d,]+)\)', layout or '')
    sizes = [int(t) for t in tile[1].split(',')] if tile else []
    if len(sizes) > len(physical):
      physical = [1] * (len(sizes) - len(physical)) + physical
    for k, t in enumerate(reversed(sizes)):
      i = len(physical) - 1 - k
      physical[i] = -(-physical[i] // t) * t
    total += collectives_lib.DTYPE_BYTES[dtype] * math.prod(physical)
  return total


def entry_parameters(hlo_text: str) -> list[str]:
  """The parameter shapes (with layouts) of the module's entry computation."""
  header = hlo_text.split('\n', 1)[0]
  match = re.search(r'entry_computation_layout=\{\((.*?)\)->', header)
  if match is None:
    return []
  return [m.group(0) for m in _DTYPE.finditer(match[1])]


def _num_devices(compiled) -> int:
  import jax  # pylint: disable=g-import-not-at-top
  for sharding in jax.tree.leaves(compiled.input_shardings):
    return len(sharding.device_set)
  return 1


def _cost(compiled) -> dict:
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return {}
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return dict(cost or {})


def analyze(compiled: Any, num_devices: Optional[int] = None) -> CompiledStep:
  """Memory, cost and collectives per device of a compiled program.

  `compiled` is `jax.jit(f).lower(...).compile()`, for a TPU slice or any
  other backend; `num_devices` (default: those of its input shardings)
  sizes a collective printed without replica groups.
  """
  memory = compiled.memory_analysis()
  if memory is None:
    raise ValueError('the compiled program has no memory analysis; pass '
                     'jax.jit(f).lower(...).compile() of a TPU or CPU '
                     'program.')
  text = compiled.as_text()
  n = num_devices or _num_devices(compiled)
  params = entry_parameters(text)
  cost = _cost(compiled)

  def number(key):
    value = cost.get(key)
    return None if value is None or value < 0 else float(value)

  return CompiledStep(
      argument_bytes=int(memory.argument_size_in_bytes),
      output_bytes=int(memory.output_size_in_bytes),
      alias_bytes=int(memory.alias_size_in_bytes),
      temp_bytes=int(memory.temp_size_in_bytes),
      generated_code_bytes=int(memory.generated_code_size_in_bytes),
      logical_argument_bytes=(int(sum(collectives_lib.shape_bytes(p)
                                      for p in params)) if params else None),
      flops=number('flops'), bytes_accessed=number('bytes accessed'),
      optimal_seconds=number('optimal_seconds'),
      collectives=collectives_lib.summarize_hlo(text, n))
