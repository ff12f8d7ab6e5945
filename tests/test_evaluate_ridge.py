"""The ridge solver against independent closed forms, and the probe's pieces."""

import numpy as np
import pytest
import scipy.linalg

from vit_jax.evaluate import fewshot, ridge


def _augmented_lstsq(x, y, l2):
  """Ridge as ordinary least squares on [X; sqrt(l2) I] -> [Y; 0] (no Gram)."""
  d = x.shape[1]
  xa = np.concatenate([x, np.sqrt(l2) * np.eye(d)])
  ya = np.concatenate([y, np.zeros((d, y.shape[1]))])
  return np.linalg.lstsq(xa, ya, rcond=None)[0]


@pytest.mark.parametrize('n,d', [(40, 7), (7, 40), (25, 25)])
@pytest.mark.parametrize('l2', [1e-3, 0.5, 300.0])
def test_ridge_matches_closed_forms(n, d, l2):
  rng = np.random.default_rng(n * 100 + d)
  x = rng.normal(size=(n, d)) * rng.uniform(0.1, 10, size=d)
  y = rng.normal(size=(n, 3))
  expected = _augmented_lstsq(x, y, l2)
  primal = ridge.fit_ridge(x, y, l2, form='primal')
  dual = ridge.fit_ridge(x, y, l2, form='dual')
  auto = ridge.RidgeSolver(x, y)
  np.testing.assert_allclose(primal, expected, rtol=1e-7, atol=1e-9)
  np.testing.assert_allclose(dual, expected, rtol=1e-7, atol=1e-9)
  # Also the textbook normal equations, solved by Cholesky.
  chol = scipy.linalg.solve(x.T @ x + l2 * np.eye(d), x.T @ y, assume_a='pos')
  np.testing.assert_allclose(auto.weights(l2), chol, rtol=1e-6, atol=1e-9)
  assert auto.form == ('primal' if d <= n else 'dual')


def test_one_solver_serves_a_grid_of_l2():
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(30, 50)), rng.normal(size=(30, 4))
  solver = ridge.RidgeSolver(x, y)
  for l2 in (1e-2, 1.0, 1e3):
    np.testing.assert_allclose(solver.weights(l2), _augmented_lstsq(x, y, l2),
                               rtol=1e-7, atol=1e-10)
  with pytest.raises(ValueError, match='positive'):
    solver.weights(0.0)


def test_standardize_uses_train_statistics_and_adds_bias():
  train = np.array([[1., 10., 5.], [3., 30., 5.]])
  test = np.array([[2., 50., 7.]])
  tr, te = ridge.standardize(train, test)
  np.testing.assert_allclose(tr, [[-1, -1, 0, 1], [1, 1, 0, 1]])
  np.testing.assert_allclose(te, [[0, 3, 2, 1]])  # Constant column: std 1.


def test_targets_are_plus_minus_one():
  np.testing.assert_array_equal(ridge.one_vs_rest_targets(np.array([2, 0]), 3),
                                [[-1, -1, 1], [1, -1, -1]])
  with pytest.raises(ValueError, match=r'\[0, 3\)'):
    ridge.one_vs_rest_targets(np.array([3]), 3)


def test_probe_separates_gaussian_classes():
  rng = np.random.default_rng(1)
  centres = rng.normal(size=(5, 20)) * 3
  labels = np.repeat(np.arange(5), 40)
  x = centres[labels] + rng.normal(size=(200, 20))
  probe = ridge.LinearProbe(x[::2], labels[::2], 5)
  accs = probe.accuracy(x[1::2], labels[1::2], [1.0, 1e9])
  assert accs.shape == (2,)
  assert accs[0] > 0.95
  # Standardising the evaluation set with the training statistics: the same
  # as standardize() + the solver by hand.
  train, test = ridge.standardize(x[::2], x[1::2], bias=ridge.BIAS_FEATURE,
                                  std_eps=ridge.STD_EPS)
  w = ridge.fit_ridge(train, ridge.one_vs_rest_targets(labels[::2], 5), 1.0)
  assert accs[0] == np.mean((test @ w).argmax(1) == labels[1::2])


def test_sample_per_class_is_balanced_and_excludes():
  labels = np.array([0, 1, 2] * 6)
  rng = np.random.default_rng(0)
  idx = fewshot.sample_per_class(labels, 3, 2, rng)
  assert np.bincount(labels[idx]).tolist() == [2, 2, 2]
  rest = fewshot.sample_per_class(labels, 3, 10, rng, exclude=idx, strict=False)
  assert not set(idx) & set(rest) and len(rest) == 12
  with pytest.raises(ValueError, match='class 0 has 6 training examples'):
    fewshot.sample_per_class(labels, 3, 7, rng)


def test_probe_scores_selects_l2_on_holdout():
  rng = np.random.default_rng(2)
  centres = rng.normal(size=(4, 16)) * 2
  tr_labels = np.repeat(np.arange(4), 30)
  te_labels = np.repeat(np.arange(4), 50)
  train = fewshot.Features(centres[tr_labels] + rng.normal(size=(120, 16)),
                           tr_labels, 4)
  test = fewshot.Features(centres[te_labels] + rng.normal(size=(200, 16)),
                          te_labels, 4)
  scores = fewshot.probe_scores(train, test, 4, (1, 5), seeds=4,
                                tuned_l2_grid=(1e-3, 1.0, 1e2), dataset='blobs')
  assert set(scores) == {f'blobs_{k}shot{s}' for k in (1, 5) for s in (
      '', '_std', '_tuned_l2', '_tuned_l2_std', '_tuned_l2_reg')}
  assert scores['blobs_5shot_tuned_l2'] > 0.8
  assert scores['blobs_1shot_tuned_l2_reg'] in (1e-3, 1.0, 1e2) or (
      1e-3 <= scores['blobs_1shot_tuned_l2_reg'] <= 1e2)
  assert scores['blobs_5shot'] > 0.8 and scores['blobs_5shot_std'] >= 0
  assert scores['blobs_1shot'] > 0.4  # Chance is 0.25.
  # Seeds give different draws, so the spread over seeds is not zero.
  assert scores['blobs_1shot_std'] > 0


def test_shots_are_nested_and_short_classes_give_what_they_have():
  labels = np.array([0] * 3 + [1] * 30)
  orders = fewshot.shot_orders(labels, 2, seed=0)
  assert len(orders[0]) == 3 and len(orders[1]) == 30
  assert orders[1][:5].tolist() == list(orders[1][:10][:5])
  train = fewshot.Features(np.random.default_rng(0).normal(size=(33, 4)),
                           labels, 2)
  scores = fewshot.probe_scores(train, train, 2, (1, 5, 10), seeds=2)
  assert set(scores) == {f'{k}shot{s}' for k in (1, 5, 10) for s in ('', '_std')}
