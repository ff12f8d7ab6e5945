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


ARRAYS_PP = "value_range(-1, 1)|onehot(5)|keep('image', 'labels')"


def _made(seed, informative=True):
  """A made 5-class dataset standing in for one of big_vision's: 16x16
  images, a class pattern plus noise (labels shuffled when not informative)."""
  rng = np.random.default_rng(seed)
  patterns = rng.integers(0, 256, size=(5, 16, 16, 3))

  def split(per_class):
    labels = np.repeat(np.arange(5), per_class)
    noise = rng.normal(0, 60, size=(len(labels), 16, 16, 3))
    images = np.clip(patterns[labels] + noise, 0, 255).astype(np.uint8)
    if not informative:
      labels = rng.permutation(labels)
    return {'image': images, 'label': labels}
  return dict(data=dict(name='arrays', arrays={'train': split(12),
                                                'test': split(6)}),
              train_split='train', test_split='test', num_classes=5,
              pp=ARRAYS_PP, shots=(1, 5))


def _big_vision_set(**replace):
  """big_vision's names (ImageNet first), made data standing in for each."""
  made = {n: _made(i, informative=n != 'imagenet2012')
          for i, n in enumerate(fewshot.DATASETS)}
  made.update(replace)
  return made


def test_the_mean_is_over_big_visions_six_with_imagenet_beside(tiny):
  model, params = tiny
  assert list(fewshot.DATASETS)[0] == 'imagenet2012'  # Shown first.
  assert set(fewshot.DATASETS) == {*fewshot.MEAN_DATASETS, 'imagenet2012'}
  [ev] = evaluate.build_evaluators(
      {'fs': dict(type='fewshot', batch_size=64, seeds=2,
                  datasets=_big_vision_set())},
      model=model, mesh=parallel.make_mesh({'data': -1}), image_size=16)
  assert ev.protocol == {'mean_datasets': list(fewshot.MEAN_DATASETS),
                         'beside_mean': ['imagenet2012'], 'skipped': []}
  assert [ds.name for ds in ev.datasets][0] == 'imagenet2012'
  result = ev.run(params)
  assert list(result)[0].startswith('imagenet2012_')  # Shown first.
  six = fewshot.MEAN_DATASETS
  assert len(six) == 6 and result['mean_num_datasets'] == 6
  for k in (1, 5):
    assert result[f'mean_{k}shot'] == pytest.approx(
        np.mean([result[f'{n}_{k}shot'] for n in six]))
    with_imagenet = np.mean([result[f'{n}_{k}shot'] for n in (*six,
                                                              'imagenet2012')])
    assert result[f'mean_{k}shot'] != pytest.approx(with_imagenet)
  assert 'imagenet2012_5shot' in result  # Reported beside the mean.


def test_a_dataset_that_is_not_prepared_is_named_before_anything_runs(
    tiny, tmp_path):
  model, _ = tiny
  mesh = parallel.make_mesh({'data': -1})
  datasets = _big_vision_set(cars196=fewshot.DATASETS['cars196'],
                             imagenet2012=fewshot.DATASETS['imagenet2012'])
  config = {'fs': dict(type='fewshot', batch_size=64, datasets=datasets)}
  # Building the evaluator (what a run does first) already refuses.
  with pytest.raises(FileNotFoundError) as err:
    evaluate.build_evaluators(config, model=model, mesh=mesh, image_size=16,
                              data_dir=str(tmp_path))
  message = str(err.value)
  assert '\n' not in message
  assert message.startswith('evals.fs: 2 of 7 few-shot datasets are not '
                            'prepared, so nothing ran: imagenet2012, cars196. '
                            'Prepare them (imagenet2012: tfds build '
                            f'imagenet2012 --data_dir={tmp_path} --manual_dir=')
  assert f'cars196: tfds build cars196 --data_dir={tmp_path})' in message
  assert ('or set evals.fs.skip_missing=True (configs/evaluate.py: '
          'skip_missing=true) to run the others (without cars196 the mean is '
          "not big_vision's).") in message

  # skip_missing: the prepared ones run; ImageNet stays out of the mean.
  datasets['imagenet2012'] = _made(0, informative=False)
  config['fs'].update(skip_missing=True, seeds=2)
  [ev] = evaluate.build_evaluators(config, model=model, mesh=mesh,
                                   image_size=16, data_dir=str(tmp_path))
  five = [n for n in fewshot.MEAN_DATASETS if n != 'cars196']
  assert ev.protocol == {'mean_datasets': five, 'beside_mean': ['imagenet2012'],
                         'skipped': ['cars196'],
                         'note': "not big_vision's six: its mean is not "
                                 'comparable'}
  result = ev.run(tiny[1])
  assert not any(k.startswith('cars196') for k in result)
  assert result['mean_num_datasets'] == 5
  assert result['mean_5shot'] == pytest.approx(
      np.mean([result[f'{n}_5shot'] for n in five]))


def test_the_evaluate_config_passes_skip_missing():
  import os
  import sys
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
      __file__))))
  from configs import evaluate as evaluate_config
  c = evaluate_config.get_config('evals=fewshot,skip_missing=true')
  assert c.evals.fewshot.skip_missing is True
  assert set(c.evals.fewshot.datasets) == set(fewshot.DATASETS)
  assert evaluate_config.get_config(
      'evals=fewshot').evals.fewshot.skip_missing is False
