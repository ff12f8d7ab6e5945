"""The planner: a run's training FLOPs, core-days, chip-days, wall-clock days, cost.

    flops      = steps x batch_size x train_flops_per_image(model, image_size)
    core-days  = flops / (peak per core x MFU) / 86400
    chip-days  = flops / (peak per chip x MFU) / 86400
    wall days  = chip-days / chips
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
from typing import Optional

from vit_jax import workdir as workdir_lib
from vit_jax.budget import flops as flops_lib
from vit_jax.budget import hardware as hardware_lib
from vit_jax.dataset_sizes import dataset_size
from vit_jax.models.registry import check_image_size, get_spec

SECONDS_PER_DAY = 86_400.


@dataclasses.dataclass(frozen=True)
class Plan:
  """A run's compute, from its shape and the hardware it will run on."""
  model: str
  image_size: int
  batch_size: int
  steps: int
  epochs: Optional[float]
  images: int
  flops_per_image: float
  total_flops: float
  hardware: str
  chips: int
  mfu: float
  core_days: float
  chip_days: float
  wall_days: float
  cost: Optional[float] = None
  cost_basis: Optional[str] = None

  @property
  def core_hours(self) -> float:
    return self.core_days * 24.

  def to_dict(self) -> dict:
    return dict(dataclasses.asdict(self), core_hours=self.core_hours)


def _positive(name: str, value, integer: bool = False) -> None:
  ok = isinstance(value, (int, float)) and math.isfinite(value) and value > 0
  if ok and integer:
    ok = float(value).is_integer()
  if not ok:
    kind = 'a positive integer' if integer else 'positive'
    raise ValueError(f'{name} must be {kind}, got {value!r}.')


def make_plan(model: str, *, batch_size: int, hardware: str, mfu: float,
              image_size: int = 224, dataset: Optional[str] = None,
              num_examples: Optional[int] = None, epochs: Optional[float] = None,
              steps: Optional[int] = None, chips: Optional[int] = None,
              price_per_core_hour: Optional[float] = None,
              price_per_chip_hour: Optional[float] = None,
              num_classes: int = 1000,
              representation_size: Optional[int] = None) -> Plan:
  """Plans a training run; every bad input raises a one-line ValueError.

  Length: `steps`, or `epochs` of `dataset` (a name in
  `dataset_sizes.DATASETS`) or of `num_examples` images. Hardware: a key of hardware.HARDWARE with `chips`,
  or a Cloud TPU slice ('v3-8'). `mfu` in (0, 1].
  """
  _positive('batch_size', batch_size, integer=True)
  _positive('image_size', image_size, integer=True)
  if (epochs is None) == (steps is None):
    raise ValueError('give the run length as epochs or as steps (exactly one).')
  if steps is not None:
    _positive('steps', steps, integer=True)
  else:
    _positive('epochs', epochs)
    if (dataset is None) == (num_examples is None):
      raise ValueError('epochs need the dataset size: give a dataset name or '
                       'num_examples (exactly one).')
    size = dataset_size(dataset) if dataset is not None else num_examples
    _positive('num_examples', size, integer=True)
    steps = math.ceil(epochs * size / batch_size)
  if not (isinstance(mfu, (int, float)) and 0 < mfu <= 1):
    raise ValueError(f'mfu must be a fraction in (0, 1], got {mfu!r} '
                     f'(e.g. 0.4 for 40%).')
  hw, slice_chips = hardware_lib.parse_hardware(hardware)
  if chips is not None:
    _positive('chips', chips, integer=True)
    if slice_chips is not None and slice_chips != chips:
      raise ValueError(f'{hardware!r} has {slice_chips} chips, but chips={chips} '
                       f'was given; give one of them.')
  chips = int(chips or slice_chips or 0)
  if not chips:
    raise ValueError(f'how many {hw.name} chips? give --chips N (chips=N) or '
                     f'a TPU slice name such as v3-8.')
  if price_per_core_hour is not None and price_per_chip_hour is not None:
    raise ValueError('give a price per core-hour or per chip-hour, not both.')

  flops_per_image = flops_lib.train_flops_per_image(
      model, image_size, num_classes, representation_size)
  # 230 px would be labelled 230 and costed as 224 (the patch embedding
  # drops the rest).
  check_image_size(get_spec(model), int(image_size))
  images = int(steps) * int(batch_size)
  total = images * flops_per_image
  core_days = total / (hw.peak_flops_per_core * mfu) / SECONDS_PER_DAY
  chip_days = total / (hw.peak_flops_per_chip * mfu) / SECONDS_PER_DAY
  cost = basis = None
  for price, unit, days in ((price_per_core_hour, 'core-hour', core_days),
                            (price_per_chip_hour, 'chip-hour', chip_days)):
    if price is not None:
      if not (isinstance(price, (int, float)) and price >= 0):
        raise ValueError(f'price per {unit} must be >= 0, got {price!r}.')
      cost, basis = price * days * 24., f'{price:g} per {unit}'
  return Plan(model=model, image_size=int(image_size), batch_size=int(batch_size),
              steps=int(steps), epochs=epochs, images=images,
              flops_per_image=flops_per_image, total_flops=total,
              hardware=hw.name, chips=chips, mfu=float(mfu),
              core_days=core_days, chip_days=chip_days,
              wall_days=chip_days / chips, cost=cost, cost_basis=basis)


def mfu_from_file(path: str, model: Optional[str] = None) -> float:
  """The MFU measured by a run or a benchmark.

  `path`: a run's workdir or its metrics.jsonl (median of the logged `mfu`),
  or a JSON file with a top-level `mfu`, or a list of records with `mfu`
  (those whose `model` equals `model`, when records name their model).
  """
  if os.path.isdir(path):
    path = os.path.join(path, workdir_lib.METRICS)
  if not os.path.exists(path):
    raise FileNotFoundError(f'no MFU source at {path}; give a workdir, its '
                            f'metrics.jsonl or a benchmark JSON file.')
  with open(path) as f:
    text = f.read()
  try:  # One JSON document, or JSON lines (metrics.jsonl, benchmark output).
    data = json.loads(text)
    records = data if isinstance(data, list) else [data]
  except json.JSONDecodeError:
    try:
      records = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as e:
      raise ValueError(f'{path} is neither JSON nor JSON lines ({e.msg}).')
  records = [r for r in records if isinstance(r, dict)]
  if model is not None and any('model' in r for r in records):
    records = [r for r in records if r.get('model') == model]
  values = [float(r['mfu']) for r in records
            if isinstance(r.get('mfu'), (int, float)) and r['mfu'] > 0]
  if not values:
    which = f' for model {model}' if model else ''
    raise ValueError(f'{path} holds no positive "mfu" values{which}; give --mfu.')
  return statistics.median(values)


def format_plan(plan: Plan) -> str:
  """A human-readable account of a plan."""
  length = f'{plan.steps:,} steps x {plan.batch_size:,} images'
  if plan.epochs is not None:
    length += f' ({plan.epochs:g} epochs)'
  lines = [
      f'model            {plan.model} at {plan.image_size}px',
      f'run              {length} = {plan.images:,} images',
      f'FLOPs per image  {plan.flops_per_image / 1e9:,.2f} GFLOPs '
      f'(3 x 2 x {plan.flops_per_image / 6e9:,.2f} GMACs forward)',
      f'training FLOPs   {plan.total_flops:.4g} ({plan.total_flops / 1e18:,.1f} '
      f'exaFLOPs)',
      f'hardware         {plan.chips:,} x {plan.hardware} chips at '
      f'{plan.mfu:.1%} MFU',
      f'core-days        {plan.core_days:,.2f} ({plan.core_hours:,.1f} core-hours)',
      f'chip-days        {plan.chip_days:,.2f}',
      f'wall-clock       {plan.wall_days:,.2f} days '
      f'({plan.wall_days * 24:,.1f} hours)',
  ]
  if plan.cost is not None:
    lines.append(f'cost             {plan.cost:,.2f} at {plan.cost_basis}')
  return '\n'.join(lines)
