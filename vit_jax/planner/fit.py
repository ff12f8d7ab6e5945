"""Whether the real sharded training step fits a slice: per-device memory, collectives and predicted step time.

The step is the one `vit_jax.main` runs, built by `vit_jax.assembly` from
the recipe (optimizer, sharding rules, accumulation, EMA).

Memory per device is counted, not compiled: parameters, optimizer state and
EMA from the sharding rules on the full model (exact), gradients like the
parameters, one device's slice of the batch, and the activations of
`activations.py` (what JAX's autodiff keeps for the backward pass at the
remat policy and compute dtype, plus one block's working set). XLA:CPU's
own memory analysis of the compiled step is reported beside it, not used:
it counts bfloat16 temporaries at float32 size and does not realise remat's
savings (docs/budget.md).

Collectives are compiled: the step is lowered with abstract inputs for a
mesh over N simulated CPU devices and compiled, never run, and the
optimised HLO lists every collective (`collectives.py`). Compiling a
32-layer model for every mesh would be slow on a small machine, so the
encoder is compiled with `layers` = (1, 2) blocks and every per-device
figure f is extrapolated to the model's L blocks:
f(L) = f(1) + (L - 1) (f(2) - f(1)); blocks are identical, so collective
bytes are exactly linear in L (the test suite compares a full compile).

On XLA:TPU (`compiler='tpu'`, or 'auto' for a TPU slice when libtpu is
installed) the step is also compiled for the slice by the TPU compiler
(`planner.tpu`, no TPU needed): its memory analysis decides whether the
layout fits (a compile refused with RESOURCE_EXHAUSTED is a miss, with the
compiler's numbers), its collectives replace XLA:CPU's, and its cost model
gives the step time, never below the FLOP bound (it counts a loop's body
once). Data-parallel layouts compile the full depth once with scanned
layers; layouts that shard the parameters compile unrolled blocks at two
depths (a scanned FSDP step is another program on this libtpu). The count
and the stated-MFU time stay beside it.

Predicted step time = compute + (1 - overlap) x communication, with
compute = model FLOPs per device x recompute factor / (peak x MFU) and
communication = bytes sent per device / the interconnect bandwidth per
device (`hardware.Hardware`). The MFU and the overlap are stated inputs.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import time
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp

from vit_jax import assembly, models, parallel, sharding_rules, train_step
from vit_jax.budget import flops as flops_lib
from vit_jax.budget import hardware as hardware_lib
from vit_jax.planner import activations as activations_lib
from vit_jax.planner import collectives as collectives_lib
from vit_jax.planner import tpu as tpu_lib

#: Model FLOPs executed per useful FLOP under each remat policy: 'full'
#: recomputes the forward pass in the backward (3 -> 4 passes); 'dots' and
#: 'dots_no_batch' keep matrix products and recompute only element-wise ops.
RECOMPUTE = {'none': 1.0, 'dots': 1.0, 'dots_no_batch': 1.0, 'full': 4 / 3}
#: Remat policies tried, cheapest first; the next one only when the cheaper
#: one does not fit ('dots' on request: --remat-policy dots).
REMAT_ORDER = ('none', 'full')
DEFAULT_MARGIN = 0.1     # HBM kept free for XLA's own buffers and fragmentation.
DEFAULT_MFU = 0.5        # compute-only MFU (the project's B/16 target).
DEFAULT_OVERLAP = 0.0    # communication assumed not hidden behind compute.
DEFAULT_LAYERS = (1, 2)
COMPILE_CHOICES = ('always', 'if_fits', 'never')
#: Which compiler's figures `fit` reports: 'tpu' (XLA:TPU from libtpu, for a
#: TPU slice: its memory analysis decides, its cost model times the step),
#: 'cpu' (the analytic count decides; collectives from XLA:CPU on simulated
#: devices), 'auto' ('tpu' for a TPU slice when libtpu is importable).
COMPILERS = ('auto', 'tpu', 'cpu')
_OUT_OF_MEMORY = re.compile(r'RESOURCE_EXHAUSTED|Ran out of memory')
_NEEDED = re.compile(r'required for .*?\(([\d.]+)([KMGT])\)\s*exceeds '
                     r'available HBM \(([\d.]+)([KMGT])\)')
_UNIT = {'K': 2**10, 'M': 2**20, 'G': 2**30, 'T': 2**40}
#: The CPU backend's LLVM optimisation does not change buffer sizes or the
#: collectives, only compile time (halved); the test suite checks that.
FAST_COMPILE = {'xla_backend_optimization_level': 0,
                'xla_llvm_disable_expensive_passes': True}


@dataclasses.dataclass(frozen=True)
class StepSpec:
  """Everything that shapes the compiled step, as plain JSON-able values."""
  model: str
  batch_size: int
  image_size: int = 224
  num_classes: int = 1000
  model_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  optim: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  loss: str = 'softmax_xent'
  label_smoothing: float = 0.0
  accum_steps: int = 1
  rules: Sequence[Any] = dataclasses.field(
      default_factory=sharding_rules.default_sharding_rules)
  fsdp_min_size: int = 2**16
  ema: bool = False

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d['model_options'] = dict(self.model_options)
    d['optim'] = dict(self.optim)
    d['rules'] = [list(r) if isinstance(r, (list, tuple)) else r
                  for r in self.rules]
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> 'StepSpec':
    d = dict(d)
    d['rules'] = tuple(_rule(r) for r in d.get('rules', ()))
    return cls(**d)

  @property
  def num_layers(self) -> int:
    return int(self.model_options.get('num_layers') or
               models.get_spec(self.model).num_layers)


def _rule(rule) -> tuple:
  pattern, value = rule
  return (pattern, value if isinstance(value, str) else tuple(value))


def spec_from_config(config: Mapping[str, Any]) -> StepSpec:
  """The StepSpec of a training config (configs/*.py, a ConfigDict or dict)."""
  model_config = dict(config['model'])
  options = {k: v for k, v in model_config.items()
             if k not in ('name', 'remat_policy') and v is not None}
  if isinstance(options.get('patch_size'), int):
    options['patch_size'] = (options['patch_size'],) * 2
  optim_config = {k: (tuple(v) if isinstance(v, list) else v)
                  for k, v in dict(config['optim']).items()}
  image_size = config['image_size']
  if not isinstance(image_size, int):
    raise ValueError(f'fit needs a square image_size, got {image_size!r}.')
  return StepSpec(
      model=model_config['name'], batch_size=int(config['batch_size']),
      image_size=image_size, num_classes=int(config['num_classes'] or 1000),
      model_options=options, optim=optim_config,
      loss=config.get('loss', 'softmax_xent'),
      label_smoothing=float(config.get('label_smoothing', 0.0)),
      accum_steps=int(config.get('accum_steps', 1)),
      rules=tuple(_rule(r) for r in config['sharding']['rules']),
      fsdp_min_size=int(config['sharding']['fsdp_min_size']),
      ema=config.get('ema_decay') is not None)


# --------------------------------------------------------------------------
# Building and compiling the step.


def step_config(spec: StepSpec, remat: str,
                num_layers: Optional[int] = None) -> dict:
  """The training config of `spec` (as `vit_jax.assembly` reads it), with
  the remat policy and, for a reduced-depth compile, `num_layers` blocks."""
  model = dict(spec.model_options, name=spec.model, remat_policy=remat)
  if num_layers is not None:
    model['num_layers'] = num_layers
  return {
      'model': model, 'image_size': spec.image_size,
      'batch_size': spec.batch_size, 'accum_steps': spec.accum_steps,
      'total_steps': 10,
      'schedule': dict(base_lr=1e-3, warmup_steps=1, decay_type='linear'),
      'optim': dict(spec.optim), 'loss': spec.loss,
      'label_smoothing': spec.label_smoothing,
      'ema_decay': 0.9999 if spec.ema else None,
      'sharding': {'rules': spec.rules, 'fsdp_min_size': spec.fsdp_min_size},
      'seed': 0}


def _model(spec: StepSpec, remat: str, num_layers: Optional[int] = None):
  return models.build(step_config(spec, remat, num_layers)['model'],
                      spec.num_classes, backend='cpu')[0]


def _shard_bytes(tree, shardings) -> int:
  """Bytes one device holds of `tree` laid out by `shardings`."""
  total = 0
  for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)):
    total += math.prod(s.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize
  return int(total)


def use_simulated_devices(num_devices: int) -> None:
  """Makes jax start on CPU with `num_devices` simulated devices.

  Works before jax has started its backends; afterwards it only checks that
  enough devices are there (the test suite starts with 8).
  """
  try:
    jax.config.update('jax_platforms', 'cpu')
    jax.config.update('jax_num_cpu_devices', num_devices)
  except RuntimeError:
    pass
  _devices(num_devices)


def _devices(num_devices: int) -> list:
  devices = jax.devices()
  if len(devices) < num_devices:
    raise ValueError(f'{num_devices} devices are needed but jax started with '
                     f'{len(devices)}; run the fit in a fresh process (python '
                     f'-m vit_jax.planner fit) or set XLA_FLAGS=--xla_force_'
                     f'host_platform_device_count={num_devices}.')
  return devices[:num_devices]


def _mesh(mesh_sizes: Mapping[str, int], num_devices: int):
  return parallel.make_mesh(dict(mesh_sizes), _devices(num_devices))


def state_bytes(spec: StepSpec, mesh_sizes: Mapping[str, int],
                num_devices: int, num_layers: Optional[int] = None) -> dict:
  """Per-device parameter, optimizer-state (and EMA) bytes of the model (of
  `num_layers` blocks if given), counted from the sharding rules without
  compiling."""
  asm = assembly.assemble(step_config(spec, 'none', num_layers),
                          _mesh(mesh_sizes, num_devices), spec.num_classes,
                          backend='cpu')
  abstract, shardings = asm.abstract_state, asm.shardings
  out = {'params': _shard_bytes(abstract['params'], shardings['params']),
         'opt_state': _shard_bytes(abstract['opt_state'],
                                   shardings['opt_state'])}
  out['ema_params'] = (_shard_bytes(abstract['ema_params'],
                                    shardings['ema_params'])
                       if 'ema_params' in abstract else 0)
  return out


def compile_step(spec: StepSpec, mesh_sizes: Mapping[str, int],
                 num_devices: int, remat: str = 'none',
                 num_layers: Optional[int] = None,
                 compiler_options: Optional[Mapping[str, Any]] = None):
  """Lowers and compiles the training step for the mesh; runs nothing.

  Returns (compiled, seconds, abstract_state, shardings).
  """
  asm = assembly.assemble(step_config(spec, remat, num_layers),
                          _mesh(mesh_sizes, num_devices), spec.num_classes,
                          backend='cpu')
  t0 = time.perf_counter()
  compiled = asm.compile(FAST_COMPILE if compiler_options is None
                         else compiler_options)
  return (compiled, time.perf_counter() - t0, asm.abstract_state,
          asm.shardings)


def measure(spec: StepSpec, mesh_sizes: Mapping[str, int], num_devices: int,
            remat: str = 'none', num_layers: Optional[int] = None) -> dict:
  """XLA's per-device memory and the collectives of one compiled step."""
  compiled, seconds, _, _ = compile_step(spec, mesh_sizes, num_devices, remat,
                                         num_layers)
  memory = compiled.memory_analysis()
  summary = collectives_lib.summarize_hlo(compiled.as_text(), num_devices)
  return {
      'argument': float(memory.argument_size_in_bytes),
      'output': float(memory.output_size_in_bytes),
      'alias': float(memory.alias_size_in_bytes),
      'temp': float(memory.temp_size_in_bytes),
      'collective_bytes': dict(summary.bytes_per_device),
      'collective_count': dict(summary.count),
      'compile_s': seconds,
  }


def tpu_slice_name(hardware: str, chips: Optional[int] = None
                   ) -> Optional[str]:
  """The Cloud TPU slice name of `hardware` ('v3-8', or 'v3' with 4 chips
  -> 'v3-8'), None for hardware that is not a TPU."""
  hw, slice_chips = hardware_lib.parse_hardware(hardware)
  if hw.key not in ('v2', 'v3', 'v4', 'v5p', 'v5e', 'v6e'):
    return None
  if slice_chips and (chips is None or chips == slice_chips):
    return hardware.strip().lower()
  chips = chips or slice_chips
  if not chips:
    return None
  # Cloud TPU counts TensorCores on v2-v5p and chips on v5e and v6e.
  count = chips * (hw.cores_per_chip if hw.key in ('v2', 'v3', 'v4', 'v5p')
                   else 1)
  return f'{hw.key}-{count}'


def choose_compiler(hardware: str, chips: Optional[int] = None,
                    compiler: str = 'auto') -> str:
  """'tpu' or 'cpu': which compiler's figures a fit reports (`COMPILERS`).
  'tpu' asked for hardware that is not a TPU slice, or without libtpu, is a
  one-line ValueError; 'auto' falls back to 'cpu' quietly."""
  if compiler not in COMPILERS:
    raise ValueError(f'compiler must be one of {COMPILERS}, got '
                     f'{compiler!r}.')
  if compiler == 'cpu':
    return 'cpu'
  name = tpu_slice_name(hardware, chips)
  if compiler == 'tpu':
    if name is None:
      raise ValueError(f'the TPU compiler compiles for TPU slices; '
                       f'{hardware!r} is not one (use --compiler cpu).')
    tpu_lib.require_libtpu()
    return 'tpu'
  return 'tpu' if name and tpu_lib.libtpu_available() else 'cpu'


def measure_tpu(spec: StepSpec, mesh_sizes: Mapping[str, int],
                slice_name: str, remat: str = 'none',
                num_layers: Optional[int] = None,
                scan_layers: bool = True) -> dict:
  """XLA:TPU's per-device memory, cost and collectives of the step compiled
  for the slice (libtpu, no TPU; `planner.tpu`). A step the compiler cannot
  fit into HBM is not an error: {'oom': True, 'temp_needed': bytes the
  temporaries need, 'hbm_available': what the compiler could use, ...}."""
  devices = tpu_lib.slice_devices(slice_name)
  mesh = parallel.make_mesh(dict(mesh_sizes), devices)
  config = step_config(spec, remat, num_layers)
  config['model']['scan_layers'] = bool(scan_layers)
  asm = assembly.assemble(config, mesh, spec.num_classes, backend='tpu')
  t0 = time.perf_counter()
  try:
    compiled = asm.compile()
  except Exception as e:  # pylint: disable=broad-except  (XLA's errors)
    text = str(e).strip()
    if not _OUT_OF_MEMORY.search(text):
      first = text.splitlines()[0] if text else repr(e)
      raise ValueError(f'XLA:TPU could not compile the step for '
                       f'{slice_name}: {first}') from None
    found = _NEEDED.search(text)
    return {
        'oom': True, 'compile_s': time.perf_counter() - t0,
        'temp_needed': (float(found[1]) * _UNIT[found[2]] if found
                        else None),
        'hbm_available': (float(found[3]) * _UNIT[found[4]] if found
                          else None),
        'message': next((l.strip() for l in text.splitlines()
                         if _OUT_OF_MEMORY.search(l)), text[:300])}
  seconds = time.perf_counter() - t0
  step = tpu_lib.analyze(compiled, len(devices))
  return {
      'oom': False,
      'argument': float(step.argument_bytes),
      'output': float(step.output_bytes),
      'alias': float(step.alias_bytes),
      'temp': float(step.temp_bytes),
      'logical_argument': float(step.logical_argument_bytes or 0),
      'flops': float(step.flops or 0),
      'optimal_seconds': (None if step.optimal_seconds is None
                          else float(step.optimal_seconds)),
      'collective_bytes': dict(step.collective_bytes),
      'collective_count': dict(step.collectives.count),
      'compile_s': seconds,
  }


def _extrapolate_tpu(a: dict, b: dict, la: int, lb: int, full: int) -> dict:
  """`_extrapolate` of two XLA:TPU measurements; a miss at either depth is
  a miss at the full depth (the deeper step needs at least as much)."""
  if a['oom'] or b['oom']:
    return dict(b if b['oom'] else a)
  out = _extrapolate({k: v for k, v in a.items()
                      if k not in ('oom', 'optimal_seconds')},
                     {k: v for k, v in b.items()
                      if k not in ('oom', 'optimal_seconds')}, la, lb, full)
  ta, tb = a['optimal_seconds'], b['optimal_seconds']
  out['optimal_seconds'] = (None if ta is None or tb is None else
                            ta + (tb - ta) * (full - la) / (lb - la))
  out['oom'] = False
  return out


def _total(m: Mapping[str, Any]) -> float:
  """Peak bytes of one device: inputs, outputs not aliased to inputs, temps."""
  return m['argument'] + m['output'] - m['alias'] + m['temp']


def _extrapolate(a: dict, b: dict, la: int, lb: int, full: int) -> dict:
  """Linear extrapolation of every number of two measurements to `full`."""
  def one(x, y):
    if isinstance(x, dict):
      return {k: one(x[k], y[k]) for k in x}
    return x + (y - x) * (full - la) / (lb - la)
  return {k: one(a[k], b[k]) for k in a if k != 'compile_s'}


# --------------------------------------------------------------------------
# One fit, and the search over meshes and remat policies.


def activation_bytes(spec: StepSpec, mesh_sizes: Mapping[str, int],
                     remat: str = 'none',
                     layers: Sequence[int] = DEFAULT_LAYERS
                     ) -> activations_lib.ActivationBytes:
  """Per-device activation bytes of the step (`activations.py`): the
  residuals of the project's own loss traced at one device's micro-batch
  for `layers` blocks and extrapolated to the model's depth, and the
  working set of one block. Traces only; compiles nothing."""
  sizes = {a: int(mesh_sizes.get(a, 1)) for a in parallel.MESH_AXES}
  shards = sizes['data'] * sizes['fsdp']
  micro = spec.batch_size // shards // spec.accum_steps
  if micro < 1 or spec.batch_size % (shards * spec.accum_steps):
    raise ValueError(f'batch {spec.batch_size} does not split into '
                     f'{shards} shards x {spec.accum_steps} micro-batches; '
                     f'use a multiple of {shards * spec.accum_steps}.')
  arch = _spec_with_options(spec)
  split = dict(num_heads=arch.num_heads, mlp_dim=arch.mlp_dim,
               head_dim=arch.hidden_size // arch.num_heads)
  shape = (spec.image_size, spec.image_size, 3)
  inputs = (jax.ShapeDtypeStruct((micro, *shape), jnp.float32),
            jax.ShapeDtypeStruct((micro, spec.num_classes), jnp.float32),
            jax.random.key(0))

  @functools.lru_cache(maxsize=None)
  def count(policy: str, depth: int) -> tuple[float, float, float]:
    """(residual bytes, parameter bytes, the largest residual)."""
    model = _model(spec, policy, depth)
    params = models.param_shapes(model, spec.image_size)
    loss = train_step.make_loss_fn(model, spec.loss, spec.label_smoothing)
    found = activations_lib.per_device(
        activations_lib.residuals(loss, params, *inputs), sizes['model'],
        **split)
    param_bytes = sum(x.size * jnp.dtype(x.dtype).itemsize
                      for x in jax.tree.leaves(params))
    return float(sum(found)), float(param_bytes), max(found, default=0.0)

  full = spec.num_layers
  la, lb = sorted(layers)[:2]
  if lb >= full:
    la, lb = (1, full) if full > 1 else (full, full)
  saved_a, params_a, _ = count(remat, la)
  saved_b, params_b, _ = count(remat, lb)
  none_a, _, _ = count('none', la)
  none_b, _, largest = count('none', lb)
  steps = max(lb - la, 1)
  per_block_saved = (saved_b - saved_a) / steps if lb > la else 0.0
  block = (none_b - none_a) / steps if lb > la else none_a
  block_params = (params_b - params_a) / steps if lb > la else params_a
  gathered = block_params / sizes['model'] if sizes['fsdp'] > 1 else 0.0
  return activations_lib.ActivationBytes(
      # Without remat the compiler keeps each block's gathered parameters
      # for the backward pass (they are gathered once, see the collectives).
      saved=(saved_a + (full - la) * per_block_saved +
             (full * gathered if remat == 'none' else 0.0)),
      block=block,
      recomputed=max(block - per_block_saved, 0.0) if remat != 'none' else 0.,
      cotangents=2 * largest,
      gathered=2 * gathered)


@dataclasses.dataclass(frozen=True)
class Fit:
  """Per-device memory, communication and predicted time of one layout.

  `total_bytes` = parameters + optimizer state + EMA + gradients + batch +
  activations (saved residuals + one block's working set). The collectives
  and `xla_cpu_bytes` (XLA:CPU's own memory analysis of the compiled step,
  for reference) are None when the layout was not compiled.

  With `compiler='tpu'` the step was compiled by XLA:TPU for the slice:
  `tpu` holds the compiler's per-device figures (argument, output, alias,
  temp, peak bytes, flops, optimal_seconds; or oom=True with temp_needed
  and hbm_available when it could not fit the step), the verdict `fits` is
  the compiler's peak against the chip's HBM per device, the collectives
  are the TPU program's, and `tpu_step_s` is the compiler's step time (its
  cost model, never below the FLOP bound `flop_bound_s`; `tpu_time_source`
  says which). The analytic count (`total_bytes`, `analytic_fits`) and the
  stated-MFU time (`step_s`) stay beside it.
  """
  model: str
  hardware: str
  num_devices: int
  batch_size: int
  accum_steps: int
  mesh: dict
  remat: str
  params_bytes: float
  opt_state_bytes: float
  ema_bytes: float
  grads_bytes: float
  batch_bytes: float
  saved_bytes: float
  working_bytes: float
  total_bytes: float
  hbm_bytes: Optional[float]
  margin: float
  collective_bytes: Optional[dict]
  collective_count: Optional[dict]
  xla_cpu_bytes: Optional[float]
  compute_s: float
  comm_s: Optional[float]
  step_s: Optional[float]
  mfu: float
  overlap: float
  predicted_mfu: Optional[float]
  flops_per_step: float
  compile_s: float
  layers_compiled: tuple
  compiler: str = 'cpu'
  tpu: Optional[dict] = None
  flop_bound_s: Optional[float] = None
  tpu_step_s: Optional[float] = None
  tpu_time_source: Optional[str] = None
  scan_layers: bool = False

  @property
  def analytic_fits(self) -> Optional[bool]:
    """The analytic count against the usable HBM (`margin` kept free)."""
    if self.hbm_bytes is None:
      return None
    return self.total_bytes <= (1 - self.margin) * self.hbm_bytes

  @property
  def tpu_peak_bytes(self) -> Optional[float]:
    """XLA:TPU's peak per device: arguments + outputs - aliases + temps."""
    if not self.tpu or self.tpu.get('oom'):
      return None
    return _total(self.tpu)

  @property
  def fits(self) -> Optional[bool]:
    """XLA:TPU's verdict when the step was compiled for the TPU (the
    compiler's peak within the HBM per device; a step it could not fit
    does not), else the analytic count's."""
    if self.tpu:
      if self.tpu.get('oom'):
        return False
      if self.hbm_bytes is None:
        return None
      return self.tpu_peak_bytes <= self.hbm_bytes
    return self.analytic_fits

  @property
  def tpu_mfu(self) -> Optional[float]:
    """Model FLOPs / (devices x peak x XLA:TPU's step time)."""
    if self.tpu_step_s is None or not self.flop_bound_s:
      return None
    return self.flop_bound_s / RECOMPUTE[self.remat] / self.tpu_step_s

  @property
  def depth_text(self) -> str:
    """How the model's depth was compiled, for the report."""
    if not self.layers_compiled:
      return 'not compiled'
    if len(self.layers_compiled) == 1:
      return (f'full depth ({self.layers_compiled[0]} blocks)' +
              (', scanned layers' if self.scan_layers else ''))
    a, b = self.layers_compiled
    return f'{a} and {b} blocks, extrapolated to the model\'s depth'

  @property
  def miss_bytes(self) -> float:
    """Bytes over the usable HBM (negative: room left)."""
    return self.total_bytes - (1 - self.margin) * (self.hbm_bytes or 0)

  @property
  def activation_bytes(self) -> float:
    return self.saved_bytes + self.working_bytes

  @property
  def collective_total(self) -> Optional[float]:
    if self.collective_bytes is None:
      return None
    return float(sum(self.collective_bytes.values()))

  @property
  def mesh_name(self) -> str:
    parts = [f'{a}={self.mesh[a]}' for a in parallel.MESH_AXES
             if self.mesh.get(a, 1) > 1]
    return ' x '.join(parts) or 'data=1'

  @property
  def layout(self) -> str:
    """'fsdp=8 x data=4, remat=full' (and ', accum=K' when accumulating)."""
    text = f'{self.mesh_name}, remat={self.remat}'
    return text + (f', accum={self.accum_steps}' if self.accum_steps > 1
                   else '')

  def to_dict(self) -> dict:
    return dict(dataclasses.asdict(self), fits=self.fits,
                analytic_fits=self.analytic_fits,
                tpu_peak_bytes=self.tpu_peak_bytes,
                miss_bytes=self.miss_bytes, mesh_name=self.mesh_name,
                collective_total=self.collective_total,
                activation_bytes=self.activation_bytes)


def slice_of(hardware: str, chips: Optional[int] = None
             ) -> tuple[hardware_lib.Hardware, int, int]:
  """(hardware, chips, JAX devices) of 'v3-32' or ('h100', chips=8)."""
  hw, slice_chips = hardware_lib.parse_hardware(hardware)
  if chips is not None and slice_chips is not None and chips != slice_chips:
    raise ValueError(f'{hardware!r} has {slice_chips} chips, but chips={chips} '
                     f'was given; give one of them.')
  chips = chips or slice_chips
  if not chips or chips <= 0:
    raise ValueError(f'how many {hw.name} chips? give --chips N or a TPU '
                     f'slice name such as v3-32.')
  if hw.key.startswith(('a', 'h')) and chips > 8:
    raise ValueError(f'{chips} GPUs span several nodes; fit models one node '
                     f'(NVLink) only: give --chips 8 or fewer.')
  return hw, chips, chips * hw.devices_per_chip


def fit_one(spec: StepSpec, hardware: str, mesh_sizes: Mapping[str, int], *,
            chips: Optional[int] = None, remat: str = 'none',
            mfu: float = DEFAULT_MFU, overlap: float = DEFAULT_OVERLAP,
            margin: float = DEFAULT_MARGIN,
            layers: Sequence[int] = DEFAULT_LAYERS,
            compile: str = 'always', compiler: str = 'cpu',
            scan_layers: Optional[bool] = None) -> Fit:
  """Memory of one layout (counted: `state_bytes`, `activation_bytes`)
  and its collectives: the step compiled at two depths and extrapolated to
  the model's depth. `compile`: 'always', 'if_fits' (the collectives of a
  layout that does not fit are left out) or 'never'.

  `compiler` (`COMPILERS`): with 'tpu' (or 'auto' on a TPU slice with
  libtpu) the step is compiled by XLA:TPU for the slice, whatever
  `compile` says but 'never' (the compile is the verdict; a step that does
  not fit fails fast): memory, collectives and the step time are the
  compiler's, beside the count. `scan_layers` compiles the model's full
  depth once as a scanned loop (compile time independent of depth);
  unscanned, two depths are compiled and extrapolated. Default: the
  config's, and for XLA:TPU also scanned when the layout replicates the
  parameters (no fsdp or model axis: a scanned FSDP step is another
  program on this libtpu, docs/budget.md)."""
  if compile not in COMPILE_CHOICES:
    raise ValueError(f'compile must be one of {COMPILE_CHOICES}, got '
                     f'{compile!r}.')
  hw, _, n = slice_of(hardware, chips)
  _check_fractions(mfu, overlap, margin)
  which = choose_compiler(hardware, chips, compiler)
  if remat not in RECOMPUTE:
    raise ValueError(f'unknown remat policy {remat!r}; choose one of '
                     f'{sorted(RECOMPUTE)}.')
  sizes = dict(zip(parallel.MESH_AXES,
                   parallel.mesh_shape(dict(mesh_sizes), n)))
  full = spec.num_layers
  la, lb = sorted(layers)[:2]
  if la >= lb or la < 1:
    raise ValueError(f'layers must be two different depths >= 1, got '
                     f'{tuple(layers)}.')
  state = state_bytes(spec, sizes, n)
  acts = activation_bytes(spec, sizes, remat, (la, lb))
  shards = sizes['data'] * sizes['fsdp']
  image_bytes = spec.image_size**2 * 3 * 4 + spec.num_classes * 4
  batch_bytes = spec.batch_size // shards * image_bytes
  # Gradients: a tree like the parameters, sharded alike; accumulation adds
  # the running sum.
  grads_bytes = state['params'] * (2 if spec.accum_steps > 1 else 1)
  total = sum(state.values()) + grads_bytes + batch_bytes + acts.total

  collective_bytes = collective_count = xla_cpu = tpu_figures = None
  compile_s, used = 0.0, ()
  usable = (1 - margin) * (hw.hbm_bytes_per_device or math.inf)
  scan = scan_layers
  if scan is None:
    # XLA:TPU: scanned unless the layout shards parameters (FSDP or tensor
    # parallelism) and the config does not scan: this libtpu compiles a
    # scanned FSDP step into another program (the gathers taken out of the
    # loop, activation-sized all-reduces inside it; ViT-H/14 on a v3-32,
    # fsdp=32: 56 GiB of temporaries scanned, 3.6 GiB unrolled).
    scan = bool(spec.model_options.get('scan_layers')) or (
        which == 'tpu' and sizes['fsdp'] == 1 and sizes['model'] == 1)
  if which == 'tpu' and compile != 'never':
    name = tpu_slice_name(hardware, chips)
    if scan or lb >= full:
      measured = measure_tpu(spec, sizes, name, remat, full, scan)
      compile_s, used = measured.pop('compile_s'), (full,)
    else:
      a = measure_tpu(spec, sizes, name, remat, la, False)
      b = measure_tpu(spec, sizes, name, remat, lb, False)
      compile_s = a.pop('compile_s') + b.pop('compile_s')
      measured, used = _extrapolate_tpu(a, b, la, lb, full), (la, lb)
    tpu_figures = measured
    if not measured['oom']:
      collective_bytes = measured.pop('collective_bytes')
      collective_count = {k: int(round(v)) for k, v in
                          measured.pop('collective_count').items()}
  elif compile == 'always' or (compile == 'if_fits' and total <= usable):
    if lb >= full:
      measured = measure(spec, sizes, n, remat, full)
      compile_s, used = measured.pop('compile_s'), (full,)
    else:
      a = measure(spec, sizes, n, remat, la)
      b = measure(spec, sizes, n, remat, lb)
      compile_s = a.pop('compile_s') + b.pop('compile_s')
      measured, used = _extrapolate(a, b, la, lb, full), (la, lb)
    collective_bytes = measured['collective_bytes']
    collective_count = {k: int(round(v)) for k, v in
                        measured['collective_count'].items()}
    xla_cpu = _total(measured)
  flops_per_image = flops_lib.train_flops_per_image(
      _spec_with_options(spec), spec.image_size, spec.num_classes,
      spec.model_options.get('representation_size'),
      spec.model_options.get('classifier', 'token'))
  flops_per_step = flops_per_image * spec.batch_size
  compute_s = (flops_per_step / n * RECOMPUTE[remat] /
               (hw.peak_flops_per_device * mfu))
  flop_bound_s = flops_per_step / n * RECOMPUTE[remat] / hw.peak_flops_per_device
  tpu_step_s = tpu_source = None
  if tpu_figures and not tpu_figures['oom']:
    estimate = tpu_figures.get('optimal_seconds')
    if estimate is not None and estimate >= flop_bound_s:
      tpu_step_s, tpu_source = estimate, 'compiler'
    else:
      tpu_step_s, tpu_source = flop_bound_s, 'flop bound'
  bandwidth = hw.interconnect_bytes_per_s_per_device
  comm_s = step_s = predicted = None
  if bandwidth and collective_bytes is not None:
    comm_s = sum(collective_bytes.values()) / bandwidth
    step_s = compute_s + (1 - overlap) * comm_s
    predicted = flops_per_step / (n * hw.peak_flops_per_device * step_s)
  return Fit(
      model=spec.model, hardware=hardware, num_devices=n,
      batch_size=spec.batch_size, accum_steps=spec.accum_steps, mesh=sizes,
      remat=remat,
      params_bytes=state['params'], opt_state_bytes=state['opt_state'],
      ema_bytes=state['ema_params'], grads_bytes=grads_bytes,
      batch_bytes=batch_bytes, saved_bytes=acts.saved,
      working_bytes=acts.working, total_bytes=total,
      hbm_bytes=hw.hbm_bytes_per_device, margin=margin,
      collective_bytes=collective_bytes, collective_count=collective_count,
      xla_cpu_bytes=xla_cpu, compute_s=compute_s, comm_s=comm_s,
      step_s=step_s, mfu=mfu, overlap=overlap, predicted_mfu=predicted,
      flops_per_step=flops_per_step, compile_s=compile_s,
      layers_compiled=used, compiler=which if used else 'cpu',
      tpu=tpu_figures, flop_bound_s=flop_bound_s, tpu_step_s=tpu_step_s,
      tpu_time_source=tpu_source, scan_layers=bool(scan and used))


def _check_fractions(mfu: float, overlap: float, margin: float) -> None:
  if not 0 < mfu <= 1:
    raise ValueError(f'mfu must lie in (0, 1], got {mfu!r} (e.g. 0.5).')
  if not 0 <= overlap <= 1:
    raise ValueError(f'overlap must lie in [0, 1], got {overlap!r}.')
  if not 0 <= margin < 1:
    raise ValueError(f'margin must lie in [0, 1), got {margin!r} (e.g. 0.1).')


def _spec_with_options(spec: StepSpec):
  return models.with_architecture(models.get_spec(spec.model),
                                  spec.model_options)


def candidate_meshes(spec: StepSpec, num_devices: int) -> list[dict]:
  """The layouts tried on n devices, in this order: FSDP over all n; FSDP
  within groups of 8 (a host of TPU chips or an 8-GPU node) and data
  parallelism across them; pure data parallelism; tensor parallelism over
  2 devices with FSDP over the rest. Those whose data-parallel shards do not
  divide the batch, or whose model axis does not divide the heads and the
  MLP width, are left out."""
  arch = _spec_with_options(spec)
  n = num_devices
  meshes = [{'data': 1, 'fsdp': n, 'model': 1}]
  if n > 8 and n % 8 == 0:
    meshes.append({'data': n // 8, 'fsdp': 8, 'model': 1})
  meshes.append({'data': n, 'fsdp': 1, 'model': 1})
  if n % 2 == 0 and arch.num_heads % 2 == 0 and arch.mlp_dim % 2 == 0:
    meshes.append({'data': 1, 'fsdp': n // 2, 'model': 2})
  out = []
  for m in meshes:
    shards = m['data'] * m['fsdp']
    if spec.batch_size % (shards * spec.accum_steps) == 0 and m not in out:
      out.append(m)
  return out


def search(spec: StepSpec, hardware: str, *, chips: Optional[int] = None,
           mfu: float = DEFAULT_MFU, overlap: float = DEFAULT_OVERLAP,
           margin: float = DEFAULT_MARGIN, layers=DEFAULT_LAYERS,
           remats: Sequence[str] = REMAT_ORDER,
           meshes: Optional[Sequence[Mapping[str, int]]] = None,
           compile: str = 'if_fits', compiler: str = 'cpu',
           scan_layers: Optional[bool] = None, log=None) -> list[Fit]:
  """Tries the meshes (cheapest remat first, the next one only when it does
  not fit); returns every Fit, the fitting ones first by predicted step
  time, then the rest by memory. `compile`, `compiler` and `scan_layers`
  as in `fit_one` (by default only layouts that fit are compiled; XLA:TPU
  compiles every layout tried, its compile being the verdict)."""
  hw, _, n = slice_of(hardware, chips)
  _check_fractions(mfu, overlap, margin)
  compiler = choose_compiler(hardware, chips, compiler)
  meshes = list(meshes) if meshes else candidate_meshes(spec, n)
  if not meshes:
    raise ValueError(f'no mesh of {n} devices divides batch '
                     f'{spec.batch_size} into equal shards; use a batch that '
                     f'is a multiple of {n}.')
  results = []
  for mesh in meshes:
    sizes = dict(zip(parallel.MESH_AXES, parallel.mesh_shape(dict(mesh), n)))
    state = state_bytes(spec, sizes, n)
    static = sum(state.values())
    for remat in remats:
      if hw.hbm_bytes_per_device and static > (1 - margin) * hw.hbm_bytes_per_device:
        if log:
          log(f'skip {sizes} {remat}: parameters and optimizer state alone '
              f'take {static / 2**30:.2f} GiB per device')
        break
      fit = fit_one(spec, hardware, sizes, chips=chips, remat=remat, mfu=mfu,
                    overlap=overlap, margin=margin, layers=layers,
                    compile=compile, compiler=compiler,
                    scan_layers=scan_layers)
      if log:
        log(f'{fit.mesh_name:28s} remat={remat:5s} '
            f'{fit.total_bytes / 2**30:7.2f} GiB  fits={fit.fits}'
            + (_tpu_log(fit) if fit.tpu else '')
            + (f'  compile {fit.compile_s:.1f}s' if fit.layers_compiled
               else ''))
      results.append(fit)
      if fit.fits is not False:
        break
  if results and not any(f.fits is not False for f in results):
    results += _accumulate(spec, hardware, results, chips=chips, mfu=mfu,
                           overlap=overlap, margin=margin, layers=layers,
                           compile=compile, compiler=compiler,
                           scan_layers=scan_layers, log=log)
  return rank(results)


def _tpu_log(fit: Fit) -> str:
  if fit.tpu.get('oom'):
    return '  XLA:TPU: out of HBM'
  return f'  XLA:TPU {fit.tpu_peak_bytes / 2**30:.2f} GiB'



def _accumulate(spec: StepSpec, hardware: str, tried: Sequence[Fit], *,
                log=None, **kwargs) -> list[Fit]:
  """When no layout fits: for each mesh, at the last remat policy tried,
  the fewest micro-batches (doubling the config's accum_steps) that fit."""
  out, done = [], set()
  for fit in tried:
    key = tuple(sorted(fit.mesh.items()))
    last = [f for f in tried if tuple(sorted(f.mesh.items())) == key][-1]
    if key in done or fit is not last:
      continue
    done.add(key)
    shards = fit.mesh['data'] * fit.mesh['fsdp']
    k = spec.accum_steps * 2
    while spec.batch_size % (shards * k) == 0:
      trial = fit_one(dataclasses.replace(spec, accum_steps=k), hardware,
                      fit.mesh, remat=fit.remat, **kwargs)
      if log:
        log(f'{trial.mesh_name:28s} remat={trial.remat:5s} accum={k:<4d} '
            f'{trial.total_bytes / 2**30:7.2f} GiB  fits={trial.fits}'
            + (_tpu_log(trial) if trial.tpu else ''))
      if trial.fits is not False:
        out.append(trial)
        break
      k *= 2
  return out


def rank(fits: Sequence[Fit]) -> list[Fit]:
  """Fitting layouts by predicted step time, then the others by memory."""
  def key(f: Fit):
    if f.fits is not False:
      if f.tpu_step_s is not None:
        return (0, f.tpu_step_s, f.tpu_peak_bytes)
      return (0, f.step_s if f.step_s is not None else f.compute_s,
              f.total_bytes)
    return (1, f.total_bytes, 0.0)
  return sorted(fits, key=key)


# --------------------------------------------------------------------------
# Report.

GiB = 2.**30


def _collectives_text(fit: Fit) -> str:
  if fit.collective_bytes is None:
    return ('  collectives: not compiled' +
            (' (the layout does not fit)' if fit.fits is False else ''))
  coll = ', '.join(f'{k} {v / 2**20:,.1f} MiB ({fit.collective_count[k]})'
                   for k, v in fit.collective_bytes.items() if v) or 'none'
  source = ' (XLA:TPU)' if fit.compiler == 'tpu' else ''
  return (f'  collectives per device per step{source}: '
          f'{fit.collective_total / GiB:.3f} GiB sent ({coll})')


def _ms(seconds: float) -> str:
  """Milliseconds, one decimal below 10 ms."""
  ms = seconds * 1e3
  return f'{ms:,.1f}' if ms < 10 else f'{ms:,.0f}'


def _tpu_verdict(fit: Fit) -> str:
  t, hbm = fit.tpu, fit.hbm_bytes
  if t.get('oom'):
    need = (f': its temporaries need {t["temp_needed"] / GiB:.2f} GiB, '
            f'{t["hbm_available"] / GiB:.2f} GiB of HBM is available'
            if t.get('temp_needed') else f' ({t.get("message", "")})')
    return f'does NOT fit per XLA:TPU, which ran out of HBM{need}'
  peak = fit.tpu_peak_bytes
  if hbm is None:
    return f'XLA:TPU needs {peak / GiB:.2f} GiB per device (HBM unknown)'
  if fit.fits:
    return (f'fits per XLA:TPU ({peak / GiB:.2f} of {hbm / GiB:.2f} GiB HBM '
            f'per device)')
  return (f'does NOT fit per XLA:TPU: {peak / GiB:.2f} GiB > '
          f'{hbm / GiB:.2f} GiB HBM per device; misses by '
          f'{(peak - hbm) / GiB:.2f} GiB')


def _tpu_lines(fit: Fit) -> list[str]:
  t = fit.tpu
  where = (f'compiled by XLA:TPU for {tpu_slice_name(fit.hardware) or fit.hardware} '
           f'({fit.depth_text}) in {fit.compile_s:.1f} s')
  if t.get('oom'):
    return [f'  {where}: {t.get("message", "out of HBM")}']
  lines = [f'  {where}: peak {fit.tpu_peak_bytes / GiB:.3f} GiB per device = '
           f'arguments {t["argument"] / GiB:.3f} + outputs '
           f'{t["output"] / GiB:.3f} - aliased {t["alias"] / GiB:.3f} + '
           f'temporaries {t["temp"] / GiB:.3f} GiB']
  if fit.tpu_step_s is not None:
    estimate = t.get('optimal_seconds')
    if fit.tpu_time_source == 'compiler':
      how = (f'the compiler\'s cost model; FLOP bound at peak '
             f'{_ms(fit.flop_bound_s)} ms')
    else:
      how = ('the FLOP bound at peak' +
             (f'; the cost model\'s {_ms(estimate)} ms counts a '
              f'scanned loop\'s body once' if estimate is not None else
              '; the compiler gave no estimate'))
    lines.append(f'  XLA:TPU step time: {_ms(fit.tpu_step_s)} ms '
                 f'({how}; a lower bound) -> {fit.tpu_mfu:.0%} MFU')
  return lines


def format_fit(fit: Fit) -> str:
  """One paragraph on a layout: memory, collectives, time."""
  hbm = fit.hbm_bytes
  verdict = ('unknown HBM' if hbm is None else
             f'fits ({fit.total_bytes / GiB:.2f} of {hbm / GiB:.2f} GiB, '
             f'{fit.margin:.0%} kept free)' if fit.analytic_fits else
             f'does NOT fit: {fit.total_bytes / GiB:.2f} GiB > '
             f'{(1 - fit.margin) * hbm / GiB:.2f} GiB usable of '
             f'{hbm / GiB:.2f}; misses by {fit.miss_bytes / GiB:.2f} GiB')
  if fit.tpu:
    analytic = verdict
    verdict = _tpu_verdict(fit)
  lines = [
      f'{fit.model}, {fit.hardware} ({fit.num_devices} devices), batch '
      f'{fit.batch_size:,}, mesh {fit.layout}: {verdict}',
  ]
  if fit.tpu:
    lines += _tpu_lines(fit)
  lines += [
      ('  analytic count per device' if fit.tpu else '  per device') +
      f': params {fit.params_bytes / GiB:.3f} GiB, optimizer '
      f'{fit.opt_state_bytes / GiB:.3f} GiB'
      + (f', EMA {fit.ema_bytes / GiB:.3f} GiB' if fit.ema_bytes else '') +
      f', gradients {fit.grads_bytes / GiB:.3f} GiB, batch '
      f'{fit.batch_bytes / GiB:.3f} GiB, activations '
      f'{fit.activation_bytes / GiB:.3f} GiB (saved for the backward '
      f'{fit.saved_bytes / GiB:.3f} + one block\'s working set '
      f'{fit.working_bytes / GiB:.3f}), total {fit.total_bytes / GiB:.3f} GiB'
      + (f': {analytic}' if fit.tpu else ''),
      _collectives_text(fit),
  ]
  if fit.xla_cpu_bytes is not None:
    lines.append(f'  XLA:CPU\'s memory analysis of the compiled step: '
                 f'{fit.xla_cpu_bytes / GiB:.2f} GiB (float32 temporaries, '
                 f'no remat savings; not the verdict, see docs/budget.md)')
  if fit.step_s is not None:
    lines.append(
        ('  stated-MFU model: ' if fit.tpu else '  ') +
        f'predicted step {fit.step_s * 1e3:,.0f} ms = compute '
        f'{fit.compute_s * 1e3:,.0f} ms at {fit.mfu:.0%} MFU + communication '
        f'{fit.comm_s * 1e3:,.0f} ms x {1 - fit.overlap:.0%} not overlapped; '
        f'predicted MFU {fit.predicted_mfu:.1%}')
  elif fit.collective_bytes is None:
    lines.append(f'  compute {fit.compute_s * 1e3:,.0f} ms at {fit.mfu:.0%} '
                 f'MFU')
  else:
    lines.append(f'  compute {fit.compute_s * 1e3:,.0f} ms at {fit.mfu:.0%} '
                 f'MFU; no interconnect figure for this hardware')
  return '\n'.join(lines)


def format_table(fits: Sequence[Fit]) -> str:
  """A markdown table of fits (with XLA:TPU's figures beside the count when
  any fit was compiled for the TPU)."""
  if any(f.tpu for f in fits):
    return _format_tpu_table(fits)
  rows = ['| model | hardware | mesh | remat | accum | fits | GiB/device (HBM) | '
          'saved + working GiB | collectives GiB/device | '
          'step ms (compute + comm) | predicted MFU |',
          '|---|---|---|---|---|---|---|---|---|---|---|']
  for f in fits:
    step = ('-' if f.step_s is None else
            f'{f.step_s * 1e3:,.0f} ({f.compute_s * 1e3:,.0f} + '
            f'{f.comm_s * 1e3:,.0f})')
    mfu = '-' if f.predicted_mfu is None else f'{f.predicted_mfu:.1%}'
    hbm = '?' if f.hbm_bytes is None else f'{f.hbm_bytes / GiB:.1f}'
    coll = ('-' if f.collective_total is None else
            f'{f.collective_total / GiB:.3f}')
    rows.append(
        f'| {f.model} | {f.hardware} | {f.mesh_name} | {f.remat} | '
        f'{f.accum_steps} | {"yes" if f.fits else "no"} | {f.total_bytes / GiB:.2f} ({hbm}) | '
        f'{f.saved_bytes / GiB:.2f} + {f.working_bytes / GiB:.2f} | {coll} | '
        f'{step} | {mfu} |')
  return '\n'.join(rows)


def _format_tpu_table(fits: Sequence[Fit]) -> str:
  rows = ['| model | hardware | mesh | remat | accum | compiled | compile s | '
          'fits (XLA:TPU / count) | GiB/device XLA:TPU (HBM) | GiB/device '
          'counted | collectives GiB/device | step ms XLA:TPU (FLOP bound) | '
          'step ms at stated MFU (compute + comm) |',
          '|---|---|---|---|---|---|---|---|---|---|---|---|---|']
  yes = {True: 'yes', False: 'no', None: '?'}
  for f in fits:
    hbm = '?' if f.hbm_bytes is None else f'{f.hbm_bytes / GiB:.1f}'
    if not f.tpu:
      tpu_gib, tpu_step = '-', '-'
    elif f.tpu.get('oom'):
      need = f.tpu.get('temp_needed')
      tpu_gib = (f'out of HBM: temps {need / GiB:.2f} > '
                 f'{f.tpu["hbm_available"] / GiB:.2f} ({hbm})' if need
                 else f'out of HBM ({hbm})')
      tpu_step = '-'
    else:
      tpu_gib = f'{f.tpu_peak_bytes / GiB:.2f} ({hbm})'
      tpu_step = (f'{_ms(f.tpu_step_s)} ({_ms(f.flop_bound_s)})'
                  + ('' if f.tpu_time_source == 'compiler' else ' bound'))
    step = ('-' if f.step_s is None else
            f'{f.step_s * 1e3:,.0f} ({f.compute_s * 1e3:,.0f} + '
            f'{f.comm_s * 1e3:,.0f})')
    coll = ('-' if f.collective_total is None else
            f'{f.collective_total / GiB:.3f}')
    compiled = ('-' if not f.layers_compiled else
                f'{f.layers_compiled[0]}, scanned' if f.scan_layers else
                ' + '.join(map(str, f.layers_compiled)))
    rows.append(
        f'| {f.model} | {f.hardware} | {f.mesh_name} | {f.remat} | '
        f'{f.accum_steps} | {compiled} | {f.compile_s:.0f} | '
        f'{yes[f.fits]} / {yes[f.analytic_fits]} | {tpu_gib} | '
        f'{f.total_bytes / GiB:.2f} | {coll} | {tpu_step} | {step} |')
  return '\n'.join(rows)


def summary_line(fit: Fit) -> str:
  """'H/14, v3-32, fsdp=8 x data=4, remat=full: fits at 13.1 GB/core; ...'"""
  unit = 'core' if fit.hardware.startswith('v') else 'device'
  if fit.tpu and not fit.tpu.get('oom'):
    text = (f'{fit.model}, {fit.hardware}, {fit.layout}: '
            f'{"fits" if fit.fits else "does not fit"} at '
            f'{fit.tpu_peak_bytes / GiB:.1f} GiB/{unit} (XLA:TPU; counted '
            f'{fit.total_bytes / GiB:.1f})')
  elif fit.tpu:
    text = (f'{fit.model}, {fit.hardware}, {fit.layout}: does not fit '
            f'(XLA:TPU ran out of HBM; counted {fit.total_bytes / GiB:.1f} '
            f'GiB/{unit})')
  else:
    text = (f'{fit.model}, {fit.hardware}, {fit.layout}: '
            f'{"fits" if fit.fits else "does not fit"} at '
            f'{fit.total_bytes / GiB:.1f} GiB/{unit}')
  if fit.collective_total is not None:
    text += f'; {fit.collective_total / GiB:.2f} GiB of collectives per step'
  if fit.tpu_mfu is not None:
    text += (f'; XLA:TPU step {_ms(fit.tpu_step_s)} ms '
             f'({fit.tpu_mfu:.0%} MFU)')
  if fit.predicted_mfu is not None:
    text += f'; predicted {fit.predicted_mfu:.0%} MFU'
  return text
