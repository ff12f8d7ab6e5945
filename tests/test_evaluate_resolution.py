"""Evaluation at the checkpoint's own resolution (issue: a 384-px file scored at 224)."""

import logging
import os
import sys

import jax
import numpy as np
import pytest

from vit_jax import checkpoint
from vit_jax.data import sources
from vit_jax.evaluate import ridge, run
from vit_jax.models import get_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import evaluate as evaluate_config  # pylint: disable=wrong-import-position

# 32x32 patches: a 12x12 grid at 384 px, 7x7 at 224.
ARCH = dict(hidden_size=32, num_layers=1, mlp_dim=64, num_heads=2,
            patch_size=32)
SIZE = 384


def _digits(split, n, size=SIZE):
  """n digits upscaled (nearest) to `size` px, uint8, and their labels."""
  part = sources._digits()[split]  # pylint: disable=protected-access
  images = part['image'][:n].repeat(size // 8, axis=1).repeat(size // 8, axis=2)
  return images, part['label'][:n]


@pytest.fixture(scope='module')
def at384(tmp_path_factory):
  """A tiny ViT fine-tuned 'at 384 px': its head is a ridge probe on 384-px
  features, so its accuracy is far from chance at 384."""
  model = get_model('ViT-Ti/16', 10, **{**ARCH, 'patch_size': (32, 32)})
  params = jax.jit(model.init)(jax.random.key(0),
                               np.zeros((1, SIZE, SIZE, 3), np.float32))
  params = jax.tree.map(np.asarray, params['params'])
  # uint8 in, scaled inside: a quarter of the bytes of float32 384-px batches.
  features = jax.jit(lambda p, x: model.apply(
      {'params': p}, x.astype(np.float32) / 127.5 - 1, return_prelogits=True))
  x, y = _digits('train', 320)
  f = np.concatenate([np.asarray(features(params, x[i:i + 64]), np.float64)
                      for i in range(0, len(x), 64)])
  mean, std = f.mean(0), np.where(f.std(0) > 1e-8, f.std(0), 1.0)
  (train,) = ridge.standardize(f)
  w = ridge.fit_ridge(train, ridge.one_vs_rest_targets(y, 10), 1.0)
  params['head'] = {'kernel': (w[:-1] / std[:, None]).astype(np.float32),
                    'bias': (w[-1] - (mean / std) @ w[:-1]).astype(np.float32)}
  images, y_test = _digits('test', 160)
  x_test = images.astype(np.float32) / 127.5 - 1
  apply = jax.jit(model.apply)
  pred = np.concatenate([np.asarray(apply({'params': params}, x_test[i:i + 64]))
                         .argmax(-1) for i in range(0, len(x_test), 64)])
  by_hand = float(np.mean(pred == y_test))
  path = str(tmp_path_factory.mktemp('ckpt') / 'tiny384.npz')
  checkpoint.save_npz(path, params)
  return path, by_hand


def _evaluate(path, workdir, size_arg='', size=SIZE):
  images, labels = _digits('test', 160, size)
  config = evaluate_config.get_config(
      f'evals=classify,dataset=arrays,batch_size=64,model=ViT-Ti/16{size_arg}')
  for key, value in ARCH.items():
    setattr(config.model, key, value)
  # The 384-px images themselves, so that no resize blurs the comparison.
  config.evals.classify.data = {'name': 'arrays', 'arrays': {'test': {
      'image': images, 'label': labels}}}
  config.evals.classify.pp = 'value_range(-1, 1)|onehot(10)'
  return run.evaluate_checkpoint(config, path, str(workdir))


def test_a_384_checkpoint_is_evaluated_at_384_without_a_size(at384, tmp_path,
                                                             caplog):
  path, by_hand = at384
  assert by_hand > 0.3  # chance is 0.1
  caplog.set_level(logging.INFO)
  results = _evaluate(path, tmp_path / 'native')
  assert results['image_size'] == results['checkpoint_image_size'] == 384
  assert results['metrics']['classify']['top1'] == by_hand
  [line] = [r.getMessage() for r in caplog.records
            if r.getMessage().startswith('Evaluating ')]
  assert "at 384 px (the checkpoint's own resolution)" in line

  caplog.clear()
  results = _evaluate(path, tmp_path / 'at224', ',image_size=224', 224)
  assert results['image_size'] == 224 and results['checkpoint_image_size'] == 384
  assert results['metrics']['classify']['top1'] != by_hand
  [line] = [r.getMessage() for r in caplog.records
            if r.getMessage().startswith('Evaluating ')]
  assert ('at 224 px (given; the checkpoint is for 384 px: its position '
          'embeddings are resampled)') in line
