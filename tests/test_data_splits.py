"""Concatenated splits ('train[0:800]+train[45000:45200]'): parsing, host shares, resume, eval."""

import os

import numpy as np
import pytest
from PIL import Image

from vit_jax import data
from vit_jax.data import sampler


def test_split_ranges_and_sub_ranges_of_a_concatenation():
  sizes = {'train': 50_000, 'test': 10_000}
  assert sampler.parse_split(' train[0:800] + train[45000:45200]') == [
      ('train', '0', '800'), ('train', '45000', '45200')]
  ranges = sampler.split_ranges('train[0:800]+train[45000:45200]', sizes.__getitem__)
  assert ranges == [('train', 0, 800), ('train', 45000, 45200)]
  assert sampler.ranges_size(ranges) == 1000
  # Host 1 of 2 reads positions [500, 1000): the end of one part and all of the next.
  assert sampler.sub_ranges(ranges, *sampler.host_range(1000, 1, 2)) == [
      ('train', 500, 800), ('train', 45000, 45200)]
  assert sampler.sub_ranges(ranges, 790, 805) == [('train', 790, 800), ('train', 45000, 45005)]
  assert sampler.split_ranges('train[:1%]+test[-10%:]+train', sizes.__getitem__) == [
      ('train', 0, 500), ('test', 9000, 10000), ('train', 0, 50000)]
  asked = []
  sampler.split_ranges('train[:5]+train[9:]', lambda b: asked.append(b) or 20)
  assert asked == ['train']  # Each base split's size is asked once.


@pytest.mark.parametrize('split,message', [
    ('train[:10]+', r"Split 'train\[:10\]\+' has an empty part"),
    ('train++test', 'has an empty part'),
    ('train[:10]+test[a:]', r"slice bound 'a' in split 'train\[:10\]\+test\[a:\]'"),
    ('train[:10]+train[50:60]',
     r"Part 'train\[50:60\]' of split 'train\[:10\]\+train\[50:60\]' selects no examples "
     r"\(split 'train' has 48\)"),
    ('train[48:]', r"Split 'train\[48:\]' selects no examples"),
])
def test_split_errors_are_one_line(split, message):
  with pytest.raises(ValueError, match=message) as e:
    sampler.split_ranges(split, lambda base: 48)
  assert '\n' not in str(e.value)


# -------------------------------------------------------------- in-memory arrays

def arrays_config(split, pp="onehot(5)|keep('image','labels')"):
  """train: ids 0..36, test: ids 100..110; the pixel value is the id."""
  def part(ids):
    return {'image': np.broadcast_to(np.array(ids, np.uint8)[:, None, None, None],
                                     (len(ids), 2, 2, 3)), 'label': np.array(ids) % 5}
  return dict(data=dict(name='arrays', split=split,
                        arrays={'train': part(range(37)), 'test': part(range(100, 111))}), pp=pp)


def ids(batch):
  return np.round(batch['image'][:, 0, 0, 0]).astype(int)


SPLIT = 'train[30:]+test[2:9]+train[:4]'
EXPECTED = list(range(30, 37)) + list(range(102, 109)) + list(range(4))  # 18 examples


def check_train_hosts_and_resume(config, expected, hosts, host_batch, ids_fn, resume_at):
  """Host batches in host order: each epoch a permutation of `expected`; iterator(k) exact."""
  n = len(expected)
  num = max(-(-2 * n // (host_batch * hosts)), max(resume_at) + 1)  # two epochs or more
  per_host = []
  for i in range(hosts):
    pipe = data.build_train(config, global_batch_size=host_batch * hosts, seed=5,
                            process_index=i, process_count=hosts)
    assert pipe.num_examples == n and pipe.order.n == n  # one global order
    it = pipe.iterator()
    per_host.append([next(it) for _ in range(num)])
    for k in resume_at:
      np.testing.assert_array_equal(next(pipe.iterator(k))['image'], per_host[i][k]['image'])
  stream = np.concatenate([ids_fn(h[s]) for s in range(num) for h in per_host])
  assert sorted(stream[:n]) == sorted(expected)
  assert sorted(stream[n:2 * n]) == sorted(expected)


def check_eval_once(config, expected, hosts, host_batch, ids_fn):
  seen, lengths = [], set()
  for i in range(hosts):
    pipe = data.build_eval(config, None, global_batch_size=host_batch * hosts,
                           process_index=i, process_count=hosts)
    batches = list(pipe)
    lengths.add(len(batches))
    for b in batches:
      seen += ids_fn(b)[b['mask'] == 1].tolist()
  assert len(lengths) == 1
  assert sorted(seen) == sorted(expected)


@pytest.mark.parametrize('hosts', [1, 3])
def test_arrays_concatenation_hosts_resume_and_eval(hosts):
  config = arrays_config(SPLIT)
  check_train_hosts_and_resume(config, EXPECTED, hosts, 4, ids, resume_at=(1, 3))
  check_eval_once(config, EXPECTED, hosts, 4, ids)
  labels = next(iter(data.build_eval(config, None, global_batch_size=18)))['labels']
  np.testing.assert_array_equal(labels.argmax(1), np.array(EXPECTED) % 5)


def test_digits_train_plus_test_is_every_digit():
  pipe = data.build_eval(dict(data=dict(name='digits', split='train+test'),
                              pp='onehot(10)'), None, global_batch_size=600)
  assert pipe.num_examples == 1797 and pipe.num_batches == 3


@pytest.mark.parametrize('split,message', [
    ('train[:5]+validation', r"no split 'validation'; its splits are \['test', 'train'\]"),
    ('train[:5]+test[20:]', r"Part 'test\[20:\]' of split .* selects no examples"),
])
def test_arrays_concatenation_errors(split, message):
  with pytest.raises(ValueError, match=message):
    data.build_eval(arrays_config(split), None, global_batch_size=4)


def test_arrays_parts_of_other_shapes_cannot_be_joined():
  config = arrays_config('train[:3]+test[:3]')
  config['data']['arrays']['test']['image'] = np.zeros((11, 3, 3, 3), np.uint8)
  with pytest.raises(ValueError, match='cannot be joined.*same shape'):
    data.build_eval(config, None, global_batch_size=4)


# ------------------------------------------------------------------ image folder

@pytest.fixture(scope='module')
def two_split_folder(tmp_path_factory):
  """ROOT/{train,val}/{a,b}/id{k}.png, pixel value k: train ids 0..13, val ids 50..57."""
  root = tmp_path_factory.mktemp('splits')
  for split, ids_ in (('train', range(14)), ('val', range(50, 58))):
    for k in ids_:
      os.makedirs(root / split / 'ab'[k % 2], exist_ok=True)
      Image.fromarray(np.full((6, 5, 3), k, np.uint8)).save(root / split / 'ab'[k % 2] / f'id{k}.png')
  os.makedirs(root / 'other' / 'c')
  Image.fromarray(np.zeros((6, 5, 3), np.uint8)).save(root / 'other' / 'c' / 'x.png')
  return str(root)


def folder_config(root, split):
  return dict(data=dict(name='folder', root=root, split=split),
              pp="decode|onehot(2)|keep('image', 'labels', 'file_name')")


def test_folder_concatenation_hosts_resume_eval_and_file_names(two_split_folder):
  train = data.build_eval(folder_config(two_split_folder, 'train'), None, global_batch_size=14)
  val = data.build_eval(folder_config(two_split_folder, 'val'), None, global_batch_size=8)
  order = {s: ids(next(iter(p))).tolist() for s, p in (('train', train), ('val', val))}
  assert sorted(order['train']) == list(range(14)) and sorted(order['val']) == list(range(50, 58))
  split = 'val[5:]+train[:50%]+val[:2]'
  expected = order['val'][5:] + order['train'][:7] + order['val'][:2]
  config = folder_config(two_split_folder, split)
  check_train_hosts_and_resume(config, expected, 2, 2, ids, resume_at=(2, 5))
  check_eval_once(config, expected, 2, 4, ids)
  batch = next(iter(data.build_eval(config, None, global_batch_size=16)))
  names = [n.decode() for n in batch['file_name']]
  assert names == [f'id{k}.png' for k in expected] + [''] * 4
  np.testing.assert_array_equal(batch['labels'][:12].argmax(1), np.array(expected) % 2)


@pytest.mark.parametrize('split,message', [
    ('train+other', r"Split folders 'train' and 'other' of .* have different class folders "
                    r"\(only in the first: \['a', 'b'\], only in the second: \['c'\]\)"),
    ('train+nope', r"no split 'nope'.*its splits are \['other', 'train', 'val'\]"),
    ('train[:3]+val[8:]', r"Part 'val\[8:\]' of split .* selects no examples \(split 'val' has 8\)"),
])
def test_folder_concatenation_errors(two_split_folder, split, message):
  with pytest.raises(ValueError, match=message) as e:
    data.build_eval(folder_config(two_split_folder, split), None, global_batch_size=4)
  assert '\n' not in str(e.value)
