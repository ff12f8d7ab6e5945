"""The training step: one jax.jit over the mesh, with gradient accumulation.

Shared by the training loop and the benchmark, so the benchmark times exactly
the step that trains. It imports neither TensorFlow nor clu nor
ml_collections.

The state is a plain dict pytree: `step`, `params`, `opt_state` and, with
Polyak averaging, `ema_params`. The dropout key of step s is
fold_in(key(seed), s), so the state carries no RNG and a resumed run draws the
same masks as an uninterrupted one. With gradient accumulation, micro-batch j
uses fold_in(rng, j) and (by default) each batch shard s its own
fold_in(fold_in(rng, j), s).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vit_jax import losses, parallel

State = dict


def init_state(model: nn.Module, tx: optax.GradientTransformation,
               image_shape: tuple[int, int, int], *, seed: int,
               ema: bool = False) -> State:
  """Initial state on the host's default device (use `sharded_init`)."""
  params = model.init(jax.random.key(seed),
                      jnp.zeros((1, *image_shape), jnp.float32))['params']
  state = {'step': jnp.zeros((), jnp.int32), 'params': params,
           'opt_state': tx.init(params)}
  if ema:
    state['ema_params'] = params
  return state


def state_shardings(abstract_state: Any, mesh: Mesh, rules, fsdp_min_size: int
                    ) -> Any:
  """Shardings of the whole state: parameters, moments and EMA by the rules."""
  return parallel.tree_shardings(abstract_state, mesh, rules, fsdp_min_size)


def sharded_init(model, tx, image_shape, mesh, rules, *, seed: int,
                 ema: bool = False, fsdp_min_size: int = 2**16
                 ) -> tuple[State, Any]:
  """Initialises the state directly in its sharded layout (no host copy)."""
  init = functools.partial(init_state, model, tx, image_shape, seed=seed,
                           ema=ema)
  abstract = jax.eval_shape(init)
  shardings = state_shardings(abstract, mesh, rules, fsdp_min_size)
  state = jax.jit(init, out_shardings=shardings)()
  return state, shardings


def make_loss_fn(model: nn.Module, loss: str = 'softmax_xent',
                 label_smoothing: float = 0.0) -> Callable:
  """`loss(params, images, labels, rng)`: the mean training loss of a
  (micro-)batch, dropout on; what the step differentiates."""
  loss_fn = losses.get_loss(loss)

  def micro_loss(params, images, labels, rng):
    logits = model.apply({'params': params}, images, train=True,
                         rngs={'dropout': rng})
    targets = losses.smooth_labels(labels, label_smoothing)
    return jnp.mean(loss_fn(logits, targets))
  return micro_loss


#: Where make_train_step sums the micro-batch gradients (see there).
ACCUMULATE = ('local', 'reduced')


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    mesh: Mesh, shardings: Any, *, loss: str = 'softmax_xent',
                    label_smoothing: float = 0.0, accum_steps: int = 1,
                    accumulate: str = 'local',
                    ema_decay: Optional[float] = None, seed: int = 0,
                    schedule: Optional[Callable] = None,
                    donate: bool = True) -> Callable:
  """Returns jitted `step(state, batch) -> (state, metrics)`.

  `batch` holds global arrays `image` [B, H, W, 3] and `labels` [B, K],
  sharded over (data, fsdp). With `accum_steps` > 1 the batch is split into
  micro-batches whose gradients are averaged: the same update as the whole
  batch, in less activation memory. Row i*accum + j belongs to micro-batch j,
  so every micro-batch is spread evenly over the devices.

  `accumulate` chooses where the micro-batch gradients are summed:
  - 'local' (default): each batch shard (data x fsdp) sums the gradients of
    its own rows, and the shards' sums are reduced once per step: a step
    sends the bytes of one reduction whatever `accum_steps` is (all-reduce
    under data parallelism, reduce-scatter under FSDP; tensor parallelism
    over `model` is unchanged). The price is memory under FSDP: each device
    holds the full-size parameters (gathered once) and a full-size float32
    gradient accumulator for the whole step, instead of 1/fsdp of the
    accumulator; under plain data parallelism nothing is added. Micro-batch
    j of shard s draws dropout from fold_in(fold_in(rng, j), s), so with
    dropout the masks depend on data x fsdp (not on `model`).
  - 'reduced': every micro-batch's gradient is reduced into an accumulator
    sharded like the parameters: `accum_steps` x the bytes of one reduction,
    but under FSDP only 1/fsdp of the gradient per device. Only worth it
    when FSDP's full-size accumulator does not fit (under plain data
    parallelism it saves nothing). Dropout draws from fold_in(rng, j).
  With `accum_steps` == 1 both compile to the same step.
  """
  if accumulate not in ACCUMULATE:
    raise ValueError(f'accumulate={accumulate!r} is not one of {ACCUMULATE}; '
                     f"use 'local' (one reduction per step) or 'reduced' "
                     f'(one per micro-batch, sharded accumulator).')
  grad_fn = jax.value_and_grad(make_loss_fn(model, loss, label_smoothing))
  if accum_steps > 1 and accumulate == 'local':
    grad_of_batch = _local_accumulation(grad_fn, mesh, shardings['params'],
                                        accum_steps)
  else:
    grad_of_batch = functools.partial(_reduced_accumulation, grad_fn, mesh,
                                      accum_steps)

  def step(state, batch):
    params = state['params']
    rng = jax.random.fold_in(jax.random.key(seed), state['step'])
    loss_value, grads = grad_of_batch(params, batch['image'], batch['labels'],
                                      rng)
    updates, opt_state = tx.update(grads, state['opt_state'], params)
    new_params = optax.apply_updates(params, updates)
    new_state = {'step': state['step'] + 1, 'params': new_params,
                 'opt_state': opt_state}
    if 'ema_params' in state:
      new_state['ema_params'] = jax.tree.map(
          lambda e, p: ema_decay * e + (1.0 - ema_decay) * p,
          state['ema_params'], new_params)
    metrics = {'train_loss': loss_value, 'grad_norm': optax.global_norm(grads),
               'param_norm': optax.global_norm(new_params)}
    if schedule is not None:
      metrics['learning_rate'] = schedule(state['step'])
    return new_state, metrics

  batch_sharding = parallel.batch_sharding(mesh)
  return jax.jit(step,
                 in_shardings=(shardings, batch_sharding),
                 out_shardings=(shardings, parallel.replicated(mesh)),
                 donate_argnums=(0,) if donate else ())


def _reduced_accumulation(grad_fn, mesh, accum_steps, params, images, labels,
                          rng):
  """(mean loss, mean gradient) of the global batch, the partitioner's way:
  one micro-batch at a time, each gradient reduced as it is added."""
  if accum_steps == 1:
    return grad_fn(params, images, labels, rng)

  def split(x):
    b = x.shape[0]
    x = x.reshape(b // accum_steps, accum_steps, *x.shape[1:])
    x = jax.lax.with_sharding_constraint(
        x, NamedSharding(mesh, P(parallel.BATCH_AXES)))
    return jnp.swapaxes(x, 0, 1)

  def body(carry, micro):
    loss_sum, grad_sum = carry
    j, x, y = micro
    value, g = grad_fn(params, x, y, jax.random.fold_in(rng, j))
    return (loss_sum + value, jax.tree.map(jnp.add, grad_sum, g)), None

  zeros = jax.tree.map(jnp.zeros_like, params)
  (loss_sum, grad_sum), _ = jax.lax.scan(
      body, (jnp.zeros((), jnp.float32), zeros),
      (jnp.arange(accum_steps), split(images), split(labels)))
  return (loss_sum / accum_steps,
          jax.tree.map(lambda g: g / accum_steps, grad_sum))


def _local_accumulation(grad_fn, mesh, param_shardings, accum_steps):
  """`(params, images, labels, rng) -> (mean loss, mean gradient)` that sums
  each batch shard's micro-batch gradients locally and reduces once.

  A shard_map that is manual over the batch axes (data, fsdp) of size > 1
  and leaves `model` to the partitioner. Its inputs are the parameters
  whole over the batch axes (FSDP's all-gather, once, at the boundary); it
  scans over the shard's micro-batches with no collective and returns each
  shard's gradient sum along a leading shard axis. Summing that axis into
  the parameters' sharding is the one reduction: an all-reduce under data
  parallelism, a reduce-scatter under FSDP. The collectives stay outside
  the manual region so the partitioner moves only the batch axes and keeps
  the `model` split (a collective inside would first gather over `model`).
  """
  axes = tuple(a for a in parallel.BATCH_AXES if mesh.shape[a] > 1)
  shards = math.prod(mesh.shape[a] for a in axes)
  scale = 1.0 / (accum_steps * shards)

  def local(params, images, labels, rng):
    shard = jax.lax.axis_index(axes) if axes else 0

    def split(x):
      # The shard's rows i*accum + j form its part of micro-batch j.
      return jnp.swapaxes(
          x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:]), 0, 1)

    def body(carry, micro):
      loss_sum, grad_sum = carry
      j, x, y = micro
      key = jax.random.fold_in(jax.random.fold_in(rng, j), shard)
      value, g = grad_fn(params, x, y, key)
      return (loss_sum + value, jax.tree.map(jnp.add, grad_sum, g)), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    (loss_sum, grad_sum), _ = jax.lax.scan(
        body, (jnp.zeros((), jnp.float32), zeros),
        (jnp.arange(accum_steps), split(images), split(labels)))
    return loss_sum[None], jax.tree.map(lambda g: g[None], grad_sum)

  if axes:
    # check_vma=False: a gradient with respect to parameters that are the
    # same on every shard would otherwise be summed over the shards inside,
    # once per micro-batch.
    local = jax.shard_map(
        local, mesh=mesh, axis_names=set(axes), check_vma=False,
        in_specs=(P(), P(axes), P(axes), P()), out_specs=P(axes))

  def grad_of_batch(params, images, labels, rng):
    loss_sums, grad_sums = local(params, images, labels, rng)
    grads = jax.tree.map(lambda g, s: jax.lax.with_sharding_constraint(
        jnp.sum(g, axis=0) * scale, s), grad_sums, param_shardings)
    return jnp.sum(loss_sums) * scale, grads
  return grad_of_batch
