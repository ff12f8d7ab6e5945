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

Predicted step time = compute + (1 - overlap) x communication, with
compute = model FLOPs per device x recompute factor / (peak x MFU) and
communication = bytes sent per device / the interconnect bandwidth per
device (`hardware.Hardware`). The MFU and the overlap are stated inputs.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp

from vit_jax import assembly, models, parallel, sharding_rules, train_step
from vit_jax.budget import activations as activations_lib
from vit_jax.budget import collectives as collectives_lib
from vit_jax.budget import flops as flops_lib
from vit_jax.budget import hardware as hardware_lib

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
                     f'-m vit_jax.budget fit) or set XLA_FLAGS=--xla_force_'
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

  @property
  def fits(self) -> Optional[bool]:
    if self.hbm_bytes is None:
      return None
    return self.total_bytes <= (1 - self.margin) * self.hbm_bytes

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
            compile: str = 'always') -> Fit:
  """Memory of one layout (counted: `state_bytes`, `activation_bytes`)
  and its collectives: the step compiled at two depths and extrapolated to
  the model's depth. `compile`: 'always', 'if_fits' (the collectives of a
  layout that does not fit are left out) or 'never'."""
  if compile not in COMPILE_CHOICES:
    raise ValueError(f'compile must be one of {COMPILE_CHOICES}, got '
                     f'{compile!r}.')
  hw, _, n = slice_of(hardware, chips)
  _check_fractions(mfu, overlap, margin)
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

  collective_bytes = collective_count = xla_cpu = None
  compile_s, used = 0.0, ()
  usable = (1 - margin) * (hw.hbm_bytes_per_device or math.inf)
  if compile == 'always' or (compile == 'if_fits' and total <= usable):
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
      layers_compiled=used)


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
           compile: str = 'if_fits', log=None) -> list[Fit]:
  """Tries the meshes (cheapest remat first, the next one only when it does
  not fit); returns every Fit, the fitting ones first by predicted step
  time, then the rest by memory. `compile` as in `fit_one` (by default
  only layouts that fit are compiled)."""
  hw, _, n = slice_of(hardware, chips)
  _check_fractions(mfu, overlap, margin)
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
                    compile=compile)
      if log:
        log(f'{fit.mesh_name:28s} remat={remat:5s} '
            f'{fit.total_bytes / 2**30:7.2f} GiB  fits={fit.fits}'
            + (f'  compile {fit.compile_s:.1f}s' if fit.layers_compiled
               else ''))
      results.append(fit)
      if fit.fits is not False:
        break
  if results and not any(f.fits is not False for f in results):
    results += _accumulate(spec, hardware, results, chips=chips, mfu=mfu,
                           overlap=overlap, margin=margin, layers=layers,
                           compile=compile, log=log)
  return rank(results)


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
            f'{trial.total_bytes / 2**30:7.2f} GiB  fits={trial.fits}')
      if trial.fits is not False:
        out.append(trial)
        break
      k *= 2
  return out


def rank(fits: Sequence[Fit]) -> list[Fit]:
  """Fitting layouts by predicted step time, then the others by memory."""
  def key(f: Fit):
    if f.fits is not False:
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
  return (f'  collectives per device per step: {fit.collective_total / GiB:.3f}'
          f' GiB sent ({coll})')


def format_fit(fit: Fit) -> str:
  """One paragraph on a layout: memory, collectives, time."""
  hbm = fit.hbm_bytes
  verdict = ('unknown HBM' if hbm is None else
             f'fits ({fit.total_bytes / GiB:.2f} of {hbm / GiB:.2f} GiB, '
             f'{fit.margin:.0%} kept free)' if fit.fits else
             f'does NOT fit: {fit.total_bytes / GiB:.2f} GiB > '
             f'{(1 - fit.margin) * hbm / GiB:.2f} GiB usable of '
             f'{hbm / GiB:.2f}; misses by {fit.miss_bytes / GiB:.2f} GiB')
  lines = [
      f'{fit.model}, {fit.hardware} ({fit.num_devices} devices), batch '
      f'{fit.batch_size:,}, mesh {fit.layout}: {verdict}',
      f'  per device: params {fit.params_bytes / GiB:.3f} GiB, optimizer '
      f'{fit.opt_state_bytes / GiB:.3f} GiB'
      + (f', EMA {fit.ema_bytes / GiB:.3f} GiB' if fit.ema_bytes else '') +
      f', gradients {fit.grads_bytes / GiB:.3f} GiB, batch '
      f'{fit.batch_bytes / GiB:.3f} GiB, activations '
      f'{fit.activation_bytes / GiB:.3f} GiB (saved for the backward '
      f'{fit.saved_bytes / GiB:.3f} + one block\'s working set '
      f'{fit.working_bytes / GiB:.3f}), total {fit.total_bytes / GiB:.3f} GiB',
      _collectives_text(fit),
  ]
  if fit.xla_cpu_bytes is not None:
    lines.append(f'  XLA:CPU\'s memory analysis of the compiled step: '
                 f'{fit.xla_cpu_bytes / GiB:.2f} GiB (float32 temporaries, '
                 f'no remat savings; not the verdict, see docs/budget.md)')
  if fit.step_s is not None:
    lines.append(
        f'  predicted step {fit.step_s * 1e3:,.0f} ms = compute '
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
  """A markdown table of fits."""
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


def summary_line(fit: Fit) -> str:
  """'H/14, v3-32, fsdp=8 x data=4, remat=full: fits at 13.1 GB/core; ...'"""
  unit = 'core' if fit.hardware.startswith('v') else 'device'
  text = (f'{fit.model}, {fit.hardware}, {fit.layout}: '
          f'{"fits" if fit.fits else "does not fit"} at '
          f'{fit.total_bytes / GiB:.1f} GiB/{unit}')
  if fit.collective_total is not None:
    text += f'; {fit.collective_total / GiB:.2f} GiB of collectives per step'
  if fit.predicted_mfu is not None:
    text += f'; predicted {fit.predicted_mfu:.0%} MFU'
  return text
