"""Compute accounting the training loop uses: FLOPs, hardware peaks, core-hours tracker, cap.

    from vit_jax import budget
    budget.forward_macs('ViT-B/16', 224)            # 17.56e9 (+ the head)
    budget.peak_flops(jax.devices()[0].device_kind)  # None on CPU
    tracker = budget.CoreHoursTracker(kind, jax.device_count(), flops_per_image=...)
    cap = budget.BudgetCap.from_config(config.budget)

Planning before a run (core-days, will a step fit a slice, the paper's
tables, reports of finished runs) is `vit_jax.planner`, which sits above
this package: `python -m vit_jax.planner {plan,fit,paper,report,plot}`; see
docs/budget.md. This package never imports the planner.
It imports jax and flax (through the model registry), never TensorFlow, clu
or ml_collections.
"""

from vit_jax.budget.cap import (EXIT_BUDGET_EXHAUSTED, WARN_FRACTION,
                                BudgetCap, Verdict)
from vit_jax.budget.flops import (bit_resnet_macs, forward_macs,
                                  forward_macs_breakdown, resnet_stem_macs,
                                  train_flops_per_image)
from vit_jax.budget.hardware import (HARDWARE, Hardware, cores_per_device,
                                     for_device_kind, parse_hardware,
                                     peak_flops)
from vit_jax.budget.tracker import PAUSE_REASONS, CoreHoursTracker

__all__ = [
    'BudgetCap', 'CoreHoursTracker', 'EXIT_BUDGET_EXHAUSTED',
    'HARDWARE', 'Hardware', 'PAUSE_REASONS', 'Verdict',
    'WARN_FRACTION', 'bit_resnet_macs', 'cores_per_device',
    'for_device_kind', 'forward_macs', 'forward_macs_breakdown',
    'parse_hardware', 'peak_flops', 'resnet_stem_macs',
    'train_flops_per_image',
]
