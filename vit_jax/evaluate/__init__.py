"""Evaluators that only read parameters: top-1/top-5, ImageNet ReaL, few-shot linear probes.

    evaluators = evaluate.build_evaluators(config.evals, model=model, mesh=mesh,
                                           image_size=224, num_classes=1000)
    for ev in evaluators:
      if ev.every and step % ev.every == 0:
        metrics.update({f'{ev.name}/{k}': v for k, v in ev.run(params).items()})

`evals_config` maps a name to one evaluator's config; its `type` (default:
the name) is one of TYPES, and its keys are checked against
`config_lib.EVALUATOR_KEYS` (an unknown or mistyped key is an error):

  classify  top-1 and top-5 on a split (classify.py)
  real      ImageNet ReaL and original-label top-1 (real.py)
  fewshot   few-shot linear probes on pre-logits features (fewshot.py)

Every evaluator has `every` (steps between runs inside training; 0: only at
the end) and runs jitted over the same mesh as training, on every host.
What trains (VTAB-1k, fine-tuning sweeps) is not an evaluator: it lives in
vit_jax.transfer, above the training loop.
"""

from __future__ import annotations

from typing import Any, Optional

from jax.sharding import Mesh

from vit_jax import config_lib
from vit_jax.evaluate import classify, fewshot, inputs, real
from vit_jax.evaluate.classify import ClassifyEvaluator
from vit_jax.evaluate.fewshot import FewShotDataset, FewShotEvaluator
from vit_jax.evaluate.inputs import EvalContext
from vit_jax.evaluate.real import RealEvaluator

TYPES = {
    'classify': classify.from_config,
    'real': real.from_config,
    'fewshot': fewshot.from_config,
}


def build_evaluators(evals_config: Any, *, model: Any, mesh: Mesh,
                     image_size: Any = 224, num_classes: Optional[int] = None,
                     data_dir: Optional[str] = None,
                     process_index: Optional[int] = None,
                     process_count: Optional[int] = None) -> list[Any]:
  """Evaluators (`.name`, `.every`, `.run(params) -> dict[str, float]`).

  `image_size`, `num_classes` and `data_dir` are the defaults of every
  evaluator's preprocessing and data.
  """
  context = EvalContext.create(
      image_size=image_size, num_classes=num_classes, data_dir=data_dir,
      process_index=process_index, process_count=process_count)
  evaluators = []
  for name, config in inputs.as_dict(evals_config).items():
    config_lib.check_evaluator(name, config)
    kind = inputs.get(config, 'type', name)
    evaluators.append(TYPES[kind](name, config, model=model, mesh=mesh,
                                  context=context))
  return evaluators


__all__ = ['ClassifyEvaluator', 'EvalContext', 'FewShotDataset',
           'FewShotEvaluator', 'RealEvaluator', 'TYPES', 'build_evaluators']
