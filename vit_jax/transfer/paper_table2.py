"""The paper's Table 2 (Dosovitskiy et al., ICLR 2021): its numbers, and which released checkpoint is one of its columns.

Checked against the paper's text (Table 2: "mean and standard deviation of
the accuracies, averaged over three fine-tuning runs"). The ImageNet numbers
were fine-tuned at 512 (ViT-L/16) and 518 px (ViT-H/14) with Polyak
averaging; the others at 384 px.
"""

from __future__ import annotations

import os
from typing import Optional

#: Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021, Table 2:
#: mean ± std of three fine-tuning runs (top-1, %), and the TPUv3-core-days
#: of pretraining, by line key (table.py's Line.key).
COLUMNS = {
    'ViT-H/14 (JFT-300M)': dict(
        imagenet=(88.55, 0.04), imagenet_real=(90.72, 0.05),
        cifar10=(99.50, 0.06), cifar100=(94.55, 0.04),
        oxford_iiit_pet=(97.56, 0.03), oxford_flowers102=(99.68, 0.02),
        vtab=(77.63, 0.23), core_days=2500),
    'ViT-L/16 (JFT-300M)': dict(
        imagenet=(87.76, 0.03), imagenet_real=(90.54, 0.03),
        cifar10=(99.42, 0.03), cifar100=(93.90, 0.05),
        oxford_iiit_pet=(97.32, 0.11), oxford_flowers102=(99.74, 0.00),
        vtab=(76.28, 0.46), core_days=680),
    'ViT-L/16 (ImageNet-21k)': dict(
        imagenet=(85.30, 0.02), imagenet_real=(88.62, 0.05),
        cifar10=(99.15, 0.03), cifar100=(93.25, 0.05),
        oxford_iiit_pet=(94.67, 0.15), oxford_flowers102=(99.61, 0.02),
        vtab=(72.72, 0.21), core_days=230),
}
#: Released checkpoints (gs://vit_models/imagenet21k/<stem>.npz) that are a
#: column of Table 2. The paper's H/14 column is JFT-300M-pretrained, which
#: was not released, so the released ImageNet-21k ViT-H_14 has none.
RELEASED = {'ViT-L_16': 'ViT-L/16 (ImageNet-21k)'}


def column_of(checkpoint: str) -> Optional[str]:
  """The Table 2 column a released checkpoint is, by its file name."""
  name = os.path.basename(checkpoint.rstrip('/'))
  stem = name[:-4] if name.endswith('.npz') else None
  if stem is None or 'imagenet2012' in checkpoint:  # Fine-tuned releases.
    return None
  return RELEASED.get(stem)
