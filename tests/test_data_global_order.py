"""Random-access sources train on one global order: the global batches ignore the host count.

For digits, arrays and image folders the concatenation of the P host batches of
step s must be bit-identical for P = 1, 2, 4 (images, augmentation included, and
labels), across an epoch boundary and after a resume at any batch, while each host
reads only its own rows.
"""

import os

import numpy as np
import pytest
from PIL import Image

from vit_jax import data
from vit_jax.data import sampler, sources
from vit_jax.data.tf_runtime import tf as get_tf

STEPS = 5


def arrays_config(n, pp):
  """n random 12x12 images; label = index % 5; `id` = index (keep it to trace rows)."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (n, 12, 12, 3), dtype=np.uint8)
  split = {'image': images, 'label': np.arange(n) % 5, 'id': np.arange(n)}
  return dict(data=dict(name='arrays', split='train', arrays={'train': split}), pp=pp)


@pytest.fixture(scope='module')
def jpeg_folder(tmp_path_factory):
  """ROOT/train/{a,b,c}/k.jpg: 19 noisy JPEGs of 20x24 (19: no batch size divides it)."""
  root = tmp_path_factory.mktemp('global_order')
  rng = np.random.default_rng(1)
  for k in range(19):
    folder = root / 'train' / 'abc'[k % 3]
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(
        folder / f'{k}.jpg', quality=90)
  return str(root)


def global_batches(config, hosts, batch_size, steps=STEPS, seed=3, start=0):
  """Steps start..start+steps-1 of `hosts` processes, host batches concatenated in host order."""
  per_host = []
  for i in range(hosts):
    pipe = data.build_train(config, global_batch_size=batch_size, seed=seed,
                            process_index=i, process_count=hosts)
    it = pipe.iterator(start)
    per_host.append([next(it) for _ in range(steps)])
  return [{k: np.concatenate([h[s][k] for h in per_host]) for k in per_host[0][s]}
          for s in range(steps)]


def assert_same_batches(got, want, label):
  assert len(got) == len(want)
  for s, (g, w) in enumerate(zip(got, want)):
    assert sorted(g) == sorted(w)
    for k in w:
      np.testing.assert_array_equal(g[k], w[k], err_msg=f'{label}: {k!r} of step {s}')


@pytest.mark.parametrize('name,pp,batch', [
    # NumPy executor (no TensorFlow) with a random flip.
    ('digits', 'resize(12)|flip_lr|value_range(-1,1)|onehot(10)', 64),
    # tf.data over arrays: inception_crop has no NumPy kernel.
    ('arrays', "inception_crop(8)|flip_lr|value_range(-1,1)|onehot(5)|keep('image','labels','id')",
     8),
    # tf.data over JPEG files: decode + inception_crop fuse into one random op.
    ('folder', 'decode|inception_crop(8)|flip_lr|value_range(-1,1)|onehot(3)', 8),
])
def test_global_batches_do_not_depend_on_the_process_count(name, pp, batch, jpeg_folder):
  if name == 'digits':
    config = dict(data=dict(name='digits', split='train[:300]'), pp=pp)
    n = 300
  elif name == 'arrays':
    config, n = arrays_config(37, pp), 37
  else:
    config, n = dict(data=dict(name='folder', root=jpeg_folder, split='train'), pp=pp), 19
  assert STEPS * batch > n  # the steps cross an epoch boundary, inside a batch
  one = global_batches(config, 1, batch)
  assert one[0]['image'].shape[0] == batch
  for hosts in (2, 4):
    assert_same_batches(global_batches(config, hosts, batch), one, f'{name}, {hosts} processes')
  # Resuming at batch 3 on 4 processes gives what 1 process gives at steps 3 and 4.
  assert_same_batches(global_batches(config, 4, batch, steps=2, start=3), one[3:], 'resumed')
  # The augmentation is random (a wrong implementation could ignore the key): with
  # another seed the same pipeline gives other images.
  other = global_batches(config, 1, batch, steps=1, seed=4)
  assert not np.array_equal(other[0]['image'], one[0]['image'])


def test_epochs_are_permutations_of_the_split_and_roll_over_inside_a_batch():
  n, batch = 37, 8
  config = arrays_config(n, "onehot(5)|keep('image','labels','id')")
  for hosts in (1, 2):
    stream = np.concatenate([b['id'] for b in global_batches(config, hosts, batch, steps=10)])
    assert sorted(stream[:n]) == list(range(n)) and sorted(stream[n:2 * n]) == list(range(n))
    assert not np.array_equal(stream[:n], stream[n:2 * n])  # reshuffled each epoch
    # The order is the sampler's global permutation, seeded by (seed, epoch) alone.
    order = sampler.TrainOrder(n, 3)
    np.testing.assert_array_equal(stream, order.indices(np.arange(10 * batch)))
    labels = np.concatenate([b['labels'] for b in global_batches(config, hosts, batch, steps=10)])
    np.testing.assert_array_equal(labels.argmax(1), stream % 5)


def test_host_rows_are_contiguous_shares_of_the_global_batch():
  np.testing.assert_array_equal(sampler.host_positions(2, 8, 1, 4), [18, 19])
  np.testing.assert_array_equal(sampler.host_positions([0, 1], 6, 0, 2), [[0, 1, 2], [6, 7, 8]])
  with pytest.raises(ValueError, match='multiple of process_count=3'):
    sampler.host_positions(0, 8, 0, 3)


@pytest.mark.parametrize('pp', [
    "value_range(-1,1)|onehot(5)|keep('image','labels','id')",  # NumPy
    "inception_crop(8)|onehot(5)|keep('image','labels','id')",  # tf.data
])
def test_each_host_reads_only_its_own_rows(pp, monkeypatch):
  """Host 1 of 2 looks up exactly its rows of the global order (and prefetches ahead)."""
  n, batch, consumed = 200, 8, 3
  read = []
  take, tf_lookup = sources.ArraySource.take, sources.ArraySource.tf_lookup
  def recording_take(self, indices):
    read.extend(np.asarray(indices).tolist())
    return take(self, indices)
  def recording_tf_lookup(self):
    tf, inner = get_tf(), tf_lookup(self)
    def lookup(i):
      i = tf.numpy_function(lambda v: (read.append(int(v)), v)[1], [i], tf.int64)
      return inner(tf.ensure_shape(i, []))
    return lookup
  monkeypatch.setattr(sources.ArraySource, 'take', recording_take)
  monkeypatch.setattr(sources.ArraySource, 'tf_lookup', recording_tf_lookup)
  pipe = data.build_train(arrays_config(n, pp), global_batch_size=batch, seed=0,
                          process_index=1, process_count=2)
  it = pipe.iterator()
  ids = np.concatenate([next(it)['id'] for _ in range(consumed)])
  order = sampler.TrainOrder(n, 0)
  mine = order.indices(sampler.host_positions(np.arange(n // batch), batch, 1, 2)).ravel()
  np.testing.assert_array_equal(ids, mine[:consumed * batch // 2])
  assert set(ids) <= set(read) <= set(mine)  # never a row of host 0 (one epoch: disjoint)


def test_mixup_weight_is_global_and_rows_differ_only_at_host_boundaries():
  pp = 'resize(8)|value_range(-1,1)|onehot(10)|mixup(0.5)'
  config = dict(data=dict(name='digits', split='train'), pp=pp)
  one = global_batches(config, 1, 16, steps=2)
  two = global_batches(config, 2, 16, steps=2)
  for a, b in zip(one, two):
    rows = np.all(a['image'] == b['image'], axis=(1, 2, 3))
    # Each host mixes its first row with its own last one; all other rows agree.
    np.testing.assert_array_equal(np.flatnonzero(~rows), [0, 8])
    np.testing.assert_array_equal(a['labels'][rows], b['labels'][rows])
