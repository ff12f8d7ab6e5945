"""Compile the exact job for a TPU slice before renting it: HBM, collectives and step time from the TPU compiler, on this machine.

    python -m vit_jax.main --config=configs/pretrain.py:model=B/16 \
        --compile_only --topology=v3-32

builds what the run would build from the same config (model, dtype, remat,
scanned layers, optimizer, sharding rules, mesh, accumulation, EMA:
`vit_jax.assembly`, the one the training loop uses), compiles the training
step and the evaluation step with XLA:TPU for the slice's devices (libtpu
describes any slice without a TPU: `vit_jax.planner.tpu`), runs nothing, and
reports per device the HBM by kind (XLA:TPU's own figures) against the
chip's, the collectives per step by kind, and the compiler's predicted step
time with the images/s per core and MFU it implies. Without `--topology` it
compiles for the devices this process has (CPU, GPU), for which the memory
figures are that backend's.

A job that does not compile, or does not fit, is one line naming the miss
and the change that would fit (`PreflightError`, exit status 2 in main).
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from typing import Any, Optional, Sequence

import jax

from vit_jax import assembly, parallel
from vit_jax.budget import hardware as hardware_lib
from vit_jax.evaluate import inputs as eval_inputs
from vit_jax.planner import collectives as collectives_lib
from vit_jax.planner import tpu

GiB = 2.**30
#: Remat policies' model FLOPs executed per useful FLOP ('full' recomputes
#: the forward pass in the backward).
RECOMPUTE = {'full': 4 / 3}


class PreflightError(ValueError):
  """The job does not compile or does not fit: one line, with the fix."""


@dataclasses.dataclass(frozen=True)
class Preflight:
  """What the compiler said about one job on one slice."""
  label: str
  num_params: int
  target: str                 # 'v3-32' or the local backend
  hardware: Optional[hardware_lib.Hardware]
  num_devices: int
  knobs: 'Knobs'
  train: Any                  # planner.tpu.CompiledStep of the training step
  eval: Any                   # ... of the evaluation step (None: no evals)
  compile_s: float
  model_flops_per_device: float   # useful FLOPs of one step, per device
  #: Multislice: the slices, and the training step's collectives that cross
  #: DCN between them (planner.collectives.slice_split; included in `train`).
  num_slices: int = 1
  dcn: Any = None

  @property
  def dcn_bytes(self) -> float:
    """Bytes one device sends over DCN per step."""
    return self.dcn.total_bytes_per_device if self.dcn else 0.0

  @property
  def dcn_step_s(self) -> Optional[float]:
    """Seconds the DCN bytes take at the chip's published DCN bandwidth
    (`hardware.DCN_BYTES_PER_S_PER_CHIP`); None where none is published."""
    rate = hardware_lib.dcn_bytes_per_s_per_device(self.hardware)
    return self.dcn_bytes / rate if rate and self.dcn_bytes else None

  @property
  def mesh(self) -> dict:
    return self.knobs.mesh

  @property
  def batch_size(self) -> int:
    return self.knobs.batch_size

  @property
  def accum_steps(self) -> int:
    return self.knobs.accum_steps

  @property
  def remat(self) -> str:
    return self.knobs.remat

  @property
  def hbm_bytes(self) -> Optional[float]:
    return self.hardware.hbm_bytes_per_device if self.hardware else None

  @property
  def peak_bytes(self) -> float:
    return max(self.train.peak_bytes,
               self.eval.peak_bytes if self.eval else 0)

  @property
  def fits(self) -> Optional[bool]:
    return None if self.hbm_bytes is None else self.peak_bytes <= self.hbm_bytes

  @property
  def flop_bound_s(self) -> Optional[float]:
    """The step at the chip's peak FLOP/s, recomputation included."""
    if not self.hardware:
      return None
    return (self.model_flops_per_device * RECOMPUTE.get(self.remat, 1.0) /
            self.hardware.peak_flops_per_device)

  @property
  def step_s(self) -> Optional[float]:
    """The compiler's estimate, never below the FLOP bound (the cost model
    counts a scanned loop's body once)."""
    estimate = self.train.optimal_seconds
    bound = self.flop_bound_s
    if estimate is None:
      return bound
    return max(estimate, bound or 0.0)

  @property
  def mfu(self) -> Optional[float]:
    if not self.step_s or not self.hardware:
      return None
    return self.model_flops_per_device / (
        self.step_s * self.hardware.peak_flops_per_device)

  @property
  def img_per_sec_per_core(self) -> Optional[float]:
    if not self.step_s or not self.hardware:
      return None
    cores = self.num_devices * self.hardware.cores_per_device
    return self.batch_size / self.step_s / cores


def _num_classes(config) -> int:
  """The config's class count, else the training data's (bundled data is
  read; a dataset that is not here is the data's own one-line error)."""
  if config.get('num_classes'):
    return int(config['num_classes'])
  from vit_jax import data  # pylint: disable=g-import-not-at-top  (TensorFlow only when needed)
  return data.build_train(config['input'], global_batch_size=int(
      config['batch_size']), seed=0, process_index=0, process_count=1
                          ).num_classes


def _largest_eval(config) -> Optional[tuple[str, int]]:
  """(name, batch size) of the evaluator with the largest batch, or None."""
  sizes = [(int(ev.get('batch_size') or eval_inputs.DEFAULT_BATCH_SIZE), name)
           for name, ev in dict(config.get('evals') or {}).items()]
  if not sizes:
    return None
  batch, name = max(sizes)
  return name, batch


def _state_bytes(asm: assembly.Assembly) -> int:
  """Bytes of parameters, optimizer state and EMA one device holds, counted
  from the sharding rules (untiled)."""
  return int(sum(math.prod(s.shard_shape(x.shape)) * x.dtype.itemsize
                 for x, s in zip(jax.tree.leaves(asm.abstract_state),
                                 jax.tree.leaves(asm.shardings))))


_OUT_OF_MEMORY = re.compile(r'RESOURCE_EXHAUSTED|Ran out of memory')
_NEEDED = re.compile(r'required for .*?\(([\d.]+)([KMGT])\)\s*exceeds '
                     r'available HBM \(([\d.]+)([KMGT])\)')
_UNIT = {'K': 2**10, 'M': 2**20, 'G': 2**30, 'T': 2**40}


def run(config, topology: Optional[str] = None, *,
        num_slices: Optional[int] = None,
        devices: Optional[Sequence[Any]] = None) -> Preflight:
  """Compiles `config`'s steps for `topology` (a Cloud TPU slice name) or
  for `devices` (default: this process's); raises PreflightError when they
  do not compile, with the fix when the compiler ran out of HBM."""
  num_slices = int(num_slices or config['mesh'].get('num_slices') or 1)
  if topology:
    devices = tpu.slice_devices(topology, num_slices)
    hw, _ = hardware_lib.parse_hardware(topology)
    backend = 'tpu'
  else:
    devices = list(devices or jax.devices())
    hw = hardware_lib.for_device_kind(devices[0].device_kind)
    backend = devices[0].platform
  mesh = parallel.make_mesh(dict(config['mesh'], num_slices=num_slices),
                            devices)
  asm = assembly.assemble(config, mesh, _num_classes(config), backend=backend)
  largest_eval = _largest_eval(config)
  target = ((topology if num_slices == 1 else f'{num_slices} x {topology}')
            if topology else f'{len(devices)} x {devices[0].device_kind}')
  knobs = Knobs(mesh={a: int(s) for a, s in mesh.shape.items()},
                remat=config['model'].get('remat_policy') or 'none',
                accum_steps=asm.accum_steps, batch_size=asm.batch_size,
                state_bytes=_state_bytes(asm), eval=largest_eval,
                accumulate=config.get('accumulate') or 'local')
  t0 = time.perf_counter()
  which, evaluation = 'training step', None
  try:
    compiled = asm.compile()
    train = tpu.analyze(compiled)
    _, dcn = collectives_lib.slice_split(
        collectives_lib.parse(compiled.as_text(), len(devices)),
        [parallel.device_slices(devices)[list(devices).index(d)]
         for d in mesh.devices.flat] if num_slices > 1 else None)
    if largest_eval:
      which = (f'evaluation step (evals.{largest_eval[0]}, batch '
               f'{largest_eval[1]:,})')
      evaluation = tpu.analyze(asm.compile_eval(largest_eval[1]))
  except Exception as e:  # pylint: disable=broad-except  (XLA's errors)
    text = str(e).strip()
    if _OUT_OF_MEMORY.search(text):
      raise PreflightError(_miss_line(asm.label, target, which, text, knobs,
                                      hw, training=which == 'training step')
                           ) from None
    first = text.splitlines()[0] if text else repr(e)
    raise PreflightError(f'{asm.label} does not compile for {target}: '
                         f'{first}') from None
  n = len(devices)
  return Preflight(
      label=asm.label, num_params=sum(x.size for x in jax.tree.leaves(
          asm.abstract_params)),
      target=target, hardware=hw, num_devices=n, knobs=knobs, train=train,
      eval=evaluation,
      compile_s=time.perf_counter() - t0,
      model_flops_per_device=asm.flops_per_image * asm.batch_size / n,
      num_slices=num_slices, dcn=dcn)


@dataclasses.dataclass(frozen=True)
class Knobs:
  """What of a config decides its memory, and what could change."""
  mesh: dict
  remat: str
  accum_steps: int
  batch_size: int
  state_bytes: int    # parameters + optimizer state + EMA per device
  accumulate: str = 'local'
  eval: Optional[tuple[str, int]] = None  # the largest evaluator's batch

  def eval_suggestion(self, hbm_bytes: Optional[float],
                      temp_bytes: Optional[float] = None) -> str:
    """A smaller evaluation batch that divides into the room left."""
    name, batch = self.eval
    shards = self.mesh['data'] * self.mesh['fsdp']
    room = (hbm_bytes or 0) - self.state_bytes
    factor = 2
    if temp_bytes and room > 0:
      factor = 2 ** max(1, math.ceil(math.log2(temp_bytes / room)))
    smaller = batch // factor
    smaller -= smaller % shards
    if smaller < shards:
      return 'use a larger slice'
    return (f'evaluate in smaller batches '
            f'(--config.evals.{name}.batch_size={smaller})')

  def suggestion(self, hbm_bytes: Optional[float],
                 temp_bytes: Optional[float] = None) -> str:
    """The changes that would shrink the miss, the likeliest first: FSDP
    when the state takes a quarter of the HBM, remat, more micro-batches
    (when only those are left and the compiler said what the temporaries
    need: enough micro-batches to divide them into the room left)."""
    devices = math.prod(self.mesh.values())
    shards = self.mesh['data'] * self.mesh['fsdp']
    fsdp = (f'shard parameters and optimizer state with FSDP '
            f'(--config.mesh.fsdp={devices // self.mesh["model"]} '
            f'--config.mesh.data=1)'
            if self.mesh['fsdp'] == 1 and devices > 1 else None)
    remat = ('recompute activations in the backward pass '
             '(--config.model.remat_policy=full)'
             if self.remat != 'full' else None)
    # Local accumulation under FSDP holds a whole gradient per device.
    reduced = ('sum micro-batch gradients sharded (--config.accumulate='
               'reduced)' if self.mesh['fsdp'] > 1 and self.accum_steps > 1
               and self.accumulate == 'local' else None)
    factor = 2
    room = (hbm_bytes or 0) - self.state_bytes
    if not fsdp and not remat and not reduced and temp_bytes and room > 0:
      factor = 2 ** max(1, math.ceil(math.log2(temp_bytes / room)))
    while factor > 2 and self.batch_size % (shards * self.accum_steps *
                                             factor):
      factor //= 2
    accum = (f'split the batch into more micro-batches '
             f'(--config.accum_steps={self.accum_steps * factor})'
             if self.batch_size % (shards * self.accum_steps * factor) == 0
             else None)
    heavy_state = hbm_bytes and self.state_bytes > 0.25 * hbm_bytes
    order = ([fsdp, remat, reduced, accum] if heavy_state else
             [remat, reduced, accum, fsdp])
    return '; '.join(k for k in order if k) or ('use a larger slice or a '
                                                'smaller batch')


def _miss_line(label, target, which, text, knobs: Knobs, hw, *,
               training: bool = True) -> str:
  """One line for a step the compiler could not fit into HBM."""
  found = _NEEDED.search(text)
  hbm = hw.hbm_bytes_per_device if hw else None
  need = None
  if found:
    need = float(found[1]) * _UNIT[found[2]]
    have = float(found[3]) * _UNIT[found[4]]
    amount = (f'the {which} needs {need / GiB:,.2f} GiB of temporaries per '
              f'device beside {knobs.state_bytes / GiB:.2f} GiB of parameters '
              f'and optimizer state; {have / GiB:.2f} GiB of HBM is usable')
    hbm = have  # What the compiler can use of the chip's HBM.
  else:
    amount = f'the compiler ran out of HBM for the {which}'
  fix = (knobs.suggestion(hbm, need) if training else
         knobs.eval_suggestion(hbm, need))
  return f'{label} does not fit {target}: {amount}; to fit, try in this order: {fix}.'


def check(p: Preflight) -> None:
  """Raises PreflightError when the job does not fit the chip's HBM."""
  if p.fits is False:
    training = not p.eval or p.train.peak_bytes >= p.eval.peak_bytes
    which = 'the training step' if training else 'the evaluation step'
    fix = (p.knobs.suggestion(p.hbm_bytes) if training else
           p.knobs.eval_suggestion(p.hbm_bytes))
    raise PreflightError(
        f'{p.label} does not fit {p.target}: {which} needs '
        f'{p.peak_bytes / GiB:.2f} GiB per device of '
        f'{p.hbm_bytes / GiB:.2f} GiB HBM (misses by '
        f'{(p.peak_bytes - p.hbm_bytes) / GiB:.2f} GiB); to fit, try in this '
        f'order: '
        f'{fix}.')


def _memory_line(name: str, c, hbm: Optional[float]) -> str:
  share = f' of {hbm / GiB:.2f} GiB HBM ({c.peak_bytes / hbm:.0%})' if hbm else ''
  return (f'  {name}: peak {c.peak_bytes / GiB:.3f} GiB{share} = arguments '
          f'{c.argument_bytes / GiB:.3f} + outputs {c.output_bytes / GiB:.3f} '
          f'- aliased {c.alias_bytes / GiB:.3f} + temporaries '
          f'{c.temp_bytes / GiB:.3f} GiB')


def format_report(p: Preflight) -> str:
  """What a person reads before renting the slice."""
  mesh = ' x '.join(f'{a}={s}' for a, s in p.mesh.items() if s > 1) or 'data=1'
  compiler = ('XLA:TPU' if p.hardware and p.target.split(' x ')[-1][:1] == 'v'
              else 'XLA')
  lines = [
      f'preflight: {p.label} ({p.num_params:,} parameters), batch '
      f'{p.batch_size:,}' + (f' in {p.accum_steps} micro-batches'
                             if p.accum_steps > 1 else '') +
      f', mesh {mesh}, remat={p.remat}, on {p.target} ({p.num_devices} '
      f'devices); compiled by {compiler} in {p.compile_s:.1f} s, nothing ran',
      'HBM per device (the compiler\'s memory analysis):',
      _memory_line('training step', p.train, p.hbm_bytes),
  ]
  if p.eval:
    name, batch = p.knobs.eval
    lines.append(_memory_line(f'evaluation step (evals.{name}, batch '
                              f'{batch:,})', p.eval, p.hbm_bytes))
  coll = p.train.collective_bytes
  parts = ', '.join(f'{k} {v / 2**20:,.1f} MiB ({p.train.collectives.count[k]})'
                    for k, v in coll.items() if v)
  lines.append(f'collectives per device per step: '
               f'{sum(coll.values()) / GiB:.3f} GiB sent'
               + (f' ({parts})' if parts else ''))
  if p.num_slices > 1:
    rate = hardware_lib.dcn_bytes_per_s_per_device(p.hardware)
    lines.append(
        f'  of which over DCN between the {p.num_slices} slices: '
        f'{p.dcn_bytes / 2**20:,.2f} MiB ({sum(p.dcn.count.values())} '
        f'transfers), on ICI {(sum(coll.values()) - p.dcn_bytes) / 2**20:,.2f}'
        f' MiB; ' + (f'{p.dcn_step_s * 1e3:,.2f} ms at {rate / 1e9:.3g} GB/s '
                     f'DCN per device' if p.dcn_step_s else
                     'no published DCN bandwidth for this chip'))
  if p.step_s is not None and p.hardware:
    est = p.train.optimal_seconds
    how = ('the compiler\'s estimate' if est is not None and
           est >= (p.flop_bound_s or 0) else
           f'the FLOP bound at peak (the compiler\'s {est * 1e3:,.1f} ms '
           f'counts a scanned loop once)' if est is not None else
           'the FLOP bound at peak')
    lines.append(
        f'step time: {p.step_s * 1e3:,.1f} ms ({how}; a lower bound, not a '
        f'forecast) -> {p.img_per_sec_per_core:,.1f} img/s per core, '
        f'{p.mfu:.0%} MFU of {p.hardware.name}')
  verdict = ('fits' if p.fits else 'does NOT fit' if p.fits is False
             else 'compiles (HBM of this device unknown)')
  lines.append(f'PREFLIGHT {verdict}: {p.label} on {p.target}, '
               f'{p.peak_bytes / GiB:.2f} GiB per device')
  return '\n'.join(lines)
