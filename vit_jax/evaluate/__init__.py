"""Evaluators: top-1/top-5, ImageNet ReaL, few-shot linear probes, VTAB-1k.

    evaluators = evaluate.build_evaluators(config.evals, model=model, mesh=mesh,
                                           image_size=224, num_classes=1000)
    for ev in evaluators:
      if ev.every and step % ev.every == 0:
        metrics.update({f'{ev.name}/{k}': v for k, v in ev.run(params).items()})

`evals_config` maps a name to one evaluator's config; its `type` (default:
the name) is one of TYPES:

  classify  top-1 and top-5 on a split (classify.py)
  real      ImageNet ReaL and original-label top-1 (real.py)
  fewshot   few-shot linear probes on pre-logits features (fewshot.py)
  vtab      VTAB-1k fine-tuning of the parameters on 19 tasks (vtab.py)

Every evaluator has `every` (steps between runs inside training; 0: only at
the end) and runs jitted over the same mesh as training, on every host.
"""

from __future__ import annotations

from typing import Any, Optional

from jax.sharding import Mesh

from vit_jax.evaluate import classify, fewshot, inputs, real
# Registers the `vtab_label` preprocessing op, so that VTAB task configs
# also train through `python -m vit_jax.main`.
from vit_jax.evaluate import vtab_tasks  # pylint: disable=unused-import
from vit_jax.evaluate.classify import ClassifyEvaluator
from vit_jax.evaluate.fewshot import FewShotDataset, FewShotEvaluator
from vit_jax.evaluate.inputs import EvalContext
from vit_jax.evaluate.real import RealEvaluator


def _vtab_from_config(*args, **kwargs):
  from vit_jax.evaluate import vtab  # pylint: disable=g-import-not-at-top
  return vtab.from_config(*args, **kwargs)


TYPES = {
    'classify': classify.from_config,
    'real': real.from_config,
    'fewshot': fewshot.from_config,
    'vtab': _vtab_from_config,
}


def build_evaluators(evals_config: Any, *, model: Any, mesh: Mesh,
                     image_size: Any = 224, num_classes: Optional[int] = None,
                     data_dir: Optional[str] = None,
                     workdir: Optional[str] = None, model_config: Any = None,
                     mesh_config: Any = None,
                     process_index: Optional[int] = None,
                     process_count: Optional[int] = None) -> list[Any]:
  """Evaluators (`.name`, `.every`, `.run(params) -> dict[str, float]`).

  `image_size`, `num_classes` and `data_dir` are the defaults of every
  evaluator's preprocessing and data; `workdir`, `model_config` (the training
  config's `model`) and `mesh_config` are what VTAB fine-tuning needs.
  """
  context = EvalContext.create(
      image_size=image_size, num_classes=num_classes, data_dir=data_dir,
      workdir=workdir, model_config=model_config, mesh_config=mesh_config,
      process_index=process_index, process_count=process_count)
  evaluators = []
  for name, config in inputs.as_dict(evals_config).items():
    kind = inputs.get(config, 'type', name)
    if kind not in TYPES:
      raise ValueError(f'evals.{name}: unknown evaluator type {kind!r}; set '
                       f'evals.{name}.type to one of {", ".join(TYPES)}.')
    evaluators.append(TYPES[kind](name, config, model=model, mesh=mesh,
                                  context=context))
  return evaluators


__all__ = ['ClassifyEvaluator', 'EvalContext', 'FewShotDataset',
           'FewShotEvaluator', 'RealEvaluator', 'TYPES', 'build_evaluators']
