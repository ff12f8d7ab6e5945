"""The one assembly of the training step from a config: what the loop runs and every compile of it checks.

`assemble(config, mesh, num_classes)` builds, from a training config (a
ConfigDict or a plain dict with the same keys), the model, its ModelSpec
(with architecture overrides, for FLOP counts), the schedule, the optimizer,
the abstract state and its shardings over `mesh`, the jitted training step
and the abstract batch it takes. The training loop (`vit_jax.train`), the
benchmark (`vit_jax.benchmark`), the fit (`vit_jax.planner.fit`) and the TPU
preflight (`vit_jax.preflight`) all call it, so what is compiled ahead of a
run is exactly what the run runs.

Nothing here allocates device memory: the state exists only as shapes until
`init_state()` initialises it directly in its sharded layout. Imports neither
TensorFlow nor clu nor ml_collections.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from vit_jax import models, optim, parallel, train_step
from vit_jax.budget import flops as flops_lib


def image_shape(image_size) -> tuple[int, int, int]:
  """(H, W, 3) of an int or (H, W) image size."""
  if isinstance(image_size, int):
    return (image_size, image_size, 3)
  return (*tuple(image_size), 3)


def _get(config: Mapping[str, Any], key: str, default=None):
  value = config.get(key, default)
  return default if value is None else value


@dataclasses.dataclass(frozen=True)
class Assembly:
  """The training step of one config on one mesh, and what built it."""
  model: Any                 # models.vit.VisionTransformer
  spec: Any                  # models.ModelSpec with the config's overrides
  label: str                 # the name the model is reported under
  num_classes: int
  image_shape: tuple
  batch_size: int
  accum_steps: int
  mesh: Mesh
  schedule: optax.Schedule
  tx: optax.GradientTransformation
  abstract_params: Any
  abstract_state: Any
  shardings: Any
  step: Callable             # jitted (state, batch) -> (state, metrics)
  seed: int
  ema_decay: Optional[float]

  @property
  def ema(self) -> bool:
    return self.ema_decay is not None

  @property
  def flops_per_image(self) -> float:
    """Training FLOPs per image (3 x forward), the budget's definition."""
    return flops_lib.train_flops_per_image(
        self.spec, self.image_shape[:2], self.num_classes,
        self.model.representation_size, self.model.classifier)

  def init_state(self) -> Any:
    """A fresh state (random parameters by the seed) initialised directly in
    its sharded layout."""
    def init():
      params = self.model.init(jax.random.key(self.seed),
                               jnp.zeros((1, *self.image_shape)))['params']
      return initial_state(params, self.tx, self.ema)
    return jax.jit(init, out_shardings=self.shardings)()

  def state_from_params(self, params: Any) -> Any:
    """The initial state around given host parameters (a checkpoint's),
    placed shard by shard: no random initialisation is run or overwritten."""
    params = parallel.put_sharded(params, self.shardings['params'])
    return jax.jit(functools.partial(initial_state, tx=self.tx, ema=self.ema),
                   out_shardings=self.shardings)(params)

  def abstract_inputs(self) -> tuple[Any, dict]:
    """(state, batch) as ShapeDtypeStructs carrying their shardings."""
    state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        self.abstract_state, self.shardings)
    return state, abstract_batch(self.batch_size, self.image_shape,
                                 self.num_classes, self.mesh)

  def lower(self):
    return self.step.lower(*self.abstract_inputs())

  def compile(self, compiler_options: Optional[Mapping[str, Any]] = None):
    """The step compiled for the mesh's devices; runs nothing."""
    return self.lower().compile(dict(compiler_options or {}))

  def eval_step(self) -> Callable:
    """Jitted classification step: (params, batch) -> {'correct': top-1
    hits}, the forward pass every evaluator runs per batch."""
    model = self.model

    def step(params, batch):
      logits = model.apply({'params': params}, batch['image'], train=False)
      hits = jnp.argmax(logits, -1) == jnp.argmax(batch['labels'], -1)
      return {'correct': jnp.sum(hits, dtype=jnp.int32)}
    return jax.jit(step, in_shardings=(self.shardings['params'],
                                       parallel.batch_sharding(self.mesh)),
                   out_shardings=parallel.replicated(self.mesh))

  def compile_eval(self, batch_size: Optional[int] = None,
                   compiler_options: Optional[Mapping[str, Any]] = None):
    """The evaluation step compiled for `batch_size` images."""
    params = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        self.abstract_params, self.shardings['params'])
    batch = abstract_batch(batch_size or self.batch_size, self.image_shape,
                           self.num_classes, self.mesh)
    return self.eval_step().lower(params, batch).compile(
        dict(compiler_options or {}))


def initial_state(params: Any, tx: optax.GradientTransformation,
                  ema: bool) -> dict:
  """The state at step 0 around `params` (see vit_jax.train_step)."""
  state = {'step': jnp.zeros((), jnp.int32), 'params': params,
           'opt_state': tx.init(params)}
  if ema:  # A distinct buffer: the step donates the whole state.
    state['ema_params'] = jax.tree.map(lambda x: x * 1, params)
  return state


def abstract_batch(batch_size: int, shape: tuple, num_classes: int,
                   mesh: Mesh) -> dict:
  """The global batch the step takes, as sharded ShapeDtypeStructs."""
  sharding = parallel.batch_sharding(mesh)
  return {
      'image': jax.ShapeDtypeStruct((batch_size, *shape), jnp.float32,
                                    sharding=sharding),
      'labels': jax.ShapeDtypeStruct((batch_size, num_classes), jnp.float32,
                                     sharding=sharding)}


def assemble(config: Mapping[str, Any], mesh: Mesh, num_classes: int, *,
             backend: Optional[str] = None) -> Assembly:
  """The training step of `config` on `mesh` (see the module docstring).

  Keys read: model, image_size, batch_size, accum_steps, accumulate,
  total_steps,
  schedule, optim, loss, label_smoothing, ema_decay, seed, sharding.
  `backend` ('cpu', 'gpu', 'tpu'; default jax's) chooses the fast-path model
  options a config leaves unset (`models.backend_defaults`): the preflight
  assembles for 'tpu' on a CPU host. Raises ValueError (one line) for a batch
  the mesh cannot split, an unknown model or option, a rule that matches no
  parameter.
  """
  batch_size = int(config['batch_size'])
  accum_steps = int(_get(config, 'accum_steps', 1))
  parallel.check_batch_divisible(batch_size, accum_steps, mesh)
  model, spec = models.build(config['model'], num_classes,
                             backend=backend or jax.default_backend())
  label = models.describe(config['model']['name'],
                          models.model_overrides(config['model']))
  shape = image_shape(config['image_size'])
  schedule = optim.make_schedule(total_steps=int(config['total_steps']),
                                 **dict(config['schedule']))
  abstract_params = models.param_shapes(model, shape[:2])
  tx = optim.make_optimizer(config['optim'], schedule, abstract_params)
  ema_decay = config.get('ema_decay')
  seed = int(_get(config, 'seed', 0))
  abstract_state = jax.eval_shape(
      functools.partial(initial_state, tx=tx, ema=ema_decay is not None),
      abstract_params)
  sharding = config['sharding']
  shardings = train_step.state_shardings(
      abstract_state, mesh, [tuple(r) for r in sharding['rules']],
      int(sharding['fsdp_min_size']))
  step = train_step.make_train_step(
      model, tx, mesh, shardings, loss=_get(config, 'loss', 'softmax_xent'),
      label_smoothing=float(_get(config, 'label_smoothing', 0.0)),
      accum_steps=accum_steps, ema_decay=ema_decay, seed=seed,
      schedule=schedule, accumulate=_get(config, 'accumulate', 'local'))
  return Assembly(
      model=model, spec=spec, label=label, num_classes=num_classes,
      image_shape=shape, batch_size=batch_size, accum_steps=accum_steps,
      mesh=mesh, schedule=schedule, tx=tx, abstract_params=abstract_params,
      abstract_state=abstract_state, shardings=shardings, step=step,
      seed=seed, ema_decay=ema_decay)
