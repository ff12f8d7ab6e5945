"""Sources of vit_jax.data: image folders, TFDS (mocked and a real tiny build), bad input."""

import io
import logging
import os
import subprocess
import sys
import time
import types

import numpy as np
import pytest
from PIL import Image

from vit_jax import data
from vit_jax.data.tf_runtime import tf as get_tf

get_tf()
import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top,wrong-import-order

EVAL_PP = "decode|resize(8)|onehot(5)|keep('image', 'labels')"


def write_image(path, value, shape=(20, 30), fmt=None):
  Image.fromarray(np.full(shape + (3,), value, np.uint8)).save(path, format=fmt, quality=95)


def ids_of(batch, step=8):
  """Example ids of images that are one grey level 8 * id (JPEG rounding absorbed)."""
  return np.round(batch['image'][:, 4, 4, 0] / step).astype(int)


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  """ROOT/train/class_k with 26 JPEG/PNG images whose grey level encodes an id, 1 corrupt."""
  root = tmp_path_factory.mktemp('folder')
  for k in range(3):
    os.makedirs(root / 'train' / f'class_{k}')
  for i in range(26):
    ext = ['jpg', 'png', 'jpeg'][i % 3]
    write_image(root / 'train' / f'class_{i % 3}' / f'img{i}.{ext}', 8 * i,
                shape=(20 + i % 4, 30), fmt='PNG' if ext == 'png' else 'JPEG')
  full = (root / 'train' / 'class_0' / 'img0.jpg').read_bytes()
  (root / 'train' / 'class_1' / 'broken.jpg').write_bytes(full[:len(full) // 2])
  (root / 'train' / 'class_1' / 'notes.txt').write_text('not an image')
  os.makedirs(root / 'empty' / 'a')
  return str(root)


def folder_config(root, split='train', pp=EVAL_PP, strict=False):
  return dict(data=dict(name='folder', root=root, split=split, strict=strict), pp=pp)


def test_folder_skips_and_reports_corrupt_files(folder, caplog):
  with caplog.at_level(logging.WARNING):
    pipe = data.build_eval(folder_config(folder), None, global_batch_size=8)
  assert pipe.num_examples == 26 and pipe.num_classes == 5
  assert [os.path.basename(p) for p, _ in pipe.skipped_files] == ['broken.jpg']
  assert 'Skipped 1 corrupt image file(s) of 27' in caplog.text and 'broken.jpg' in caplog.text
  with pytest.raises(ValueError, match=r'Corrupt image file .*broken\.jpg: truncated JPEG'):
    data.build_eval(folder_config(folder, strict=True), None, global_batch_size=8)


@pytest.mark.parametrize('hosts', [2, 4])
def test_folder_eval_every_example_once_with_labels(folder, hosts):
  seen = []
  for i in range(hosts):
    for batch in data.build_eval(folder_config(folder), 'train', global_batch_size=4 * hosts,
                                 process_index=i, process_count=hosts):
      valid = batch['mask'] == 1
      ids = ids_of(batch)[valid]
      np.testing.assert_array_equal(batch['labels'][valid].argmax(1), ids % 3)
      seen += ids.tolist()
  assert sorted(seen) == list(range(26))


def test_folder_training_with_the_paper_preset_and_small_images(folder):
  # 20x30 images, 32 px crops: resized up, never failed.
  pipe = data.build_train(folder_config(folder, pp='vit_train(32, 3)'), global_batch_size=8,
                          seed=0, process_index=1, process_count=2)
  it = pipe.iterator()
  batches = [next(it) for _ in range(4)]
  assert batches[0]['image'].shape == (4, 32, 32, 3) and pipe.num_classes == 3
  assert -1 <= batches[0]['image'].min() and batches[0]['image'].max() <= 1
  resumed = next(pipe.iterator(3))
  np.testing.assert_array_equal(resumed['image'], batches[3]['image'])
  central = data.build_eval(folder_config(folder, pp='decode|central_crop(32)|onehot(3)'),
                            None, global_batch_size=8)
  assert next(iter(central))['image'].shape == (8, 32, 32, 3)


@pytest.mark.parametrize('split,error,message', [
    ('empty', ValueError, r'Class folder .*empty/a has no images'),
    ('valid', ValueError, r"no split 'valid'.*\['empty', 'train'\]"),
    ('train[90%:90%]', ValueError, 'selects no examples'),
])
def test_folder_bad_input(folder, split, error, message):
  with pytest.raises(error, match=message):
    data.build_eval(folder_config(folder, split=split), None, global_batch_size=8)


def test_folder_file_that_passes_the_quick_check_but_does_not_decode(tmp_path):
  for k in range(2):
    os.makedirs(tmp_path / 'train' / f'c{k}')
    write_image(tmp_path / 'train' / f'c{k}' / 'good.png', 10, fmt='PNG')
  garbage = bytes(np.random.default_rng(1).integers(0, 255, 500, dtype=np.uint8))
  (tmp_path / 'train' / 'c1' / 'bad.jpg').write_bytes(b'\xff\xd8\xff' + garbage + b'\xff\xd9')
  pipe = data.build_eval(folder_config(str(tmp_path)), None, global_batch_size=4)
  with pytest.raises(RuntimeError, match=r"c1/bad\.jpg is corrupt.*check='decode'"):
    list(pipe)
  checked = data.build_eval(dict(folder_config(str(tmp_path)), data=dict(
      name='folder', root=str(tmp_path), split='train', check='decode')), None, global_batch_size=4)
  assert checked.num_examples == 2 and 'bad.jpg' in checked.skipped_files[0][0]
  assert sum(b['mask'].sum() for b in checked) == 2


def test_folder_passes_file_names_for_real(tmp_path):
  """ImageNet ReaL on a folder of validation files: file_name matches its image."""
  from vit_jax.evaluate import real  # pylint: disable=g-import-not-at-top
  for k in range(1, 8):  # grey level 8 * k in ILSVRC2012_val_0000000k.JPEG
    os.makedirs(tmp_path / 'validation' / f'n0{k % 2}', exist_ok=True)
    write_image(tmp_path / 'validation' / f'n0{k % 2}' / f'ILSVRC2012_val_{k:08d}.JPEG',
                8 * k, fmt='JPEG')
  config = dict(data=dict(name='folder', root=str(tmp_path), split='validation'),
                pp=real.default_pp(16))
  lists = [[] for _ in range(real.NUM_VAL_IMAGES)]
  for k in range(1, 8):
    lists[k - 1] = [100 + k]
  found = []
  for i in range(2):
    for batch in data.build_eval(config, None, global_batch_size=6, process_index=i,
                                 process_count=2):
      valid = batch['mask'] == 1
      ks = np.round((batch['image'][:, 4, 4, 0] + 1) * 127.5 / 8).astype(int)
      names = batch['file_name']
      assert list(names[valid]) == [f'ILSVRC2012_val_{k:08d}.JPEG'.encode() for k in ks[valid]]
      assert all(n == b'' for n in names[~valid])
      hot = real.multi_hot(lists, names)
      np.testing.assert_array_equal(hot.argmax(1)[valid], 100 + ks[valid])
      assert hot[~valid].sum() == 0
      found += ks[valid].tolist()
  assert sorted(found) == list(range(1, 8))
  plain = data.build_eval(dict(config, pp='decode|resize(8)|onehot(2)'), None,
                          global_batch_size=8)
  assert sorted(next(iter(plain))) == ['image', 'labels', 'mask']  # Only kept on request.


def test_folder_root_missing():
  with pytest.raises(FileNotFoundError, match='does not exist'):
    data.build_eval(folder_config('/nonexistent/images'), None, global_batch_size=8)


# ------------------------------------------------------------------- TFDS mocked

SIZES = {'train': 30, 'test': 13}


REQUESTED = []  # The split strings the pipelines asked TFDS for.


def mock_as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
  """cifar10-like examples whose PNG grey level is 8 * index and whose id is the index
  (train) or 100 + index (test); honours slices and '+' concatenations as TFDS does."""
  del self, decoders, read_config, shuffle_files
  REQUESTED.append(str(split))
  infos = {k: types.SimpleNamespace(num_examples=v) for k, v in SIZES.items()}
  def png(i):
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 8 * (i % 32), np.uint8)).save(buf, format='PNG')
    return buf.getvalue()
  examples = []
  for ins in tfds.core.ReadInstruction.from_spec(str(split)).to_absolute(infos):
    lo, hi = ins.from_ or 0, SIZES[ins.splitname] if ins.to is None else ins.to
    offset = 0 if ins.splitname == 'train' else 100
    examples += [(png(i), i % 10, f'{offset + i}'.encode()) for i in range(lo, hi)]
  ds = get_tf().data.Dataset.from_tensor_slices(tuple(np.array(c) for c in zip(*examples)))
  return ds.map(lambda img, label, i: {'image': img, 'label': label, 'id': i})


def tfds_config(split='train', pp="decode|resize(8)|onehot(10)|keep('image','labels')"):
  return dict(data=dict(name='cifar10', split=split), pp=pp)


def test_tfds_mock_hosts_disjoint_complete_and_resume_exact():
  with tfds.testing.mock_data(as_dataset_fn=mock_as_dataset):
    for hosts in (2,):
      seen = []
      for i in range(hosts):
        pipe = data.build_train(tfds_config('train[:80%]'), global_batch_size=2 * hosts,
                                seed=1, process_index=i, process_count=hosts)
        assert pipe.num_examples == 24 and pipe.num_classes == 10
        host_n = pipe.host_stop - pipe.host_start
        it = pipe.iterator()
        batches = [next(it) for _ in range(host_n)]  # two epochs
        ids = np.concatenate([ids_of(b) for b in batches])
        assert sorted(ids[:host_n]) == sorted(ids[host_n:])  # same examples each epoch
        assert len(set(ids[:host_n])) == host_n
        seen += ids[:host_n].tolist()
        for k in (host_n // 2 + 1,):
          np.testing.assert_array_equal(next(pipe.iterator(k))['image'], batches[k]['image'])
      assert sorted(seen) == list(range(24))


def test_tfds_mock_eval_counts_uneven_split_once():
  with tfds.testing.mock_data(as_dataset_fn=mock_as_dataset):
    seen = []
    for i in range(4):
      pipe = data.build_eval(tfds_config(), 'test', global_batch_size=8, process_index=i,
                             process_count=4)
      batches = list(pipe)
      assert len(batches) == pipe.num_batches == 2  # ceil(ceil(13/4) / 2)
      for b in batches:
        seen += ids_of(b)[b['mask'] == 1].tolist()
    assert sorted(seen) == list(range(13))


def id_strings(batch):
  """The mock's example ids in a batch (padding left out)."""
  valid = batch['mask'] == 1 if 'mask' in batch else slice(None)
  return [int(i) for i in batch['id'][valid]]


def test_tfds_mock_concatenated_split_hosts_resume_and_eval():
  """VTAB's train800val200 shape: parts of two splits; hosts read their own absolute ranges."""
  split = 'train[24:]+test[:5]+train[:3]'
  expected = list(range(24, 30)) + list(range(100, 105)) + list(range(3))
  pp = "decode|resize(8)|onehot(10)|keep('image', 'labels', 'id')"
  with tfds.testing.mock_data(as_dataset_fn=mock_as_dataset):
    for i in range(2):
      REQUESTED.clear()
      pipe = data.build_train(tfds_config(split, pp), global_batch_size=4, seed=3,
                              process_index=i, process_count=2)
      assert pipe.num_examples == 14 and pipe.order.n == 7
      it = pipe.iterator()
      batches = [next(it) for _ in range(7)]  # two epochs of 7
      stream = [j for b in batches for j in id_strings(b)]
      share = expected[7 * i:7 * (i + 1)]
      assert sorted(stream[:7]) == sorted(share) and sorted(stream[7:]) == sorted(share)
      for k in (3, 5):  # positions 6-7 straddle the epoch boundary; 10-11 are in epoch 2
        resumed = next(pipe.iterator(k))
        assert id_strings(resumed) == id_strings(batches[k])
        np.testing.assert_array_equal(resumed['image'], batches[k]['image'])
      host_split = ['train[24:30]+test[0:1]', 'test[1:5]+train[0:3]'][i]
      assert REQUESTED[-1] == host_split  # This host's share, nothing more.
    assert pipe.source.host_split(0, 14) == 'train[24:30]+test[0:5]+train[0:3]'
    seen = []
    for i in range(3):
      for b in data.build_eval(tfds_config(split, pp), None, global_batch_size=6,
                               process_index=i, process_count=3):
        seen += id_strings(b)
    assert sorted(seen) == sorted(expected)


@pytest.mark.parametrize('split,message', [
    ('train[:5]+validation', "has no split 'validation'"),
    ('train[:5]+test[13:]', r"Part 'test\[13:\]' of split .* selects no examples \(split 'test' has 13\)"),
])
def test_tfds_mock_concatenation_errors(split, message):
  with tfds.testing.mock_data(as_dataset_fn=mock_as_dataset):
    with pytest.raises(ValueError, match=message) as e:
      data.build_eval(tfds_config(split), None, global_batch_size=4)
  assert '\n' not in str(e.value)


# ------------------------------------------------------------- TFDS real build


class VitJaxTinyImages(tfds.core.GeneratorBasedBuilder):
  """5 classes of JPEGs whose grey level is 8 * index: 23 train, 7 test."""

  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'image': tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg'),
        'label': tfds.features.ClassLabel(num_classes=5)}))

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples(23), 'test': self._generate_examples(7)}

  def _generate_examples(self, n):
    for i in range(n):
      yield i, {'image': np.full((24 + i % 5, 40, 3), 8 * i, np.uint8), 'label': i % 5}


@pytest.fixture(scope='module')
def tiny_tfds(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  VitJaxTinyImages(data_dir=data_dir).download_and_prepare()
  return data_dir


def tiny_config(data_dir, split='train', pp=EVAL_PP):
  return dict(data=dict(name='vit_jax_tiny_images', split=split), pp=pp, data_dir=data_dir)


def test_tfds_real_files_sliced_hosts_and_eval(tiny_tfds):
  seen = []
  for i in range(2):
    pipe = data.build_eval(tiny_config(tiny_tfds, 'train[3:]'), None, global_batch_size=8,
                           process_index=i, process_count=2)
    assert pipe.num_examples == 20 and pipe.num_batches == 3
    for b in pipe:
      valid = b['mask'] == 1
      np.testing.assert_array_equal(b['labels'][valid].argmax(1), ids_of(b)[valid] % 5)
      seen += ids_of(b)[valid].tolist()
  # TFDS stores examples in a hashed order: ask TFDS itself what train[3:] holds.
  builder = tfds.builder('vit_jax_tiny_images', data_dir=tiny_tfds)
  expected = [int(round(ex['image'][0, 0, 0] / 8)) for ex in
              tfds.as_numpy(builder.as_dataset(split='train[3:]'))]
  assert len(set(expected)) == 20 and sorted(seen) == sorted(expected)
  train = data.build_train(tiny_config(tiny_tfds, pp='vit_train(16, 5)'), global_batch_size=4,
                           seed=0)
  it = train.iterator()
  batches = [next(it) for _ in range(8)]  # crosses the epoch at 23 examples
  np.testing.assert_array_equal(next(train.iterator(6))['image'], batches[6]['image'])


def test_tfds_real_files_concatenated_split_is_what_tfds_reads(tiny_tfds):
  split = 'train[3:9]+test[50%:]+train[:10%]'  # 6 + 3 + 2: percentages rounded as TFDS does
  seen = []
  for i in range(2):
    pipe = data.build_eval(tiny_config(tiny_tfds, split), None, global_batch_size=4,
                           process_index=i, process_count=2)
    assert pipe.num_examples == 11
    for b in pipe:
      seen += ids_of(b)[b['mask'] == 1].tolist()
  builder = tfds.builder('vit_jax_tiny_images', data_dir=tiny_tfds)
  expected = [int(round(ex['image'][0, 0, 0] / 8)) for ex in
              tfds.as_numpy(builder.as_dataset(split=split))]
  assert len(expected) == 11 and sorted(seen) == sorted(expected)


@pytest.mark.parametrize('split,message', [
    ('validation', r"has no split 'validation'; its splits are \['test', 'train'\]"),
    ('test[7:]', 'selects no examples'),
])
def test_tfds_bad_splits(tiny_tfds, split, message):
  with pytest.raises(ValueError, match=message):
    data.build_eval(tiny_config(tiny_tfds, split), None, global_batch_size=8)


def test_tfds_unprepared_and_unknown_fail_fast(tmp_path):
  start = time.time()
  with pytest.raises(FileNotFoundError, match=r'not prepared in .*tfds build cifar10'):
    data.build_train(dict(data=dict(name='cifar10', split='train'), pp='vit_train(32, 10)',
                          data_dir=str(tmp_path)), global_batch_size=8, seed=0)
  with pytest.raises(FileNotFoundError, match='manual_dir=/archives'):
    data.build_train(dict(data=dict(name='imagenet2012', split='train', manual_dir='/archives'),
                          pp='vit_train(224, 1000)', data_dir=str(tmp_path)),
                     global_batch_size=8, seed=0)
  with pytest.raises(ValueError, match="Unknown dataset 'cifar11'.*cifar10"):
    data.build_train(dict(data=dict(name='cifar11', split='train'), pp='vit_train(32, 10)'),
                     global_batch_size=8, seed=0)
  assert time.time() - start < 2


@pytest.mark.parametrize('pp,where,fix', [
    ("resize(8)|onehot(10)", "starts with 'resize(8)'", "'decode|resize(8)|onehot(10)'"),
    ("onehot(10)|value_range(-1, 1)", "starts with 'value_range(-1, 1)'",
     "'decode|onehot(10)|value_range(-1, 1)'"),
    ("onehot(10)", 'never decodes them', "'decode|onehot(10)'"),
])
def test_encoded_images_without_decode_first_say_so(pp, where, fix):
  """Not TensorFlow's "images' must have either 3 or 4 dimensions" from inside a map."""
  with tfds.testing.mock_data(as_dataset_fn=mock_as_dataset):
    with pytest.raises(ValueError) as e:
      data.build_train(tfds_config(pp=pp), global_batch_size=4, seed=0)
  assert str(e.value) == (f'cifar10:train holds encoded images (JPEG/PNG bytes) but the pp '
                          f"{where}: put 'decode' first, e.g. {fix}.")


def test_decode_check_lets_label_ops_first_and_pixels_through(folder):
  with pytest.raises(ValueError, match=r"holds encoded images .* starts with 'resize\(8\)'"):
    data.build_eval(folder_config(folder, pp='resize(8)|onehot(3)'), None, global_batch_size=4)
  # Label ops may come first; in-memory sources hold pixels and need no decode.
  with tfds.testing.mock_data(as_dataset_fn=mock_as_dataset):
    batch = next(iter(data.build_eval(tfds_config(pp='onehot(10)|decode|resize(8)'), 'test',
                                      global_batch_size=4)))
  assert batch['image'].shape == (4, 8, 8, 3) and batch['labels'].shape == (4, 10)
  digits = data.build_eval(dict(data=dict(name='digits', split='test'), pp='resize(8)|onehot(10)'),
                           None, global_batch_size=4)
  assert digits.num_examples == 300


def test_the_bundled_digits_are_scikit_learns_without_importing_it():
  """Read from the file scikit-learn ships (no 2 s import per run), equal to its loader."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  from vit_jax.data import sources  # pylint: disable=g-import-not-at-top
  reference = datasets.load_digits()
  pixels, labels = sources._digits_file()  # pylint: disable=protected-access
  np.testing.assert_array_equal(pixels, reference.images)
  np.testing.assert_array_equal(labels, reference.target)
  proc = subprocess.run(
      [sys.executable, '-c', 'import sys; from vit_jax.data import sources; '
       'sources._digits(); print("sklearn" in sys.modules)'],
      capture_output=True, text=True, timeout=120, check=False,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.split() == ['False']
