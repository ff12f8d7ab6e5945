"""Cloud TPU accelerator types: how many hosts (TPU VM workers) a slice has, and its runtime.

Accelerator-type names count different things per generation:

  v2-N, v3-N, v4-N, v5p-N   N = TensorCores; 2 cores per chip, 4 chips per host,
                            so N/8 hosts (v3-8: 1 host, v3-32: 4, v4-32: 16 chips = 4).
  v5litepod-N, v6e-N        N = chips (1 core each); N <= 8 is one host holding all
                            N chips, larger slices have 4 chips per host (v6e-16: 4).

`v5e-N` is accepted for `v5litepod-N`, the name gcloud wants. The default
runtime (`--version` of the TPU VM) per generation follows the Cloud TPU
"TPU software versions" page for JAX: tpu-ubuntu2204-base for v2-v4 and the
v2-alpha-tpuv5-lite / v2-alpha-tpuv5 / v2-alpha-tpuv6e images for v5e, v5p,
v6e. Pass --runtime_version to use another.
"""

from __future__ import annotations

import dataclasses
import re

# generation -> (TensorCores per chip, default runtime version, valid N in the name)
_GENERATIONS = {
    'v2': (2, 'tpu-ubuntu2204-base', (8, 32, 128, 256, 512)),
    'v3': (2, 'tpu-ubuntu2204-base', (8, 32, 64, 128, 256, 512, 1024, 2048)),
    'v4': (2, 'tpu-ubuntu2204-base', None),
    'v5p': (2, 'v2-alpha-tpuv5', None),
    'v5litepod': (1, 'v2-alpha-tpuv5-lite', (1, 4, 8, 16, 32, 64, 128, 256)),
    'v6e': (1, 'v2-alpha-tpuv6e', (1, 4, 8, 16, 32, 64, 128, 256)),
}
_ALIASES = {'v5e': 'v5litepod'}
CHIPS_PER_HOST = 4          # every multi-host slice of these generations
MAX_SINGLE_HOST_CHIPS = 8   # v5e/v6e: up to 8 chips on one host


@dataclasses.dataclass(frozen=True)
class SliceType:
  """One accelerator type: its gcloud name, chips, TensorCores, hosts and default runtime."""
  accelerator_type: str
  generation: str
  chips: int
  cores: int
  hosts: int
  default_runtime: str

  @property
  def chips_per_host(self) -> int:
    return self.chips // self.hosts


def parse(accelerator_type: str) -> SliceType:
  """`v3-32` -> SliceType(hosts=4, ...); ValueError naming the accepted forms otherwise."""
  match = re.fullmatch(r'(v2|v3|v4|v5p|v5litepod|v5e|v6e)-(\d+)', accelerator_type.strip().lower())
  if not match:
    raise ValueError(f'unknown TPU accelerator type {accelerator_type!r}: use one like v3-8, v3-32, '
                     'v4-32, v5p-16, v5litepod-16 (or v5e-16), v6e-8')
  generation, count = _ALIASES.get(match[1], match[1]), int(match[2])
  cores_per_chip, runtime, valid = _GENERATIONS[generation]
  if valid is not None and count not in valid:
    raise ValueError(f'{accelerator_type!r} does not exist: {generation} sizes are '
                     f'{", ".join(str(v) for v in valid)}')
  if cores_per_chip == 2:  # N counts TensorCores
    if count < 8 or count % 8:
      raise ValueError(f'{accelerator_type!r} does not exist: {generation}-N counts TensorCores '
                       'and N is a multiple of 8 (v4-8, v4-16, v4-32, ...)')
    chips = count // 2
    hosts = chips // CHIPS_PER_HOST
  else:  # N counts chips
    chips = count
    hosts = 1 if chips <= MAX_SINGLE_HOST_CHIPS else chips // CHIPS_PER_HOST
  return SliceType(accelerator_type=f'{generation}-{count}', generation=generation, chips=chips,
                   cores=chips * cores_per_chip, hosts=hosts, default_runtime=runtime)
