"""Compute budget: FLOPs, hardware peaks, core-hours tracker and cap, planner.

    from vit_jax import budget
    budget.forward_macs('ViT-B/16', 224)            # 17.56e9 (+ the head)
    budget.peak_flops(jax.devices()[0].device_kind)  # None on CPU
    tracker = budget.CoreHoursTracker(kind, jax.device_count(), flops_per_image=...)
    cap = budget.BudgetCap.from_config(config.budget)

CLI: `python -m vit_jax.budget {plan,fit,paper,report,plot}`; see docs/budget.md.
`vit_jax.budget.fit` (not imported here: it builds the training step)
compiles the sharded step on simulated devices to check memory and
collectives.
This package imports jax and flax (through the model registry), never
TensorFlow, clu or ml_collections.
"""

from vit_jax.budget.cap import (EXIT_BUDGET_EXHAUSTED, WARN_FRACTION,
                                BudgetCap, Verdict)
from vit_jax.budget.flops import (bit_resnet_macs, forward_macs,
                                  forward_macs_breakdown, resnet_stem_macs,
                                  train_flops_per_image)
from vit_jax.budget.hardware import (HARDWARE, Hardware, cores_per_device,
                                     for_device_kind, parse_hardware,
                                     peak_flops)
from vit_jax.budget.plan import (DATASETS, Plan, dataset_size, format_plan,
                                 make_plan, mfu_from_file)
from vit_jax.budget.report import RunReport, format_reports, summarize
from vit_jax.budget.tracker import PAUSE_REASONS, CoreHoursTracker

__all__ = [
    'BudgetCap', 'CoreHoursTracker', 'DATASETS', 'EXIT_BUDGET_EXHAUSTED',
    'HARDWARE', 'Hardware', 'PAUSE_REASONS', 'Plan', 'RunReport', 'Verdict',
    'WARN_FRACTION', 'bit_resnet_macs', 'cores_per_device',
    'dataset_size', 'for_device_kind', 'format_plan', 'format_reports',
    'forward_macs', 'forward_macs_breakdown', 'make_plan', 'mfu_from_file',
    'parse_hardware', 'peak_flops', 'resnet_stem_macs', 'summarize',
    'train_flops_per_image',
]
