"""Tests of vit_jax.data's contract on in-memory sources: shapes, hosts, resume, eval."""

import subprocess
import sys
import types

import numpy as np
import pytest
from ml_collections import ConfigDict

from vit_jax import data
from vit_jax.data import sampler, sources

DIGITS_PP = 'resize(16)|value_range(-1,1)|onehot(10)'


def digits_config(pp=DIGITS_PP, split='train'):
  return ConfigDict(dict(data=dict(name='digits', split=split), pp=pp, data_dir=None))


def arrays_config(n=37, pp="value_range(-1,1)|onehot(5)|keep('image','labels','label')"):
  """n examples whose pixel values encode their index, so batches can be traced."""
  images = np.zeros((n, 2, 2, 3), np.uint8) + np.arange(n, dtype=np.uint8)[:, None, None, None]
  splits = {'train': {'image': images, 'label': np.arange(n) % 5},
            'test': {'image': images[:11], 'label': np.arange(11) % 5}}
  return dict(data=dict(name='arrays', split='train', arrays=splits), pp=pp)


def ids(batch):
  """Example indices of an arrays_config batch (pixel value in [-1, 1] -> index)."""
  return np.round((batch['image'][:, 0, 0, 0] + 1) * 127.5).astype(int)


def test_digits_contract_and_value_range():
  pipe = data.build_train(digits_config(), global_batch_size=32, seed=0)
  assert (pipe.num_classes, pipe.num_examples) == (10, 1497)
  batch = next(pipe.iterator())
  assert batch['image'].shape == (32, 16, 16, 3) and batch['image'].dtype == np.float32
  assert batch['labels'].shape == (32, 10) and batch['labels'].dtype == np.float32
  np.testing.assert_array_equal(batch['labels'].sum(1), 1)
  # Grey replicated to RGB; digit value 16 -> 255 -> +1 and 0 -> -1 exactly.
  np.testing.assert_array_equal(batch['image'][..., 0], batch['image'][..., 2])
  raw = sources.open_source(dict(name='digits'), split='train').arrays['image']
  assert raw.dtype == np.uint8 and raw.max() == 255 and raw.min() == 0
  plain = data.build_train(digits_config('value_range(-1,1)|onehot(10)'),
                           global_batch_size=1497, seed=0)
  values = np.unique(next(plain.iterator())['image'])
  assert values[0] == -1 and values[-1] == 1 and len(values) == 17


def test_digits_splits_are_fixed_disjoint_and_complete():
  from sklearn.datasets import load_digits
  train = sources.open_source(dict(name='digits'), split='train')
  test = sources.open_source(dict(name='digits'), split='test')
  assert (train.size, test.size) == (1497, 300)
  everything = np.concatenate([train.arrays['image'], test.arrays['image']])
  expected = np.round(load_digits().images * 255 / 16).astype(np.uint8)
  key = lambda a: sorted(x.tobytes() for x in a)
  assert key(everything[..., 0]) == key(expected)
  assert sources.open_source(dict(name='digits'), split='train[:10%]').size == 150
  assert sources.open_source(dict(name='digits'), split='test[-100:]').size == 100


def test_same_seed_same_batches_other_seed_other_batches():
  a = data.build_train(arrays_config(), global_batch_size=8, seed=3).iterator()
  b = data.build_train(arrays_config(), global_batch_size=8, seed=3).iterator()
  c = data.build_train(arrays_config(), global_batch_size=8, seed=4).iterator()
  first_a = [ids(next(a)) for _ in range(10)]
  assert all(np.array_equal(x, ids(next(b))) for x in first_a)
  assert not all(np.array_equal(x, ids(next(c))) for x in first_a)


def test_epochs_visit_every_example_once_and_reshuffle():
  pipe = data.build_train(arrays_config(n=40), global_batch_size=8, seed=0)
  it = pipe.iterator()
  seen = np.concatenate([ids(next(it)) for _ in range(10)])  # two epochs of 40
  assert sorted(seen[:40]) == list(range(40)) and sorted(seen[40:]) == list(range(40))
  assert not np.array_equal(seen[:40], seen[40:])


@pytest.mark.parametrize('use_tf', [False, True])
def test_resume_is_exact(use_tf):
  pp = DIGITS_PP.replace('resize(16)', 'resize(16)|flip_lr')
  if use_tf:  # inception_crop has no NumPy kernel: this runs through tf.data.
    pp = 'inception_crop(12)|flip_lr|value_range(-1,1)|onehot(10)|mixup(0.5)'
  pipe = data.build_train(digits_config(pp), global_batch_size=128, seed=7)
  assert pipe.uses_numpy != use_tf
  it = pipe.iterator()
  reference = [next(it) for _ in range(14)]  # crosses the epoch boundary (1497)
  for k in (0, 5, 11, 12):
    resumed = next(pipe.iterator(k))
    for key in ('image', 'labels'):
      np.testing.assert_array_equal(resumed[key], reference[k][key])
  # Augmentation really is random: a different seed flips other images.
  other = next(data.build_train(digits_config(pp), global_batch_size=128, seed=8).iterator())
  assert not np.array_equal(other['image'], reference[0]['image'])


@pytest.mark.parametrize('hosts', [2, 4])
def test_hosts_split_each_global_batch_of_one_global_order(hosts):
  n, host_batch = 37, 4
  iterators = [data.build_train(arrays_config(n), global_batch_size=host_batch * hosts, seed=0,
                                process_index=i, process_count=hosts).iterator()
               for i in range(hosts)]
  steps = -(-2 * n // (host_batch * hosts))  # two epochs or more
  stream = []
  for _ in range(steps):
    rows = [ids(next(it)) for it in iterators]
    assert all(len(r) == host_batch for r in rows)  # per-host batch = global / hosts
    stream += [j for r in rows for j in r]
  # Global batches in host order make one stream: a permutation of the split per epoch.
  assert sorted(stream[:n]) == list(range(n)) and sorted(stream[n:2 * n]) == list(range(n))
  np.testing.assert_array_equal(stream, sampler.TrainOrder(n, 0).indices(np.arange(len(stream))))


@pytest.mark.parametrize('hosts,batch', [(1, 4), (2, 8), (4, 8), (4, 16)])
def test_eval_counts_every_example_once(hosts, batch):
  counts = np.zeros(37, int)
  num_batches = set()
  for i in range(hosts):
    ev = data.build_eval(arrays_config(37), 'train', global_batch_size=batch,
                         process_index=i, process_count=hosts)
    batches = list(ev)
    num_batches.add(len(batches))
    assert len(batches) == ev.num_batches
    for b in batches:
      assert b['mask'].shape == (batch // hosts,)
      np.add.at(counts, ids(b)[b['mask'] == 1], 1)
      assert np.all(b['labels'][b['mask'] == 0] == 0)
  assert len(num_batches) == 1  # every host yields the same number of batches
  np.testing.assert_array_equal(counts, 1)


def test_eval_with_more_hosts_than_examples():
  total = 0
  for i in range(4):
    ev = data.build_eval(arrays_config(3), 'train', global_batch_size=8,
                         process_index=i, process_count=4)
    batches = list(ev)
    assert len(batches) == 1 and batches[0]['image'].shape == (2, 2, 2, 3)
    total += sum(b['mask'].sum() for b in batches)
  assert total == 3


def test_digits_never_imports_tensorflow():
  code = ('import sys; from vit_jax import data; '
          f'p = data.build_train({digits_config().to_dict()!r}, global_batch_size=8, seed=0); '
          'next(p.iterator()); list(data.build_eval(' f'{digits_config().to_dict()!r}'
          ", 'test', global_batch_size=64)); assert 'tensorflow' not in sys.modules")
  subprocess.run([sys.executable, '-c', code], check=True)


def test_prefetch_yields_in_order_and_reraises():
  assert list(data.prefetch(iter(range(50)), 3)) == list(range(50))
  def broken():
    yield 1
    raise ValueError('boom')
  with pytest.raises(ValueError, match='boom'):
    list(data.prefetch(broken(), 2))


@pytest.mark.parametrize('config,message', [
    (dict(data=dict(name='digits', split='validation'), pp=DIGITS_PP), "no split 'validation'"),
    (dict(data=dict(name='digits', split='train[50%:50%]'), pp=DIGITS_PP), 'selects no examples'),
    (dict(data=dict(name='digits', split='train'), pp='resize(16)|frobnicate'), 'Unknown preprocessing op'),
    (dict(data=dict(name='digits', split='train'), pp='resize(16)'), "leaves no 'labels'"),
    (dict(data=dict(name='digits', split='train'), pp='mixup(0.2)|onehot(10)'), 'must come after'),
])
def test_bad_configs_have_clear_messages(config, message):
  with pytest.raises(ValueError, match=message):
    data.build_train(config, global_batch_size=8, seed=0)


def test_batch_must_divide_over_hosts():
  with pytest.raises(ValueError, match='multiple of process_count=3'):
    data.build_train(digits_config(), global_batch_size=8, seed=0, process_index=0,
                     process_count=3)


def test_tensorflow_is_told_to_leave_accelerators_alone():
  from vit_jax.data import tf_runtime
  calls = []
  fake_config = types.SimpleNamespace(
      list_physical_devices=lambda kind: [f'{kind}:0'] if kind == 'GPU' else [],
      set_visible_devices=lambda devices, kind: calls.append((devices, kind)))
  tf_runtime._hide_accelerators(types.SimpleNamespace(config=fake_config))
  assert calls == [([], 'GPU')]
  tf = tf_runtime.tf()
  assert tf.config.get_visible_devices('GPU') == []


def test_the_images_the_pp_makes_are_checked_against_the_model_size():
  """The size the model is built for against what the pp makes (NumPy
  path: the first example; tf.data: the element_spec) before compiling."""
  train = data.build_train(digits_config(), global_batch_size=8, seed=0)
  assert train.uses_numpy and train.image_shape == (16, 16, 3)
  data.check_image_size(train, 16)
  data.check_image_size(train, (16, 16))
  with pytest.raises(ValueError) as e:
    data.check_image_size(train, 32)
  assert str(e.value) == (
      "input.pp 'resize(16)|value_range(-1,1)|onehot(10)' makes 16x16x3 "
      'images but image_size=32 (the model takes 32x32x3); make them agree: '
      'the size in input.pp, or image_size=16.')
  # tf.data: a random crop leaves the channels unknown, the size is checked.
  crop = data.build_eval(
      digits_config('resize(20)|inception_crop(12)|value_range(-1,1)|'
                    'onehot(10)'), 'test', global_batch_size=8)
  assert not crop.uses_numpy and crop.image_shape == (12, 12, None)
  data.check_image_size(crop, 12)
  with pytest.raises(ValueError, match=r"^evals.val.pp 'resize\(20\)\|incep"
                     r'.* makes 12x12x\? images but image_size=16x20 '
                     r'\(the model takes 16x20x3\); make them agree: the '
                     r'size in evals.val.pp, or image_size=12.$'):
    data.check_image_size(crop, (16, 20), where='evals.val.pp')
