"""Activation memory of the training step, counted from JAX's autodiff.

Beyond its state (parameters, optimizer state, gradients, the batch), a
training step holds what the forward pass keeps for the backward pass, the
*residuals*, and the working set of the block being differentiated.

The residuals are read from the jaxpr of `jax.vjp` of the project's own loss
(`train_step.make_loss_fn`) at one device's micro-batch: every array the
backward pass reads that is not an input (parameters, images, labels, the
dropout key). The count follows the remat policy exactly (`nn.remat` decides
in the jaxpr what is saved) and the compute dtype (a bfloat16 residual
counts 2 bytes per element), which XLA:CPU's memory analysis of the compiled
step does not (docs/budget.md). It is the count before XLA fuses: a fusing
compiler may recompute an element-wise op inside a fusion rather than keep
its output, so for a step without remat it is an upper bound; the block
inputs that full remat keeps are counted exactly.

The working set of differentiating one block is modelled, not read: under
remat its recomputed forward (the block's residuals without remat, less what
remat kept), the cotangents in flight (an operation's incoming and outgoing
cotangent: twice the largest residual, in practice the attention weights),
and under FSDP its parameters gathered whole and its gradient whole before
the reduce-scatter (twice its unsharded parameter bytes). Without
remat the compiler keeps every block's gathered parameters from the forward
pass for the backward (the step gathers each once), so they are saved too.

Under tensor parallelism (the `model` mesh axis, Megatron's layout) the
residuals with a head axis or the MLP's hidden width are split over the
axis; the others (layer-norm outputs, the residual stream) are replicated.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
from jax.extend import core as jax_core


@dataclasses.dataclass(frozen=True)
class Residual:
  """One array the backward pass reads: its shape and bytes per element."""
  shape: tuple
  itemsize: int

  @property
  def bytes(self) -> int:
    size = 1
    for d in self.shape:
      size *= d
    return size * self.itemsize


def residuals(loss_fn: Callable, *args) -> list[Residual]:
  """Arrays `jax.vjp(loss_fn, *args)` keeps for the backward pass, each
  once, leaving out the arguments themselves (they are held anyway).

  `args` may be abstract (`jax.ShapeDtypeStruct`): only the jaxpr is traced.
  """
  def keep(*a):
    return jax.tree.leaves(jax.vjp(loss_fn, *a)[1])
  jaxpr = jax.make_jaxpr(keep)(*args).jaxpr
  inputs = set(jaxpr.invars)
  seen, out = set(), []
  for var in jaxpr.outvars:
    if isinstance(var, jax_core.Literal) or var in inputs or var in seen:
      continue
    seen.add(var)
    aval = var.aval
    if not hasattr(aval, 'shape'):        # the dropout key's abstract type
      continue
    out.append(Residual(tuple(aval.shape), aval.dtype.itemsize))
  return out


def split_by_model_axis(residual: Residual, *, num_heads: int,
                        head_dim: int, mlp_dim: int) -> bool:
  """Whether tensor parallelism splits this residual: per-head queries,
  keys and values [..., heads, head_dim], attention weights
  [..., heads, tokens, tokens], the MLP's hidden activations [..., mlp]."""
  s = residual.shape
  return (len(s) >= 2 and (
      s[-1] == mlp_dim or
      s[-2:] == (num_heads, head_dim) or
      (len(s) >= 3 and s[-3] == num_heads and s[-1] == s[-2])))


def per_device(found: Sequence[Residual], model_axis: int,
               **arch) -> list[float]:
  """Bytes one device holds of each of `found` (traced at one device's
  micro-batch already) when the model axis has `model_axis` devices."""
  return [r.bytes / (model_axis if model_axis > 1 and
                     split_by_model_axis(r, **arch) else 1) for r in found]


def per_device_bytes(found: Sequence[Residual], model_axis: int,
                     **arch) -> float:
  """Bytes of all of `found` on one device (see `per_device`)."""
  return float(sum(per_device(found, model_axis, **arch)))


@dataclasses.dataclass(frozen=True)
class ActivationBytes:
  """Per-device activation bytes of one step (see the module docstring)."""
  saved: float            # residuals of the whole model
  block: float            # one block's residuals without remat
  recomputed: float       # the recomputed forward of one block (remat)
  cotangents: float       # live cotangents: the two largest residuals
  gathered: float         # one block's gathered parameters and gradient (FSDP)

  @property
  def working(self) -> float:
    """Peak extra while one block is differentiated."""
    return self.recomputed + self.cotangents + self.gathered

  @property
  def total(self) -> float:
    return self.saved + self.working
