"""Named preprocessing presets: the standard train and eval pipelines of the paper.

A preset is used like an op and expands into op strings before parsing:
`pp='vit_train(224, 1000)'` or `pp=['vit_train(384, 10)']`.

* `vit_train(size, num_classes)`: the paper's training/fine-tuning pipeline,
  an Inception crop of 5%..100% of the area (JPEG decoding fused with the
  crop), a random left-right flip, values to [-1, 1], one-hot labels.
* `vit_eval(size, num_classes)`: the paper's evaluation, the whole image
  resized to `size`.
* `imagenet_eval(size, num_classes)`: shorter side to size * 8/7 (256 for 224)
  then a central crop, as the AugReg and big_vision ImageNet evaluations.
* `augreg_train(size, num_classes, layers=2, magnitude=15, mixup=0.5)`: the
  AugReg study's recipe, vit_train plus RandAugment(layers, magnitude) on the
  crop and Mixup(alpha) over the batch; the study swept magnitudes 10 to 20
  and alphas 0.2 to 0.8, so pass the setting you reproduce (`mixup=0` or
  `layers=0` leaves that part out).
* `real_eval(size)`: imagenet_eval with ImageNet ReaL multi-hot labels.
"""

from __future__ import annotations

from typing import Sequence, Union

from vit_jax.data import registry


def vit_train(size: int, num_classes: int) -> list[str]:
  return ['decode', f'inception_crop({size}, area_min=0.05, area_max=1.0)',
          'flip_lr', 'value_range(-1, 1)', f'onehot({num_classes})',
          "keep('image', 'labels')"]


def vit_eval(size: int, num_classes: int) -> list[str]:
  return ['decode', f'resize({size})', 'value_range(-1, 1)',
          f'onehot({num_classes})', "keep('image', 'labels')"]


def imagenet_eval(size: int, num_classes: int) -> list[str]:
  return ['decode', f'resize_small({round(size * 8 / 7)})', f'central_crop({size})',
          'value_range(-1, 1)', f'onehot({num_classes})', "keep('image', 'labels')"]


def augreg_train(size: int, num_classes: int, layers: int = 2,
                 magnitude: int = 15, mixup: float = 0.5) -> list[str]:
  ops = ['decode', f'inception_crop({size}, area_min=0.05, area_max=1.0)', 'flip_lr']
  if layers:
    ops.append(f'randaug({layers}, {magnitude})')
  ops += ['value_range(-1, 1)', f'onehot({num_classes})', "keep('image', 'labels')"]
  if mixup:
    ops.append(f'mixup({mixup})')
  return ops


def real_eval(size: int) -> list[str]:
  return ['decode', f'resize_small({round(size * 8 / 7)})', f'central_crop({size})',
          'value_range(-1, 1)', "multihot(1000, key='real_label')",
          "keep('image', 'labels')"]


PRESETS = {f.__name__: f for f in (vit_train, vit_eval, imagenet_eval,
                                   augreg_train, real_eval)}


def expand(pp: Union[str, Sequence[str]]) -> list[str]:
  """Replaces preset calls in `pp` by their ops; returns a list of op strings."""
  items = pp.split('|') if isinstance(pp, str) else [
      p for item in pp for p in str(item).split('|')]
  out = []
  for item in items:
    name, args, kwargs = registry.parse_call(item.strip()) if item.strip() else (
        '', (), {})
    if name in PRESETS:
      try:
        out += PRESETS[name](*args, **kwargs)
      except TypeError as e:
        raise ValueError(f'Bad arguments for preset {item.strip()!r}: {e}.') from None
    else:
      out.append(item)
  return out
