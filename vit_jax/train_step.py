"""The training step: one jax.jit over the mesh, with gradient accumulation.

Shared by the training loop and the benchmark, so the benchmark times exactly
the step that trains. It imports neither TensorFlow nor clu nor
ml_collections.

The state is a plain dict pytree: `step`, `params`, `opt_state` and, with
Polyak averaging, `ema_params`. The dropout key of step s is
fold_in(key(seed), s), so the state carries no RNG and a resumed run draws the
same masks as an uninterrupted one.
"""

from __future__ import annotations

import functools
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


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    mesh: Mesh, shardings: Any, *, loss: str = 'softmax_xent',
                    label_smoothing: float = 0.0, accum_steps: int = 1,
                    ema_decay: Optional[float] = None, seed: int = 0,
                    schedule: Optional[Callable] = None,
                    donate: bool = True) -> Callable:
  """Returns jitted `step(state, batch) -> (state, metrics)`.

  `batch` holds global arrays `image` [B, H, W, 3] and `labels` [B, K],
  sharded over (data, fsdp). With `accum_steps` > 1 the batch is split into
  micro-batches whose gradients are averaged: the same update as the whole
  batch, in less memory. Row i*accum + j belongs to micro-batch j, so every
  micro-batch is spread evenly over the devices.
  """
  batch_axes = parallel.BATCH_AXES
  grad_fn = jax.value_and_grad(make_loss_fn(model, loss, label_smoothing))

  def step(state, batch):
    params = state['params']
    rng = jax.random.fold_in(jax.random.key(seed), state['step'])
    images, labels = batch['image'], batch['labels']
    if accum_steps == 1:
      loss_value, grads = grad_fn(params, images, labels, rng)
    else:
      def split(x):
        b = x.shape[0]
        x = x.reshape(b // accum_steps, accum_steps, *x.shape[1:])
        x = jax.lax.with_sharding_constraint(
            x, NamedSharding(mesh, P(batch_axes)))
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
      loss_value = loss_sum / accum_steps
      grads = jax.tree.map(lambda g: g / accum_steps, grad_sum)

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
