"""Accelerator peaks: bf16 dense FLOP/s per chip, per TensorCore and per JAX device.

A *chip* is what Cloud TPU and GPU prices are quoted per (one GPU is one chip);
a *core* is a TensorCore, the unit of the paper's "TPUv3-core-days" (two per
v2/v3/v4/v5p chip, one per v5e/v6e chip, one per GPU); a *device* is what
`jax.devices()` lists. On v2 and v3 each core is a JAX device; on v4 and v5p
the two cores of a chip form one "megacore" device; elsewhere a device is a
chip. Peaks are the vendors' dense (not 2:4 sparse) bf16 figures.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Optional


@dataclasses.dataclass(frozen=True)
class Hardware:
  """One accelerator model and how it divides into cores and JAX devices."""
  key: str                      # the planner's name: 'v3', 'h100', ...
  name: str                     # the human name: 'TPU v3', 'NVIDIA H100 SXM'
  peak_flops_per_chip: float    # bf16 dense FLOP/s
  cores_per_chip: int
  devices_per_chip: int

  @property
  def peak_flops_per_core(self) -> float:
    return self.peak_flops_per_chip / self.cores_per_chip

  @property
  def peak_flops_per_device(self) -> float:
    return self.peak_flops_per_chip / self.devices_per_chip

  @property
  def cores_per_device(self) -> float:
    return self.cores_per_chip / self.devices_per_chip


HARDWARE: dict[str, Hardware] = {h.key: h for h in [
    Hardware('v2', 'TPU v2', 45e12, 2, 2),
    Hardware('v3', 'TPU v3', 123e12, 2, 2),
    Hardware('v4', 'TPU v4', 275e12, 2, 1),
    Hardware('v5e', 'TPU v5e', 197e12, 1, 1),
    Hardware('v5p', 'TPU v5p', 459e12, 2, 1),
    Hardware('v6e', 'TPU v6e', 918e12, 1, 1),
    Hardware('a100', 'NVIDIA A100', 312e12, 1, 1),
    Hardware('h100', 'NVIDIA H100 SXM', 989.4e12, 1, 1),
    Hardware('h100-pcie', 'NVIDIA H100 PCIe', 756e12, 1, 1),
    Hardware('h100-nvl', 'NVIDIA H100 NVL', 835.5e12, 1, 1),
    Hardware('h200', 'NVIDIA H200 SXM', 989.4e12, 1, 1),
    Hardware('h200-nvl', 'NVIDIA H200 NVL', 835.5e12, 1, 1),
]}

# jax's `device.device_kind` strings -> hardware keys (compared lower-case).
_DEVICE_KINDS = {
    'tpu v2': 'v2', 'tpu v3': 'v3', 'tpu v4': 'v4',
    'tpu v5 lite': 'v5e', 'tpu v5e': 'v5e',
    'tpu v5': 'v5p', 'tpu v5p': 'v5p',
    'tpu v6 lite': 'v6e', 'tpu v6e': 'v6e',
    'nvidia h100 80gb hbm3': 'h100', 'nvidia h100 pcie': 'h100-pcie',
    'nvidia h100 nvl': 'h100-nvl', 'nvidia h200': 'h200',
    'nvidia h200 nvl': 'h200-nvl',
}
# Names a user may type for the planner, beyond the keys themselves.
_ALIASES = {
    'v5litepod': 'v5e', 'v5lite': 'v5e', 'v6litepod': 'v6e', 'v6lite': 'v6e',
    'trillium': 'v6e', 'a100-40gb': 'a100', 'a100-80gb': 'a100',
    'h100-sxm': 'h100', 'h200-sxm': 'h200',
}


def for_device_kind(device_kind: str) -> Optional[Hardware]:
  """The hardware behind a jax `device_kind` string, or None when unknown.

  Unknown kinds (including 'cpu' and TPU generations not in the table such as
  'TPU v4 lite') give None: no MFU is better than a guessed one.
  """
  kind = ' '.join(device_kind.lower().split())
  if kind in _DEVICE_KINDS:
    return HARDWARE[_DEVICE_KINDS[kind]]
  if kind.startswith('nvidia a100'):  # -SXM4-40GB, -SXM4-80GB, -PCIE-40GB ...
    return HARDWARE['a100']
  if kind.startswith('nvidia h100') and 'hbm3' in kind:  # 94GB/64GB SXM parts
    return HARDWARE['h100']
  return None


def peak_flops(device_kind: str) -> Optional[float]:
  """bf16 dense peak FLOP/s of one JAX device of this kind, or None if unknown."""
  hardware = for_device_kind(device_kind)
  return None if hardware is None else hardware.peak_flops_per_device


def cores_per_device(device_kind: str) -> float:
  """TensorCores per JAX device (2 on v4/v5p megacore chips); 1 when unknown."""
  hardware = for_device_kind(device_kind)
  return 1.0 if hardware is None else hardware.cores_per_device


def kind_slug(device_kind: str) -> str:
  """A key-safe spelling of a device kind: 'TPU v5 lite' -> 'tpu_v5_lite'."""
  slug = re.sub(r'[^a-z0-9]+', '_', device_kind.lower()).strip('_')
  if not slug:
    raise ValueError(f'device kind {device_kind!r} has no letters or digits; '
                     f'pass jax.devices()[0].device_kind.')
  return slug


def parse_hardware(spec: str) -> tuple[Hardware, Optional[int]]:
  """'v3' -> (TPU v3, None); a Cloud TPU slice 'v3-8' -> (TPU v3, 4 chips).

  The number in a slice name counts TensorCores (v2, v3, v4, v5p) or chips
  (v5e, v6e: one core each), so chips = cores / cores_per_chip either way.
  Also accepts jax device kinds ('TPU v3', 'NVIDIA H100 80GB HBM3').
  """
  text = ' '.join(spec.strip().lower().split())
  hardware = for_device_kind(text)
  if hardware is not None:
    return hardware, None
  text = text.replace(' ', '-').removeprefix('tpu-').removeprefix('nvidia-')
  key = _ALIASES.get(text, text)
  if key in HARDWARE:
    return HARDWARE[key], None
  match = re.fullmatch(r'([a-z0-9]+?)(?:pod)?-(\d+)', text)
  if match and _ALIASES.get(match[1], match[1]) in HARDWARE:
    hardware = HARDWARE[_ALIASES.get(match[1], match[1])]
    if hardware.key.startswith(('a', 'h')):
      raise ValueError(f'{spec!r} is not a slice name; give GPUs as '
                       f'--hardware {hardware.key} --chips N.')
    cores = int(match[2])
    if cores == 0 or cores % hardware.cores_per_chip:
      raise ValueError(f'slice {spec!r} has {cores} cores, not a positive '
                       f'multiple of the {hardware.cores_per_chip} cores of a '
                       f'{hardware.name} chip.')
    return hardware, cores // hardware.cores_per_chip
  raise ValueError(f'unknown hardware {spec!r}; known: {", ".join(HARDWARE)} '
                   f'(or a Cloud TPU slice such as v3-8, v4-32, v5litepod-16).')
