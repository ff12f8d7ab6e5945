"""Planning compute before (and after) a run: core-days, will a step fit a slice, the paper's tables, reports.

    from vit_jax import planner
    plan = planner.make_plan('ViT-L/16', dataset='imagenet21k', epochs=90,
                             batch_size=4096, hardware='v3-8', mfu=0.4)
    print(planner.format_plan(plan))
    reports, skipped = planner.summarize_runs(['runs/a', 'runs/b'])

CLI: `python -m vit_jax.planner {plan,fit,paper,report,plot}`; see
docs/budget.md. Imported on their own (not here): `planner.fit` (compiles
the sharded training step on simulated devices; imports train_step),
`planner.tpu` (slices through libtpu, the TPU compiler), `planner.plot`
(matplotlib).

The planner sits above the accounting the training loop uses
(`vit_jax.budget`: FLOPs, hardware peaks, tracker, cap) and imports it; the
training path (train, assembly, transfer, main's training run) never
imports the planner.
"""

from vit_jax.dataset_sizes import DATASETS, dataset_size
from vit_jax.planner.plan import Plan, format_plan, make_plan, mfu_from_file
from vit_jax.planner.report import (RunReport, format_reports, summarize,
                                    summarize_runs)

__all__ = [
    'DATASETS', 'Plan', 'RunReport', 'dataset_size', 'format_plan',
    'format_reports', 'make_plan', 'mfu_from_file', 'summarize',
    'summarize_runs',
]
