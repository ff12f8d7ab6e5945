"""Optimizers and learning-rate schedules of the paper's recipes, as optax chains.

Pretraining (App. B): Adam(0.9, 0.999), linear warm-up, linear or cosine
decay, weight decay. Fine-tuning (Table 4): SGD with momentum 0.9, global-norm
clipping at 1, cosine decay, no weight decay. Which parameters decay, which
learn faster or slower and which are frozen is chosen by rules over
parameter names (`Transformer/encoderblock_3/MlpBlock_3/Dense_0/kernel`) in
the one dialect of vit_jax.rules, not by code.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import optax

from vit_jax import rules as rules_lib

OPTIMIZERS = ('adam', 'adamw', 'sgd')
DECAY_TYPES = ('cosine', 'linear', 'rsqrt', 'constant')


def make_schedule(*, base_lr: float, total_steps: int, warmup_steps: int = 0,
                  decay_type: str = 'cosine', linear_end: float = 0.0,
                  timescale: Optional[int] = None) -> optax.Schedule:
  """Linear warm-up from 0 to `base_lr`, then the chosen decay to the end.

  'linear' decays to `linear_end` at `total_steps`; 'cosine' to 0;
  'rsqrt' is base_lr * sqrt(timescale / (step - warmup + timescale));
  'constant' stays at base_lr.
  """
  if decay_type not in DECAY_TYPES:
    raise ValueError(f'unknown decay_type {decay_type!r}; choose one of '
                     f'{DECAY_TYPES}.')
  if total_steps <= 0:
    raise ValueError(f'total_steps must be positive, got {total_steps}.')
  if not 0 <= warmup_steps <= total_steps:
    raise ValueError(f'warmup_steps={warmup_steps} must lie in [0, '
                     f'total_steps={total_steps}].')
  decay_steps = max(total_steps - warmup_steps, 1)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = base_lr * step / max(warmup_steps, 1)
    t = jnp.clip((step - warmup_steps) / decay_steps, 0.0, 1.0)
    if decay_type == 'cosine':
      lr = base_lr * 0.5 * (1.0 + jnp.cos(jnp.pi * t))
    elif decay_type == 'linear':
      lr = base_lr + (linear_end - base_lr) * t
    elif decay_type == 'rsqrt':
      ts = timescale or max(warmup_steps, 1)
      lr = base_lr * jnp.sqrt(ts / (step - warmup_steps + ts))
    else:
      lr = jnp.asarray(base_lr, jnp.float32)
    return jnp.where(step < warmup_steps, warm, lr)

  return schedule


def decay_mask(params: Any, exclude: Sequence[str]) -> Any:
  """True for parameters that get weight decay: all but those in `exclude`."""
  return rules_lib.Rules([(p, False) for p in exclude],
                         what='optim.weight_decay_exclude',
                         default=True).apply(params)


def lr_multipliers(params: Any, mults: Sequence[tuple[str, float]]) -> Any:
  """Per-parameter learning-rate multiplier (first matching rule, else 1)."""
  return rules_lib.Rules(mults, what='optim.lr_mults',
                         default=1.0).apply(params)


def _scale_by_tree(mults: Any) -> optax.GradientTransformation:
  """Multiplies each update by a constant per-parameter factor."""
  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, m: u * m, updates, mults), state
  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def make_optimizer(config: Mapping[str, Any], schedule: optax.Schedule,
                   params: Any) -> optax.GradientTransformation:
  """Builds the optimizer chain from the `optim` config section.

  Keys: name ('adam'|'adamw'|'sgd'), b1, b2, eps, momentum, nesterov,
  weight_decay (decoupled, lr-scaled as in optax.adamw), weight_decay_exclude
  (rule patterns), grad_clip_norm (None for none), mu_dtype ('bfloat16' keeps the
  first moment in bf16), lr_mults ((pattern, multiplier) rules; 0 freezes the
  parameter and allocates no optimizer state for it).
  """
  name = config.get('name', 'adam')
  if name not in OPTIMIZERS:
    raise ValueError(f'unknown optimizer {name!r}; choose one of {OPTIMIZERS}.')
  mu_dtype = config.get('mu_dtype') or None
  weight_decay = float(config.get('weight_decay', 0.0) or 0.0)
  exclude = tuple(config.get('weight_decay_exclude', ()))
  if name == 'sgd':
    core = [optax.trace(decay=config.get('momentum', 0.9),
                        nesterov=config.get('nesterov', False),
                        accumulator_dtype=mu_dtype)]
  else:
    core = [optax.scale_by_adam(b1=config.get('b1', 0.9),
                                b2=config.get('b2', 0.999),
                                eps=config.get('eps', 1e-8), mu_dtype=mu_dtype)]
  if weight_decay:
    # Decoupled decay (Loshchilov & Hutter) for every optimizer ('adam' with a
    # weight decay is 'adamw'), masked by name; applied before the learning
    # rate, so the effective decay per step is lr * weight_decay.
    core.append(optax.add_decayed_weights(weight_decay,
                                          mask=decay_mask(params, exclude)))
  core.append(optax.scale_by_learning_rate(schedule))

  chain = []
  clip = config.get('grad_clip_norm')
  if clip:
    chain.append(optax.clip_by_global_norm(float(clip)))
  tx = optax.chain(*chain, *core)
  mults = list(config.get('lr_mults', ()))
  if mults:
    factors = lr_multipliers(params, mults)
    frozen = jax.tree.map(lambda m: 'frozen' if m == 0 else 'train', factors)
    if any(v == 'frozen' for v in jax.tree.leaves(frozen)):
      # Frozen parameters get no optimizer state and take no part in the
      # gradient norm that clipping sees.
      tx = optax.multi_transform({'train': tx, 'frozen': optax.set_to_zero()},
                                 frozen)
    tx = optax.chain(tx, _scale_by_tree(factors))
  return tx

