"""Classification losses: softmax and sigmoid cross-entropy, label smoothing.

Labels are one-hot or multi-hot float arrays [B, K]. Both losses return the
mean over the batch of the per-example loss (sigmoid: summed over classes, as
in the paper's JFT pretraining with a head bias of -10).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

LOSSES = ('softmax_xent', 'sigmoid_xent')


def smooth_labels(labels: jax.Array, smoothing: float) -> jax.Array:
  """(1 - s) * labels + s / K."""
  if not smoothing:
    return labels
  k = labels.shape[-1]
  return labels * (1.0 - smoothing) + smoothing / k


def softmax_xent(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example softmax cross-entropy with (possibly soft) targets."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.sum(labels * logp, axis=-1)


def sigmoid_xent(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example sigmoid cross-entropy, summed over classes."""
  logits = logits.astype(jnp.float32)
  log_p = jax.nn.log_sigmoid(logits)
  log_not_p = jax.nn.log_sigmoid(-logits)
  return -jnp.sum(labels * log_p + (1.0 - labels) * log_not_p, axis=-1)


def get_loss(name: str):
  if name not in LOSSES:
    raise ValueError(f'unknown loss {name!r}; choose one of {LOSSES}.')
  return {'softmax_xent': softmax_xent, 'sigmoid_xent': sigmoid_xent}[name]
