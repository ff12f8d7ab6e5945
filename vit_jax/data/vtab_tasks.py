"""The 19 VTAB-1k tasks: TFDS builders, label mappings and the 800/200 splits.

VTAB (Zhai et al., 2019) carves a train, a validation and a test part out of
each dataset's TFDS splits (some datasets have no validation or no test split,
so a percentage of another split stands in). VTAB-1k then trains on the first
800 examples of the train part (`train800`), validates on the first 200 of the
validation part (`val200`), retrains on both (`train800val200`) and reports
accuracy on the whole test part (`test`). Percent boundaries are turned into
example indices as the benchmark does, `percent * num_examples // 100`.

Structured tasks predict a derived label (object counts, binned distances,
coarsened positions); `vtab_label(task)` is the preprocessing op that computes
it (and makes grey images RGB), so a fine-tuning pp string reads
`'decode|vtab_label("clevr_count")|resize(384)|value_range(-1, 1)|onehot(8)'`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Optional

import numpy as np

from vit_jax.data.registry import Op, register
from vit_jax.data.tf_runtime import tf as _tf

GROUPS = ('natural', 'specialized', 'structured')


@dataclasses.dataclass(frozen=True)
class Part:
  """A TFDS split, or the [start%, stop%) part of it."""
  split: str
  start: int = 0
  stop: int = 100

  def bounds(self, num_examples: int) -> tuple[int, int]:
    return (self.start * num_examples // 100, self.stop * num_examples // 100)

  def first(self, count: int, num_examples: int) -> str:
    """TFDS split string of the first `count` examples of this part."""
    lo, hi = self.bounds(num_examples)
    if hi - lo < count:
      raise ValueError(f'{self.split}[{self.start}%:{self.stop}%] holds '
                       f'{hi - lo} examples, fewer than the {count} VTAB-1k '
                       f'needs; is the dataset fully prepared?')
    return f'{self.split}[{lo}:{lo + count}]'

  def whole(self, num_examples: int) -> str:
    if (self.start, self.stop) == (0, 100):
      return self.split
    lo, hi = self.bounds(num_examples)
    return f'{self.split}[{lo}:{hi}]'


def _own(split):
  return Part(split)


@dataclasses.dataclass(frozen=True)
class Task:
  """One VTAB-1k task: where its data lives and how its label is made."""
  name: str
  group: str
  tfds_name: str
  num_classes: int
  train: Part
  val: Part
  test: Part
  label: str = 'label'  # 'label' or a key of _LABEL_FNS.
  grey: bool = False  # Single-channel images, tiled to RGB.
  scale: int = 1  # Multiply pixel values (dsprites stores 0/1).
  prepare: str = ''  # Extra preparation notes (manual downloads).

  @property
  def builder_name(self) -> str:
    return self.tfds_name.split(':')[0]

  def splits(self, split_sizes: Mapping[str, int]) -> dict[str, str]:
    """TFDS split strings of train800, val200, train800val200 and test."""
    missing = {p.split for p in (self.train, self.val, self.test)} - set(split_sizes)
    if missing:
      raise ValueError(f'{self.name}: {self.tfds_name} lacks the split(s) '
                       f'{sorted(missing)}; it has {sorted(split_sizes)}.')
    train800 = self.train.first(800, split_sizes[self.train.split])
    val200 = self.val.first(200, split_sizes[self.val.split])
    return {'train800': train800, 'val200': val200,
            'train800val200': f'{train800}+{val200}',
            'test': self.test.whole(split_sizes[self.test.split])}

  def test_size(self, split_sizes: Mapping[str, int]) -> int:
    lo, hi = self.test.bounds(split_sizes[self.test.split])
    return hi - lo


_MANUAL = ('needs a manual download: see `tfds build {name} --help` or the '
           'TFDS catalogue page for where to put the files')


def _train_val_test(train_pct, val_pct):
  """Train, val and test carved out of the TFDS 'train' split by percent."""
  return dict(train=Part('train', 0, train_pct),
              val=Part('train', train_pct, train_pct + val_pct),
              test=Part('train', train_pct + val_pct, 100))


def _train_val(train_pct, test='test'):
  """Val carved from the end of 'train'; test is its own split."""
  return dict(train=Part('train', 0, train_pct),
              val=Part('train', train_pct, 100), test=_own(test))


_OWN_SPLITS = dict(train=_own('train'), val=_own('validation'),
                   test=_own('test'))

TASKS: tuple[Task, ...] = (
    # Natural.
    Task('caltech101', 'natural', 'caltech101:3.*.*', 102, **_train_val(90)),
    Task('cifar100', 'natural', 'cifar100:3.*.*', 100, **_train_val(90)),
    Task('dtd', 'natural', 'dtd:3.*.*', 47, **_OWN_SPLITS),
    Task('oxford_flowers102', 'natural', 'oxford_flowers102:2.*.*', 102,
         **_OWN_SPLITS),
    Task('oxford_iiit_pet', 'natural', 'oxford_iiit_pet:4.*.*', 37,
         **_train_val(80)),
    Task('sun397', 'natural', 'sun397/tfds:4.*.*', 397, **_OWN_SPLITS),
    Task('svhn_cropped', 'natural', 'svhn_cropped:3.*.*', 10, **_train_val(90)),
    # Specialized.
    Task('patch_camelyon', 'specialized', 'patch_camelyon:2.*.*', 2,
         **_OWN_SPLITS),
    Task('eurosat', 'specialized', 'eurosat/rgb:2.*.*', 10,
         **_train_val_test(60, 20)),
    Task('resisc45', 'specialized', 'resisc45:3.*.*', 45,
         **_train_val_test(60, 20), prepare=_MANUAL.format(name='resisc45')),
    Task('diabetic_retinopathy', 'specialized',
         'diabetic_retinopathy_detection/btgraham-300:3.*.*', 5, **_OWN_SPLITS,
         prepare=_MANUAL.format(name='diabetic_retinopathy_detection')),
    # Structured.
    Task('clevr_count', 'structured', 'clevr:3.*.*', 8,
         **_train_val(90, test='validation'), label='clevr_count'),
    Task('clevr_distance', 'structured', 'clevr:3.*.*', 6,
         **_train_val(90, test='validation'), label='clevr_distance'),
    Task('dmlab', 'structured', 'dmlab:2.0.1', 6, **_OWN_SPLITS),
    Task('kitti_distance', 'structured', 'kitti:3.*.*', 4, **_OWN_SPLITS,
         label='kitti_distance'),
    Task('dsprites_location', 'structured', 'dsprites:2.*.*', 16,
         **_train_val_test(80, 10), label='dsprites_location', grey=True,
         scale=255),
    Task('dsprites_orientation', 'structured', 'dsprites:2.*.*', 16,
         **_train_val_test(80, 10), label='dsprites_orientation', grey=True,
         scale=255),
    Task('smallnorb_azimuth', 'structured', 'smallnorb:2.*.*', 18,
         train=_own('train'), val=Part('test', 0, 50), test=Part('test', 50, 100),
         label='smallnorb_azimuth', grey=True),
    Task('smallnorb_elevation', 'structured', 'smallnorb:2.*.*', 9,
         train=_own('train'), val=Part('test', 0, 50), test=Part('test', 50, 100),
         label='smallnorb_elevation', grey=True),
)
TASK_NAMES: tuple[str, ...] = tuple(t.name for t in TASKS)
_BY_NAME = {t.name: t for t in TASKS}


def get_task(name: str) -> Task:
  if name not in _BY_NAME:
    raise ValueError(f'unknown VTAB task {name!r}; the tasks are '
                     f'{", ".join(TASK_NAMES)}.')
  return _BY_NAME[name]


# ------------------------------------------------------------ label mappings
# Each takes a TFDS example (TensorFlow tensors) and returns the int64 label.


def _binned(tf, value, thresholds):
  """Index of the bin [t_i, t_{i+1}) of `thresholds` that holds `value`."""
  edges = tf.constant(thresholds[1:-1], value.dtype)
  return tf.reduce_sum(tf.cast(value > edges, tf.int64))


def _clevr_count(tf, ex):
  # 3 to 10 objects -> classes 0..7.
  return tf.cast(tf.size(ex['objects']['size']), tf.int64) - 3


def _clevr_distance(tf, ex):
  # Depth of the closest object, in 6 roughly balanced bins.
  depth = tf.reduce_min(ex['objects']['pixel_coords'][:, 2])
  return _binned(tf, depth, [0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0])


def _kitti_distance(tf, ex):
  # Closest car, van or truck (types 0..2): < 8 m, < 20 m, farther, or none.
  objects = ex['objects']
  is_vehicle = objects['type'] < 3
  depth = tf.boolean_mask(objects['location'][:, 2], is_vehicle)
  depth = tf.reduce_min(tf.concat([depth, tf.constant([1000.0])], axis=0))
  return _binned(tf, depth, [-100.0, 8.0, 20.0, 999.0, 1e9])


def _coarsened(key, original_classes, classes):
  def fn(tf, ex):
    value = tf.cast(ex[key], tf.float32)
    return tf.cast(tf.math.floordiv(value, original_classes / classes), tf.int64)
  return fn


_LABEL_FNS: dict[str, Callable] = {
    'clevr_count': _clevr_count,
    'clevr_distance': _clevr_distance,
    'kitti_distance': _kitti_distance,
    # dSprites: 32 x-positions and 40 orientations, grouped into 16 classes.
    'dsprites_location': _coarsened('label_x_position', 32, 16),
    'dsprites_orientation': _coarsened('label_orientation', 40, 16),
    'smallnorb_azimuth': lambda tf, ex: tf.cast(ex['label_azimuth'], tf.int64),
    'smallnorb_elevation': lambda tf, ex: tf.cast(ex['label_elevation'], tf.int64),
}


def task_example(task: Task, ex: dict) -> dict:
  """The task's {'image': uint8 [H, W, 3], 'label': int64} from a TFDS example."""
  tf = _tf()
  image = ex['image']
  if task.grey:
    image = tf.tile(image[..., :1], [1, 1, 3])
  if task.scale != 1:
    image = image * tf.constant(task.scale, image.dtype)
  if task.label == 'label':
    label = tf.cast(ex['label'], tf.int64)
  else:
    label = _LABEL_FNS[task.label](tf, ex)
  return {'image': image, 'label': label}


@register('vtab_label')
def vtab_label(task: str) -> Op:
  """Replaces a TFDS example by the VTAB task's RGB `image` and int `label`.

  Put it after `decode` (datasets whose images TFDS stores encoded).
  """
  spec = get_task(task)
  return Op('vtab_label', tf_fn=lambda ex, seed: task_example(spec, ex))


# --------------------------------------------------------------- availability


def split_sizes(task: Task, data_dir: Optional[str] = None) -> dict[str, int]:
  """Example counts of the task's prepared TFDS splits."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(task.tfds_name, data_dir=data_dir)
  return {name: info.num_examples for name, info in builder.info.splits.items()}


def prepare_hint(task: Task, data_dir: Optional[str] = None) -> str:
  """One line that says how to prepare the task's dataset."""
  where = f' --data_dir={data_dir}' if data_dir else ''
  hint = f'tfds build {task.builder_name}{where}'
  return f'{hint} ({task.prepare})' if task.prepare else hint


def missing_tasks(tasks, data_dir: Optional[str] = None) -> dict[str, str]:
  """{task name: how to prepare it} for every task whose data is not ready."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  missing = {}
  for task in tasks:
    try:
      ready = tfds.builder(task.tfds_name, data_dir=data_dir).is_prepared()
    except Exception:  # pylint: disable=broad-except
      ready = False  # An unregistered or unreadable builder: not ready.
    if not ready:
      missing[task.name] = prepare_hint(task, data_dir)
  return missing


def task_names(choice) -> tuple[str, ...]:
  """'all', a group ('natural', ...) or task names, joined by '+' or listed."""
  items = choice.split('+') if isinstance(choice, str) else list(choice)
  names = []
  for item in filter(None, items):
    if item == 'all':
      names += TASK_NAMES
    elif item in GROUPS:
      names += [t.name for t in TASKS if t.group == item]
    else:
      names.append(get_task(item).name)
  return tuple(dict.fromkeys(names))


def group_means(accuracies: Mapping[str, float]) -> dict[str, float]:
  """Mean accuracy per group and overall (the mean of all tasks present)."""
  out = {}
  for group in GROUPS:
    values = [a for n, a in accuracies.items() if get_task(n).group == group]
    if values:
      out[group] = float(np.mean(values))
  if accuracies:
    out['mean'] = float(np.mean(list(accuracies.values())))
  return out
