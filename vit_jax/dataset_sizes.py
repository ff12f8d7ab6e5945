"""Images per epoch of the datasets the paper pre-trains on (and a few fine-tuning sets).

Plain data, no jax or TensorFlow: configs turn epochs into steps with it
(configs/pretrain.py) and the planner sizes runs with it
(`vit_jax.planner.plan`).
"""

#: Training-set sizes of the datasets the paper pre-trains on (and a few
#: fine-tuning sets): images per epoch.
DATASETS = {
    'imagenet2012': 1_281_167,
    'imagenet21k': 14_197_122,
    'jft-300m': 303_000_000,
    'cifar10': 50_000,
    'cifar100': 50_000,
    'oxford_iiit_pet': 3_680,
    'oxford_flowers102': 1_020,
}
_DATASET_ALIASES = {'imagenet': 'imagenet2012', 'imagenet1k': 'imagenet2012',
                    'ilsvrc2012': 'imagenet2012', 'i1k': 'imagenet2012',
                    'i21k': 'imagenet21k', 'imagenet-21k': 'imagenet21k',
                    'jft': 'jft-300m', 'jft300m': 'jft-300m'}


def dataset_size(name: str) -> int:
  """Images per epoch of `name` (a key of DATASETS or an alias: 'i21k', 'jft')."""
  key = name.strip().lower()
  key = _DATASET_ALIASES.get(key, key)
  if key not in DATASETS:
    raise ValueError(f'unknown dataset {name!r}; known: {", ".join(DATASETS)} '
                     f'(or give --num-examples N).')
  return DATASETS[key]
