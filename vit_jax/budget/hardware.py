"""Accelerator peaks: bf16 dense FLOP/s, HBM and interconnect bandwidth per chip, core and JAX device.

A *chip* is what Cloud TPU and GPU prices are quoted per (one GPU is one chip);
a *core* is a TensorCore, the unit of the paper's "TPUv3-core-days" (two per
v2/v3/v4/v5p chip, one per v5e/v6e chip, one per GPU); a *device* is what
`jax.devices()` lists. On v2 and v3 each core is a JAX device; on v4 and v5p
the two cores of a chip form one "megacore" device; elsewhere a device is a
chip. Peaks are the vendors' dense (not 2:4 sparse) bf16 figures.

Memory is the HBM per chip (and its bandwidth, TPUs only); the interconnect
figure is the bandwidth one chip sends with at once, in one direction, to the
other chips of its slice or node (ICI on TPUs, NVLink through NVSwitch on
GPUs); the comments and `SOURCES` say where each figure comes from. None
where no published figure was found.
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
  hbm_bytes_per_chip: Optional[float] = None
  #: Unidirectional bytes/s one chip sends to its slice (ICI) or node (NVLink).
  interconnect_bytes_per_s_per_chip: Optional[float] = None
  #: Bytes/s between the chip's HBM and its cores.
  hbm_bandwidth_bytes_per_s_per_chip: Optional[float] = None

  @property
  def peak_flops_per_core(self) -> float:
    return self.peak_flops_per_chip / self.cores_per_chip

  @property
  def peak_flops_per_device(self) -> float:
    return self.peak_flops_per_chip / self.devices_per_chip

  @property
  def cores_per_device(self) -> float:
    return self.cores_per_chip / self.devices_per_chip

  @property
  def hbm_bytes_per_device(self) -> Optional[float]:
    """HBM one JAX device addresses (a v3 core has half of its chip's)."""
    if self.hbm_bytes_per_chip is None:
      return None
    return self.hbm_bytes_per_chip / self.devices_per_chip

  @property
  def hbm_bandwidth_bytes_per_s_per_device(self) -> Optional[float]:
    """The chip's HBM bandwidth, shared by its JAX devices."""
    if self.hbm_bandwidth_bytes_per_s_per_chip is None:
      return None
    return self.hbm_bandwidth_bytes_per_s_per_chip / self.devices_per_chip

  @property
  def interconnect_bytes_per_s_per_device(self) -> Optional[float]:
    """The chip's interconnect bandwidth, shared by its JAX devices."""
    if self.interconnect_bytes_per_s_per_chip is None:
      return None
    return self.interconnect_bytes_per_s_per_chip / self.devices_per_chip


GiB = 2.**30
GB = 1e9

HARDWARE: dict[str, Hardware] = {h.key: h for h in [
    # Cloud TPU's system-architecture pages (cloud.google.com/tpu/docs/<v>),
    # numbers as published; ICI is one direction, per chip (SOURCES below).
    # TPU v2: 45 TFLOP/s and 16 GiB HBM per chip, as this table has long had
    # them; the Cloud TPU v2 page now publishes no table (it refers to
    # Jouppi et al., CACM 2020), so no ICI or HBM bandwidth figure. 2
    # TensorCores per chip, each a JAX device; pods of 256 chips.
    Hardware('v2', 'TPU v2', 45e12, 2, 2, 16 * GiB),
    # Cloud TPU v3 page: 123 teraflops (bf16) per chip; HBM2 32 GiB,
    # 900 GBps; all-reduce bandwidth 340 TB/s per 1024-chip pod; 2
    # TensorCores per chip, each a JAX device.
    Hardware('v3', 'TPU v3', 123e12, 2, 2, 32 * GiB, 340e12 / 1024, 900 * GB),
    # Cloud TPU v4 page: 275 teraflops (bf16) per chip; HBM2 32 GiB,
    # 1200 GBps; all-reduce 1.1 PB/s per 4096-chip pod; 2 TensorCores per
    # chip, one megacore JAX device.
    Hardware('v4', 'TPU v4', 275e12, 2, 1, 32 * GiB, 1.1e15 / 4096,
             1200 * GB),
    # Cloud TPU v5e page: 197 TFLOPs (bf16) per chip; HBM2 16 GB, 819 GBps;
    # ICI 1600 Gbps (400 GBps bidirectional) per chip, all-reduce 51.2 TB/s
    # per 256-chip pod; 1 TensorCore per chip.
    Hardware('v5e', 'TPU v5e', 197e12, 1, 1, 16 * GB, 51.2e12 / 256,
             819 * GB),
    # Cloud TPU v5p page: 459 TFLOPs (bf16) per chip; HBM2e 95 GB (a newer
    # table says 95 GiB; the smaller is kept), 2765 GBps; ICI 4800 Gbps
    # (1200 GBps bidirectional) per chip; 2 TensorCores per chip, one
    # megacore JAX device.
    Hardware('v5p', 'TPU v5p', 459e12, 2, 1, 95 * GB, 4800e9 / 8, 2765 * GB),
    # Cloud TPU v6e page: 918 TFLOPs (bf16) per chip; HBM 32 GB, 1638 GBps;
    # ICI 800 GBps bidirectional per chip, all-reduce 102.4 TB/s per
    # 256-chip pod; 1 TensorCore per chip.
    Hardware('v6e', 'TPU v6e', 918e12, 1, 1, 32 * GB, 800 * GB / 2,
             1638 * GB),
    Hardware('a100', 'NVIDIA A100', 312e12, 1, 1, 80 * GB, 600 * GB / 2),
    Hardware('h100', 'NVIDIA H100 SXM', 989.4e12, 1, 1, 80 * GB, 900 * GB / 2),
    Hardware('h100-pcie', 'NVIDIA H100 PCIe', 756e12, 1, 1, 80 * GB,
             600 * GB / 2),
    Hardware('h100-nvl', 'NVIDIA H100 NVL', 835.5e12, 1, 1, 94 * GB,
             600 * GB / 2),
    Hardware('h200', 'NVIDIA H200 SXM', 989.4e12, 1, 1, 141 * GB,
             900 * GB / 2),
    Hardware('h200-nvl', 'NVIDIA H200 NVL', 835.5e12, 1, 1, 141 * GB,
             900 * GB / 2),
]}

#: Where the memory and interconnect figures come from. TPU interconnect:
#: Cloud TPU system-architecture pages, "all-reduce bandwidth per Pod" divided
#: by the chips of the pod (v3 340 TB/s / 1024; v4 1.1 PB/s / 4096; v5e
#: 51.2 TB/s / 256, equal to its 1,600 Gbps "interchip interconnect BW") or
#: the per-chip interconnect bandwidth (v5p 4,800 Gbps = 1,200 GBps both
#: ways; v6e 800 GBps both ways = 102.4 TB/s / 256). GPUs: NVIDIA's data
#: sheets give total (both directions) NVLink bandwidth per GPU; half of it
#: is what one GPU sends.
SOURCES = {
    'v2': '16 GiB HBM, 45 TFLOP/s per chip (the Cloud TPU v2 page no longer '
          'has a table); no ICI or HBM bandwidth figure',
    'v3': 'Cloud TPU v3 page: 32 GiB HBM2 at 900 GBps per chip; all-reduce '
          '340 TB/s per 1024-chip pod',
    'v4': 'Cloud TPU v4 page: 32 GiB HBM2 at 1200 GBps per chip; all-reduce '
          '1.1 PB/s per 4096-chip pod',
    'v5e': 'Cloud TPU v5e page: 16 GB HBM2 at 819 GBps; ICI 1,600 Gbps per '
           'chip (400 GB/s both ways); all-reduce 51.2 TB/s per 256-chip pod',
    'v5p': 'Cloud TPU v5p page: 95 GB HBM2e at 2765 GBps; ICI 4,800 Gbps per '
           'chip (1200 GBps both ways)',
    'v6e': 'Cloud TPU v6e page: 32 GB HBM at 1638 GBps per chip; ICI 800 GBps '
           'both ways per chip; all-reduce 102.4 TB/s per 256-chip pod',
    'a100': 'NVIDIA A100 data sheet: 80 GB (SXM 80GB part); NVLink 600 GB/s',
    'h100': 'NVIDIA H100 data sheet: SXM 80 GB; NVLink 900 GB/s',
    'h100-pcie': 'NVIDIA H100 data sheet: PCIe 80 GB; NVLink bridge 600 GB/s',
    'h100-nvl': 'NVIDIA H100 data sheet: NVL 94 GB; NVLink 600 GB/s',
    'h200': 'NVIDIA H200 data sheet: SXM 141 GB; NVLink 900 GB/s',
    'h200-nvl': 'NVIDIA H200 data sheet: NVL 141 GB; NVLink 900 GB/s',
}

#: Data-centre network (DCN) bytes/s one chip sends to other slices
#: (multislice), one direction: the Cloud TPU v6e page's "data center network
#: bandwidth per Pod" over the pod's 256 chips, equal to its per-host NICs
#: over the host's 8 chips (v5e: 6.4 Tbps per pod, 2 x 100 Gbps a host:
#: 25 Gbps a chip; v6e: 25.6 Tbps, 4 x 200 Gbps: 100 Gbps a chip). No
#: published figure for the other generations: None.
DCN_BYTES_PER_S_PER_CHIP = {'v5e': 6.4e12 / 8 / 256, 'v6e': 25.6e12 / 8 / 256}


def dcn_bytes_per_s_per_device(hardware: Optional[Hardware]) -> Optional[float]:
  """The chip's DCN bandwidth shared by its JAX devices; None if unpublished."""
  if hardware is None or hardware.key not in DCN_BYTES_PER_S_PER_CHIP:
    return None
  return DCN_BYTES_PER_S_PER_CHIP[hardware.key] / hardware.devices_per_chip


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
