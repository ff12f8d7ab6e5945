"""Top-1 and top-5 accuracy of a classifier on one split, every example once.

Correct predictions and valid examples are integer counts summed on device
over the whole split (padded examples carry mask 0), so the accuracy is exact:
no dropped remainder and no mean of batch means. A prediction is correct when
the label vector is positive at the predicted class, which for multi-hot labels
means "the argmax is one of the labels". An example whose label vector is all
zero has no label (e.g. an ImageNet image with an empty ReaL list under the
`real_eval` preset) and is left out, as the ReaL evaluator does.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from vit_jax.evaluate import inputs, sharded


def topk_counts(logits: jax.Array, labels: jax.Array, mask: jax.Array,
                top_k: int = 5) -> dict[str, jax.Array]:
  """Integer sums: top-1 and top-k correct predictions and the valid count.

  `logits` [B, K], `labels` [B, K] one-hot or multi-hot, `mask` [B] (0 for
  padding). Examples without any positive label are left out (not counted as
  misses). With fewer than `top_k` classes, top-k counts every valid example.
  """
  valid = jnp.logical_and(mask > 0, jnp.any(labels > 0, axis=-1))
  k = min(top_k, logits.shape[-1])
  _, top = jax.lax.top_k(logits, k)  # [B, k]
  hits = jnp.take_along_axis(labels, top, axis=-1) > 0
  as_count = lambda x: jnp.sum(jnp.logical_and(x, valid), dtype=jnp.int32)
  return {'top1_correct': as_count(hits[:, 0]),
          f'top{top_k}_correct': as_count(jnp.any(hits, axis=-1)),
          'count': jnp.sum(valid, dtype=jnp.int32)}


def accuracies(counts: dict[str, Any], top_k: int = 5) -> dict[str, float]:
  """{'top1', 'top5', 'num_examples'} from the summed counts."""
  n = int(counts['count'])
  if n == 0:
    raise ValueError('no labelled example was evaluated (every mask or '
                     'label vector was 0); check the evaluation split and pp.')
  return {'top1': float(counts['top1_correct']) / n,
          f'top{top_k}': float(counts[f'top{top_k}_correct']) / n,
          'num_examples': float(n)}


@dataclasses.dataclass
class ClassifyEvaluator:
  """Top-1/top-5 accuracy of `model` on the batches that `batches()` yields.

  `batches` returns a fresh iterable of host batches (`image`, `labels`,
  `mask`) each time it is called, e.g. `data.build_eval(...)`.
  """
  name: str
  every: int
  model: Any
  mesh: Mesh
  batches: Callable[[], Iterable[dict]]
  batch_size: int
  top_k: int = 5

  def __post_init__(self):
    def counts(params, batch):
      logits = self.model.apply({'params': params}, batch['image'], train=False)
      return topk_counts(logits, batch['labels'], batch['mask'], self.top_k)
    self._reducer = sharded.BatchReducer(
        counts, self.mesh, self.batch_size, ('image', 'labels', 'mask'))

  def run(self, params: Any) -> dict[str, float]:
    return accuracies(self._reducer.sum(params, self.batches()), self.top_k)


def check_label_width(name: str, pipeline, model) -> None:
  """The labels' width must be the model's class count."""
  classes = getattr(model, 'num_classes', None)
  if classes is not None and pipeline.num_classes != classes:
    raise ValueError(f'evaluator {name!r}: the data has {pipeline.num_classes} '
                     f'classes but the model {classes}; evaluate on the '
                     f'dataset the head was trained for, or set its pp.')


def from_config(name: str, config: Any, *, model: Any, mesh: Mesh,
                context: inputs.EvalContext) -> ClassifyEvaluator:
  """Config keys: data, split ('test'), pp (vit_eval at the image size),
  batch_size, top_k (5), every (0: only at the end of training)."""
  size = inputs.image_size_of(context.image_size)
  pp = inputs.get(config, 'pp')
  if not pp:
    classes = inputs.get(config, 'num_classes', context.num_classes)
    if not classes:
      raise ValueError(f'evaluator {name!r} needs num_classes or a pp string.')
    pp = f'vit_eval({size}, {classes})'
  batch_size = int(inputs.get(config, 'batch_size', inputs.DEFAULT_BATCH_SIZE))
  pipeline = inputs.eval_pipeline(name, inputs.get(config, 'data'),
                                  inputs.split_of(config, 'test'), pp,
                                  batch_size, context)
  check_label_width(name, pipeline, model)
  return ClassifyEvaluator(
      name=name, every=int(inputs.get(config, 'every', 0)), model=model,
      mesh=mesh, batches=inputs.reiterable(pipeline), batch_size=batch_size,
      top_k=int(inputs.get(config, 'top_k', 5)))
