"""Top-1/top-5 on the mesh: exact counts with padding, sharded parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import parallel
from vit_jax.evaluate import classify
from vit_jax.models import get_model


def _tiny(num_classes=10):
  return get_model('ViT-Ti/16', num_classes, hidden_size=32, num_layers=2,
                   mlp_dim=64, num_heads=2, patch_size=(4, 4))


def _batches(images, labels, host_batch):
  """Host batches of `host_batch` rows, the last one padded (mask 0)."""
  def make():
    for start in range(0, len(images), host_batch):
      img = images[start:start + host_batch]
      lab = labels[start:start + host_batch]
      n = len(img)
      pad = host_batch - n
      yield {'image': np.concatenate([img, np.zeros((pad,) + img.shape[1:],
                                                    np.float32)]),
             'labels': np.concatenate([lab, np.ones((pad, lab.shape[1]),
                                                    np.float32)]),
             'mask': np.concatenate([np.ones(n), np.zeros(pad)]).astype(np.float32)}
  return make


def test_topk_counts_by_hand():
  logits = jnp.array([[0., 3., 2., 1., .5, .1],   # top1 = 1, top5 misses 5.
                      [5., 4., 3., 2., 1., 0.],   # top1 = 0.
                      [0., 0., 0., 0., 0., 9.]])  # padding.
  labels = jnp.eye(6)[jnp.array([1, 4, 5])]
  labels = labels.at[0, 5].set(1)  # Example 0 is multi-hot {1, 5}.
  counts = classify.topk_counts(logits, labels, jnp.array([1., 1., 0.]))
  assert {k: int(v) for k, v in counts.items()} == {
      'top1_correct': 1, 'top5_correct': 2, 'count': 2}


@pytest.mark.parametrize('axes', [{'data': -1}, {'data': 2, 'fsdp': 4}])
def test_accuracy_counts_every_example_once(axes):
  model = _tiny()
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, size=(37, 16, 16, 3)).astype(np.float32)
  params = jax.jit(model.init)(jax.random.key(0), images[:1])['params']
  # A random head so that predictions vary from image to image.
  params['head']['kernel'] = jax.random.normal(jax.random.key(1),
                                               params['head']['kernel'].shape)
  logits = np.asarray(jax.jit(model.apply)({'params': params}, images))
  # Labels: the prediction for a third of the images, another class otherwise.
  pred = logits.argmax(-1)
  truth = np.where(np.arange(37) % 3 == 0, pred, (pred + 1) % 10)
  labels = np.eye(10, dtype=np.float32)[truth]
  mesh = parallel.make_mesh(axes)
  if axes.get('fsdp'):
    rules = [('.*', 'fsdp')]
    params = parallel.put_sharded(
        params, parallel.tree_shardings(params, mesh, rules, fsdp_min_size=1))
  evaluator = classify.ClassifyEvaluator(
      name='val', every=10, model=model, mesh=mesh,
      batches=_batches(images, labels, 16), batch_size=16)
  result = evaluator.run(params)
  expected_top5 = np.mean([t in np.argsort(-l)[:5] for t, l in zip(truth, logits)])
  assert result['num_examples'] == 37
  assert result['top1'] == pytest.approx(13 / 37)  # Not a mean of batch means.
  assert result['top5'] == pytest.approx(expected_top5)
  # Running again gives the same answer (fresh iteration, cached compile).
  assert evaluator.run(params) == result


def test_bad_batch_size_is_a_clear_error():
  mesh = parallel.make_mesh({'data': -1})
  with pytest.raises(ValueError, match='multiple of the 8 batch shards'):
    classify.ClassifyEvaluator(name='val', every=1, model=_tiny(), mesh=mesh,
                               batches=lambda: [], batch_size=12)
