"""Few-shot probes on the bundled digits, through build_evaluators on 8 devices."""

import jax
import numpy as np
import pytest

from vit_jax import data, evaluate, parallel
from vit_jax.evaluate import fewshot
from vit_jax.models import get_model

PP = 'resize(16)|value_range(-1, 1)|onehot(10)'


@pytest.fixture(scope='module')
def tiny():
  model = get_model('ViT-Ti/16', 10, hidden_size=32, num_layers=2, mlp_dim=64,
                    num_heads=2, patch_size=(4, 4), representation_size=24)
  params = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 16, 16, 3), np.float32))
  return model, params['params']


def _config(**kw):
  return {'fs': dict(type='fewshot', batch_size=128, datasets={
      'digits': dict(data=dict(name='digits'), num_classes=10, pp=PP,
                     shots=(1, 5, 10, 25))}, **kw)}


def _direct_features(model, params, split):
  """Features without the mesh: one plain apply over the whole split."""
  pipe = data.build_eval({'data': {'name': 'digits'}, 'pp': PP}, split,
                         global_batch_size=2000)
  batch = next(iter(pipe))
  valid = batch['mask'] > 0
  x = jax.jit(lambda p, x: model.apply({'params': p}, x, return_prelogits=True))(
      params, batch['image'][valid])
  return fewshot.Features(np.asarray(x), batch['labels'][valid].argmax(-1), 10)


def test_fewshot_on_digits_is_far_above_chance(tiny):
  model, params = tiny
  mesh = parallel.make_mesh({'data': -1})
  [ev] = evaluate.build_evaluators(_config(), model=model, mesh=mesh,
                                   image_size=16)
  assert (ev.name, ev.every) == ('fs', 0)
  result = ev.run(params)
  # Frozen random features: chance is 10%.
  assert result['digits_25shot'] > 0.4
  assert result['digits_10shot'] > 0.3
  assert result['digits_25shot'] > result['digits_1shot']
  assert all(result[f'digits_{k}shot_std'] > 0 for k in (1, 5))
  # The same numbers as features computed without the mesh, in split order.
  train = _direct_features(model, params, 'train')
  test = _direct_features(model, params, 'test')
  assert len(train.labels) == 1497 and len(test.labels) == 300
  expected = fewshot.probe_scores(train, test, 10, (1, 5, 10, 25), 3,
                                  fewshot.DEFAULT_L2_REGS, dataset='digits')
  assert result == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_fixed_l2_and_sharded_params(tiny):
  model, params = tiny
  mesh = parallel.make_mesh({'data': 2, 'fsdp': 4})
  sharded = parallel.put_sharded(params, parallel.tree_shardings(
      params, mesh, [('.*', 'fsdp')], fsdp_min_size=1))
  [ev] = evaluate.build_evaluators(_config(l2_regs=(64.0,), seeds=2),
                                   model=model, mesh=mesh, image_size=16)
  result = ev.run(sharded)
  assert result['digits_5shot_l2'] == pytest.approx(64.0)
  assert result['digits_25shot'] > 0.3


def test_config_errors_name_the_problem(tiny):
  model, _ = tiny
  mesh = parallel.make_mesh({'data': -1})
  with pytest.raises(ValueError, match="unknown evaluator type 'fewshots'"):
    evaluate.build_evaluators({'x': dict(type='fewshots')}, model=model,
                              mesh=mesh)
  bad = {'fs': dict(type='fewshot', datasets={
      'a': dict(data=dict(name='digits'), num_classes=10, pp=PP,
                train_split='valid'),
      'b': dict(data=dict(name='digits'), pp=PP, test_split='nope')})}
  with pytest.raises(ValueError, match=r"fs/a.*no split 'valid'.*fs/b.*'nope'"):
    evaluate.build_evaluators(bad, model=model, mesh=mesh, image_size=16)
  too_many = _config()
  too_many['fs']['datasets']['digits']['train_split'] = 'train[:100]'
  [ev] = evaluate.build_evaluators(too_many, model=model, mesh=mesh,
                                   image_size=16)
  with pytest.raises(ValueError, match='class 0 has 8 training examples, fewer than 10 shots'):
    ev.run(tiny[1])
