"""Few-shot probes on the bundled digits, through build_evaluators on 8 devices."""

import jax
import numpy as np
import pytest

from vit_jax import data, evaluate, parallel
from vit_jax.evaluate import fewshot, ridge
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
  # Frozen random features, l2 fixed at 2^10: chance is 10%.
  assert result['digits_25shot'] > 0.3
  assert result['digits_10shot'] > 0.2
  assert result['digits_25shot'] > result['digits_1shot']
  assert all(result[f'digits_{k}shot_std'] > 0 for k in (1, 5))
  # The same numbers as features computed without the mesh, in split order.
  train = _direct_features(model, params, 'train')
  test = _direct_features(model, params, 'test')
  assert len(train.labels) == 1497 and len(test.labels) == 300
  expected = fewshot.probe_scores(train, test, 10, (1, 5, 10, 25), 3,
                                  dataset='digits')
  assert result == pytest.approx(expected, rel=1e-4, abs=1e-6)
  # The default: l2 fixed at 2^10, shots nested per seed (seed s: the first k
  # of each class's order under default_rng(s)), by hand for 5 shots, seed 1.
  rng = np.random.default_rng(1)
  orders = [rng.permutation(np.flatnonzero(train.labels == c))
            for c in range(10)]
  idx = np.sort(np.concatenate([o[:5] for o in orders]))
  x = train.x[idx].astype(np.float64)
  mean, std = x.mean(0), x.std(0) + 1e-5
  feats = lambda f: np.concatenate(
      [(f - mean) / std, np.full((len(f), 1), 100.0)], axis=1)
  w = ridge.fit_ridge(feats(x), ridge.one_vs_rest_targets(train.labels[idx], 10),
                      2.0**10)
  by_hand = np.mean((feats(test.x.astype(np.float64)) @ w).argmax(1)
                    == test.labels)
  seed1 = fewshot.probe_scores(fewshot.Features(train.x, train.labels, 10),
                               test, 10, (5,), 1, seed=1)
  assert seed1['5shot'] == pytest.approx(by_hand)


def test_fixed_l2_and_sharded_params(tiny):
  model, params = tiny
  mesh = parallel.make_mesh({'data': 2, 'fsdp': 4})
  sharded = parallel.put_sharded(params, parallel.tree_shardings(
      params, mesh, [('.*', 'fsdp')], fsdp_min_size=1))
  [ev] = evaluate.build_evaluators(
      _config(l2_reg=64.0, seeds=2, tuned_l2=True, l2_grid=(1.0, 1e3)),
      model=model, mesh=mesh, image_size=16)
  result = ev.run(sharded)
  assert set(result) == {f'digits_{k}shot{s}' for k in (1, 5, 10, 25) for s in (
      '', '_std', '_tuned_l2', '_tuned_l2_std', '_tuned_l2_reg')}
  assert 1.0 <= result['digits_5shot_tuned_l2_reg'] <= 1e3
  assert result['digits_25shot'] > 0.3 and result['digits_25shot_tuned_l2'] > 0.3


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
  with pytest.raises(ValueError, match="unknown key 'l2_regs' \\(did you mean "
                     "'l2_reg'"):
    evaluate.build_evaluators(_config(l2_regs=(1.0,)), model=model, mesh=mesh,
                              image_size=16)
