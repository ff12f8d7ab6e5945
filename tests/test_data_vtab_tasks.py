"""The VTAB-1k registry: builders, class counts, split carving, label mappings."""

import numpy as np
import pytest

from vit_jax.data import vtab_tasks as vt

tfds = pytest.importorskip('tensorflow_datasets')
tf = pytest.importorskip('tensorflow')

# Published TFDS split sizes (the TFDS catalogue), to check the carving.
SIZES = {
    'caltech101': {'train': 3060, 'test': 6084},
    'cifar100': {'train': 50000, 'test': 10000},
    'dtd': {'train': 1880, 'validation': 1880, 'test': 1880},
    'oxford_flowers102': {'train': 1020, 'validation': 1020, 'test': 6149},
    'oxford_iiit_pet': {'train': 3680, 'test': 3669},
    'sun397': {'train': 76128, 'validation': 10875, 'test': 21750},
    'svhn_cropped': {'train': 73257, 'test': 26032, 'extra': 531131},
    'patch_camelyon': {'train': 262144, 'validation': 32768, 'test': 32768},
    'eurosat': {'train': 27000},
    'resisc45': {'train': 31500},
    'diabetic_retinopathy': {'train': 35126, 'validation': 10906, 'test': 42670},
    'clevr_count': {'train': 70000, 'validation': 15000, 'test': 15000},
    'clevr_distance': {'train': 70000, 'validation': 15000, 'test': 15000},
    'dmlab': {'train': 65550, 'validation': 22628, 'test': 22735},
    'kitti_distance': {'train': 6347, 'validation': 423, 'test': 711},
    'dsprites_location': {'train': 737280},
    'dsprites_orientation': {'train': 737280},
    'smallnorb_azimuth': {'train': 24300, 'test': 24300},
    'smallnorb_elevation': {'train': 24300, 'test': 24300},
}


def _count(split, sizes):
  """Examples selected by a TFDS split string such as 'a[0:800]+b[10:210]'."""
  total = 0
  for part in split.split('+'):
    name, _, rest = part.partition('[')
    if not rest:
      total += sizes[name]
      continue
    lo, hi = rest.rstrip(']').split(':')
    lo, hi = int(lo or 0), int(hi or sizes[name])
    assert 0 <= lo < hi <= sizes[name], part
    total += hi - lo
  return total


def test_the_nineteen_tasks_and_their_groups():
  assert len(vt.TASKS) == 19 == len(set(vt.TASK_NAMES))
  groups = [t.group for t in vt.TASKS]
  assert [groups.count(g) for g in vt.GROUPS] == [7, 4, 8]
  with pytest.raises(ValueError, match='unknown VTAB task'):
    vt.get_task('cifar10')


@pytest.mark.parametrize('task', vt.TASKS, ids=vt.TASK_NAMES)
def test_builder_and_class_count(task):
  """The builder resolves offline and its label feature has the class count."""
  info = tfds.builder(task.tfds_name, data_dir='/nonexistent').info
  expected_source = {'label': ('label', task.num_classes),
                     'dsprites_location': ('label_x_position', 32),
                     'dsprites_orientation': ('label_orientation', 40),
                     'smallnorb_azimuth': ('label_azimuth', 18),
                     'smallnorb_elevation': ('label_elevation', 9)}
  if task.label in expected_source:
    key, classes = expected_source[task.label]
    assert info.features[key].num_classes == classes
  for part in (task.train, task.val, task.test):
    assert part.split in SIZES[task.name]


@pytest.mark.parametrize('task', vt.TASKS, ids=vt.TASK_NAMES)
def test_vtab_1k_split_sizes(task):
  sizes = SIZES[task.name]
  splits = task.splits(sizes)
  assert _count(splits['train800'], sizes) == 800
  assert _count(splits['val200'], sizes) == 200
  assert _count(splits['train800val200'], sizes) == 1000
  assert _count(splits['test'], sizes) == task.test_size(sizes) > 400


def test_split_carving_matches_the_benchmark():
  # Values from the VTAB code: val starts at percent * n // 100.
  caltech = vt.get_task('caltech101').splits(SIZES['caltech101'])
  assert caltech == {'train800': 'train[0:800]', 'val200': 'train[2754:2954]',
                     'train800val200': 'train[0:800]+train[2754:2954]',
                     'test': 'test'}
  assert vt.get_task('eurosat').splits(SIZES['eurosat'])['test'] == 'train[21600:27000]'
  dspr = vt.get_task('dsprites_orientation').splits(SIZES['dsprites_orientation'])
  assert dspr['val200'] == 'train[589824:590024]'
  assert dspr['test'] == 'train[663552:737280]'
  norb = vt.get_task('smallnorb_azimuth').splits(SIZES['smallnorb_azimuth'])
  assert norb['val200'] == 'test[0:200]' and norb['test'] == 'test[12150:24300]'
  clevr = vt.get_task('clevr_count').splits(SIZES['clevr_count'])
  assert clevr['val200'] == 'train[63000:63200]' and clevr['test'] == 'validation'
  with pytest.raises(ValueError, match='lacks the split'):
    vt.get_task('dtd').splits({'train': 1880})
  with pytest.raises(ValueError, match='fewer than the 800'):
    vt.get_task('dtd').splits({'train': 500, 'validation': 1880, 'test': 1880})


def _aligned_objects(ex):
  """Mock data draws every per-object list with its own length; real scenes
  have one length for all of them: cut them to the shortest."""
  if 'objects' not in ex:
    return ex
  n = tf.reduce_min([tf.shape(v)[0] for v in ex['objects'].values()])
  return {**ex, 'objects': {k: v[:n] for k, v in ex['objects'].items()}}


@pytest.mark.parametrize('task', vt.TASKS, ids=vt.TASK_NAMES)
def test_label_mapping_on_mock_data(task):
  """Every task's examples become RGB uint8 images with labels in range."""
  op = vt.vtab_label(task.name)
  with tfds.testing.mock_data(num_examples=12):
    ds = tfds.load(task.tfds_name, split=task.splits(SIZES[task.name])['train800'])
    ds = ds.map(_aligned_objects)
    ds = ds.map(lambda ex: (op.tf_fn(ex, None), ex))
    pairs = list(ds.as_numpy_iterator())
  assert len(pairs) == 12
  for ex, raw in pairs:
    assert set(ex) == {'image', 'label'}
    assert ex['image'].ndim == 3 and ex['image'].shape[-1] == 3
    assert ex['image'].dtype == np.uint8
    if task.label == 'clevr_count':  # Mock scenes hold any number of objects.
      assert ex['label'] == len(raw['objects']['size']) - 3
    else:
      assert 0 <= ex['label'] < task.num_classes, (task.name, ex['label'])
    if task.label == 'label':
      assert ex['label'] == raw['label']


def _map(task_name, example):
  return vt.task_example(vt.get_task(task_name), example)


def test_clevr_labels():
  def scene(num_objects, depths):
    coords = np.zeros((num_objects, 3), np.float32)
    coords[:, 2] = depths
    return {'image': tf.zeros([4, 4, 3], tf.uint8),
            'objects': {'size': tf.zeros([num_objects], tf.int64),
                        'pixel_coords': tf.constant(coords)}}
  assert int(_map('clevr_count', scene(3, [9.] * 3))['label']) == 0
  assert int(_map('clevr_count', scene(10, [9.] * 10))['label']) == 7
  # Closest depth in bins [0, 8), [8, 8.5), [8.5, 9), [9, 9.5), [9.5, 10), [10, 100).
  for depths, label in [([7.9, 12.], 0), ([8.0, 9.], 0), ([8.7, 11.], 2),
                        ([9.2, 9.7, 13.], 3), ([9.6], 4), ([11., 14.], 5)]:
    got = int(_map('clevr_distance', scene(len(depths), depths))['label'])
    assert got == label, (depths, got)


def test_kitti_closest_vehicle_labels():
  def frame(types, depths):
    loc = np.zeros((len(types), 3), np.float32)
    loc[:, 2] = depths
    return {'image': tf.zeros([4, 4, 3], tf.uint8),
            'objects': {'type': tf.constant(types, tf.int64),
                        'location': tf.constant(loc.reshape(-1, 3))}}
  # Types 0..2 are car, van, truck; 3+ (pedestrians, cyclists, ...) ignored.
  for types, depths, label in [([0, 3], [25., 2.], 2), ([1], [7.], 0),
                               ([2, 0], [30., 15.], 1), ([4, 5], [3., 4.], 3),
                               ([], [], 3)]:
    assert int(_map('kitti_distance', frame(types, depths))['label']) == label


def test_dsprites_and_smallnorb_labels_and_images():
  ex = {'image': tf.constant(np.eye(4, dtype=np.uint8)[..., None]),
        'label_x_position': tf.constant(31, tf.int64),
        'label_orientation': tf.constant(37, tf.int64)}
  loc = _map('dsprites_location', ex)
  assert int(loc['label']) == 15
  assert int(_map('dsprites_orientation', ex)['label']) == 14  # 37 // 2.5.
  image = loc['image'].numpy()
  assert image.shape == (4, 4, 3) and image.max() == 255
  np.testing.assert_array_equal(image[..., 2], np.eye(4) * 255)
  norb = {'image': tf.zeros([6, 6, 1], tf.uint8),
          'label_azimuth': tf.constant(17, tf.int64),
          'label_elevation': tf.constant(8, tf.int64)}
  assert int(_map('smallnorb_azimuth', norb)['label']) == 17
  assert int(_map('smallnorb_elevation', norb)['label']) == 8


def test_group_means():
  acc = {'cifar100': 0.5, 'dtd': 0.7, 'eurosat': 0.9, 'dmlab': 0.3}
  means = vt.group_means(acc)
  assert means == pytest.approx({'natural': 0.6, 'specialized': 0.9,
                                 'structured': 0.3, 'mean': 0.6})


def test_missing_datasets_are_listed_with_a_hint(tmp_path):
  missing = vt.missing_tasks(vt.TASKS, data_dir=str(tmp_path))
  assert list(missing) == list(vt.TASK_NAMES)
  assert missing['dmlab'] == f'tfds build dmlab --data_dir={tmp_path}'
  assert 'manual download' in missing['resisc45']
