"""ImageNet ReaL ("Reassessed Labels", Beyer et al. 2020) accuracy.

`real.json` holds 50,000 lists of class ids, one per ILSVRC-2012 validation
image in file order (`ILSVRC2012_val_00000001.JPEG` first). The package ships
it (`vit_jax/assets/real.json`, from google-research/reassessed-imagenet,
Apache 2.0), so ReaL needs no download and no path; the config value
`real_json` may name another copy.

Each example is matched to its list through its original file name, which
both TFDS (`imagenet2012`, `imagenet2012_real`: the `file_name` feature) and an
image folder of the validation files (named by their original names) provide.
Images whose list is empty (3,163 of 50,000) are left out of ReaL; a
prediction is correct when its argmax is in the list. Original-label top-1
over all images is reported beside it. The `classify` evaluator with the
`real_eval` preset counts the same way (it leaves out examples whose label
vector is all zero), so both give the same ReaL number on the same
predictions. Comparable with the "ImageNet ReaL" rows of the paper's Tables 2
and 5 (fine-tuned models, all 46,837 labelled validation images).

The view scored (`view`) is by default the one the paper, BiT and the
`classify` evaluator score: the whole image resized to the model's resolution
(`resize`), so ReaL and top-1 of a checkpoint read the same pixels.
`view='central_crop'` is the usual ImageNet crop instead (shorter side to 8/7
of the size, central crop: `imagenet_eval`, big_vision). The evaluator's
`view` and `pp` say which was scored (results.json records them).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import logging
import os
import re
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from vit_jax.evaluate import classify, inputs, sharded

NUM_VAL_IMAGES = 50_000
NUM_CLASSES = 1000
_VAL_NAME = re.compile(r'ILSVRC2012_val_(\d{8})')
#: The packaged copy of real.json (see vit_jax/assets/README.md).
PACKAGED_REAL_JSON = 'real.json'


def packaged_real_json():
  """The real.json that ships with vit_jax (a Traversable; open() it)."""
  return importlib.resources.files('vit_jax') / 'assets' / PACKAGED_REAL_JSON


def load_real_labels(path: str | None = None) -> list[list[int]]:
  """Reads and checks real.json: 50,000 lists of ids in [0, 1000).

  `path` None or '': the packaged copy.
  """
  if not path:
    source = packaged_real_json()
    path = 'the packaged real.json'
  else:
    if not os.path.exists(path):
      raise FileNotFoundError(f'ReaL labels {path!r} do not exist; give the '
                              f'path of a real.json, or leave real_json out '
                              f'for the packaged copy.')
    source = path
  with source.open() if not isinstance(source, str) else open(source) as f:
    try:
      lists = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f'{path} is not valid JSON ({e}); expected real.json '
                       f'from reassessed-imagenet.') from None
  if not isinstance(lists, list) or len(lists) != NUM_VAL_IMAGES:
    raise ValueError(f'{path} must be a JSON list of {NUM_VAL_IMAGES} label '
                     f'lists, got {type(lists).__name__} of length '
                     f'{len(lists) if isinstance(lists, list) else "-"}.')
  for i, labels in enumerate(lists):
    if not isinstance(labels, list) or any(
        not isinstance(c, int) or not 0 <= c < NUM_CLASSES for c in labels):
      raise ValueError(f'{path}: entry {i} is {labels!r}; every entry must be '
                       f'a list of class ids in [0, {NUM_CLASSES}).')
  return lists


def val_index(file_name: str | bytes) -> int:
  """'.../ILSVRC2012_val_00000001.JPEG' -> 0 (position in real.json)."""
  if isinstance(file_name, bytes):
    file_name = file_name.decode('utf-8')
  match = _VAL_NAME.search(os.path.basename(str(file_name)))
  if not match or not 1 <= int(match.group(1)) <= NUM_VAL_IMAGES:
    raise ValueError(f'{file_name!r} is not an ILSVRC-2012 validation file '
                     f'name (ILSVRC2012_val_00000001.JPEG ... _00050000); ReaL '
                     f'needs the original file names.')
  return int(match.group(1)) - 1


def multi_hot(real_lists: Sequence[Sequence[int]], file_names: Iterable[Any],
              num_classes: int = NUM_CLASSES) -> np.ndarray:
  """[B, num_classes] float32: 1 where a class is in the image's ReaL list.

  Empty file names (padding rows) and images with an empty list get a row of
  zeros, which the scorer leaves out.
  """
  names = list(file_names)
  out = np.zeros((len(names), num_classes), np.float32)
  for row, name in enumerate(names):
    if name is None or len(name) == 0:
      continue
    out[row, list(real_lists[val_index(name)])] = 1.0
  return out


def real_counts(logits: jax.Array, real: jax.Array, labels: jax.Array,
                mask: jax.Array) -> dict[str, jax.Array]:
  """Integer sums for ReaL and original-label top-1.

  `real` [B, K] multi-hot ReaL sets (all zero: left out), `labels` [B, K] the
  original one-hot labels, `mask` [B] (0 for padding).
  """
  valid = mask > 0
  pred = jnp.argmax(logits, axis=-1)[:, None]
  has_real = jnp.logical_and(valid, jnp.any(real > 0, axis=-1))
  real_hit = jnp.take_along_axis(real, pred, axis=-1)[:, 0] > 0
  orig_hit = jnp.take_along_axis(labels, pred, axis=-1)[:, 0] > 0
  count = lambda x: jnp.sum(x, dtype=jnp.int32)
  return {'real_correct': count(jnp.logical_and(real_hit, has_real)),
          'real_count': count(has_real),
          'top1_correct': count(jnp.logical_and(orig_hit, valid)),
          'count': count(valid)}


def real_accuracies(counts: dict[str, Any]) -> dict[str, float]:
  """{'real_top1', 'top1', 'real_num_examples', 'num_examples'}."""
  if int(counts['real_count']) == 0:
    raise ValueError('no image with a non-empty ReaL list was evaluated; '
                     'check that the split is the ImageNet validation set.')
  return {'real_top1': float(counts['real_correct']) / int(counts['real_count']),
          'top1': float(counts['top1_correct']) / int(counts['count']),
          'real_num_examples': float(counts['real_count']),
          'num_examples': float(counts['count'])}


#: How an image becomes the model's size (config key `view`): the paper's,
#: BiT's and the classify evaluator's whole image resized; or the ImageNet
#: evaluation crop (shorter side to 8/7 of the size, central crop).
VIEWS = ('resize', 'central_crop')
DEFAULT_VIEW = 'resize'


def view_ops(view: str, image_size: int) -> str:
  """The pp ops that make an image `image_size` square in `view`."""
  if view == 'resize':
    return f'resize({image_size})'  # As vit_eval (the classify default).
  if view == 'central_crop':
    return (f'resize_small({round(image_size * 8 / 7)})|'
            f'central_crop({image_size})')  # As imagenet_eval.
  raise ValueError(f'ReaL view={view!r} is not one of {", ".join(VIEWS)} '
                   f'(resize: the whole image, as the paper and classify; '
                   f'central_crop: shorter side to 8/7, central crop).')


@dataclasses.dataclass
class RealEvaluator:
  """ReaL and original top-1 on batches with `image`, `labels`, `mask` and
  `file_name` (the original validation file names, bytes or str)."""
  name: str
  every: int
  model: Any
  mesh: Mesh
  batches: Callable[[], Iterable[dict]]
  batch_size: int
  real_lists: Sequence[Sequence[int]]  # load_real_labels(real_json)
  #: Which view was scored: one of VIEWS, or 'pp' (an explicit pp string).
  view: str = DEFAULT_VIEW
  pp: str = ''

  def __post_init__(self):
    def counts(params, batch):
      logits = self.model.apply({'params': params}, batch['image'], train=False)
      return real_counts(logits, batch['real'], batch['labels'], batch['mask'])
    self._reducer = sharded.BatchReducer(
        counts, self.mesh, self.batch_size, ('image', 'labels', 'mask', 'real'))

  @property
  def protocol(self) -> dict[str, str]:
    """Which view was scored (results.json's `protocol`)."""
    return {'view': self.view, 'pp': self.pp}

  def _real_targets(self, batch) -> dict[str, np.ndarray]:
    if 'file_name' not in batch:
      raise ValueError('ReaL needs each example\'s original file name: use a '
                       'source that keeps `file_name` (TFDS imagenet2012 or '
                       'imagenet2012_real, or an image folder of the '
                       'validation files).')
    if np.shape(batch['labels'])[-1] != NUM_CLASSES:
      raise ValueError(f'ReaL scores {NUM_CLASSES}-class ImageNet models; the '
                       f'labels have {np.shape(batch["labels"])[-1]} classes.')
    names = [n if m > 0 else b'' for n, m in zip(batch['file_name'],
                                                  batch['mask'])]
    return {'real': multi_hot(self.real_lists, names)}

  def run(self, params: Any) -> dict[str, float]:
    counts = self._reducer.sum(params, self.batches(), self._real_targets)
    return real_accuracies(counts)


def default_pp(image_size: int, label_key: str = 'label',
               view: str = DEFAULT_VIEW) -> str:
  """`view` at `image_size`, original labels, and the file names."""
  return (f'decode|{view_ops(view, image_size)}|value_range(-1, 1)|'
          f"onehot({NUM_CLASSES}, key='{label_key}')|"
          "keep('image', 'labels', 'file_name')")


def from_config(name: str, config: Any, *, model: Any, mesh: Mesh,
                context: inputs.EvalContext) -> RealEvaluator:
  """Config keys: real_json (default: the packaged copy), data ({'name':
  'imagenet2012'}), split ('validation'), view ('resize' or 'central_crop'),
  pp (replaces the view's preprocessing), batch_size, every."""
  data = inputs.as_dict(inputs.get(config, 'data', {'name': 'imagenet2012'}))
  label_key = ('original_label' if str(data.get('name', '')).startswith(
      'imagenet2012_real') else 'label')
  view = inputs.get(config, 'view')
  pp = inputs.get(config, 'pp')
  if view and pp:
    raise ValueError(f'evals.{name}: give view={view!r} or a pp string, not '
                     f'both (pp replaces the view\'s preprocessing).')
  view = view or DEFAULT_VIEW
  if view not in VIEWS:
    try:
      view_ops(view, 0)
    except ValueError as e:
      raise ValueError(f'evals.{name}: {e}') from None
  if pp:
    view = 'pp'
  else:
    pp = default_pp(inputs.image_size_of(context.image_size), label_key, view)
  logging.info('Evaluator %s scores ImageNet ReaL on the %s view: %s', name,
               view, pp)
  batch_size = int(inputs.get(config, 'batch_size', inputs.DEFAULT_BATCH_SIZE))
  real_lists = load_real_labels(inputs.get(config, 'real_json', ''))
  pipeline = inputs.eval_pipeline(name, data,
                                  inputs.split_of(config, 'validation'), pp,
                                  batch_size, context)
  classify.check_label_width(name, pipeline, model)
  return RealEvaluator(
      name=name, every=int(inputs.get(config, 'every', 0)), model=model,
      mesh=mesh, batches=inputs.reiterable(pipeline), batch_size=batch_size,
      real_lists=real_lists, view=view, pp=pp)
