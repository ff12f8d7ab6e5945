"""Closed-form regularised least squares: the few-shot linear probe's solver.

The paper (§4.1) scores a frozen representation by solving a ridge
regression from the pre-logits features of k examples per class to
{-1, 1}^K targets. With n examples and d features (after standardisation and
a bias feature), the weights are

  primal:  W = (X^T X + l2 I_d)^-1 X^T Y        (a d x d system)
  dual:    W = X^T (X X^T + l2 I_n)^-1 Y        (an n x n system)

which are the same matrix; we solve the smaller system. The Gram matrix is
diagonalised once, so a grid of regularisation strengths costs one
eigendecomposition and a few matrix products. Everything is float64 numpy on
the host: the systems are small (n <= 25 x classes, d <= a few thousand).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def standardize(train: np.ndarray, *others: np.ndarray, eps: float = 1e-8
                ) -> tuple[np.ndarray, ...]:
  """Centres and scales features by the mean and std of `train` (per column).

  Returns float64 copies of `train` and of each of `others`, each with a
  constant bias feature (a column of ones) appended.
  """
  train = np.asarray(train, np.float64)
  mean = train.mean(axis=0)
  std = train.std(axis=0)
  std = np.where(std > eps, std, 1.0)  # Constant features stay at zero.

  def prepare(x):
    x = (np.asarray(x, np.float64) - mean) / std
    return np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)

  return tuple(prepare(x) for x in (train, *others))


def one_vs_rest_targets(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """Integer labels [n] -> targets [n, num_classes] in {-1, 1}."""
  labels = np.asarray(labels)
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f'labels must lie in [0, {num_classes}), got values from '
                     f'{labels.min()} to {labels.max()}.')
  return 2.0 * np.eye(num_classes)[labels] - 1.0


class RidgeSolver:
  """Solves min_W |X W - Y|^2 + l2 |W|^2 for any number of l2 values.

  `x` is [n, d] (include the bias feature yourself, see `standardize`),
  `y` is [n, K]. `form` is 'primal', 'dual' or 'auto' (the smaller system).
  """

  def __init__(self, x: np.ndarray, y: np.ndarray, form: str = 'auto'):
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
      raise ValueError(f'ridge regression wants x [n, d] and y [n, K] with the '
                       f'same n, got shapes {x.shape} and {y.shape}.')
    if form not in ('auto', 'primal', 'dual'):
      raise ValueError(f"form must be 'auto', 'primal' or 'dual', got {form!r}.")
    n, d = x.shape
    self.form = ('primal' if d <= n else 'dual') if form == 'auto' else form
    self._x = x
    if self.form == 'primal':
      gram = x.T @ x  # [d, d]
      self._rhs_base = x.T @ y  # [d, K]
    else:
      gram = x @ x.T  # [n, n]
      self._rhs_base = y  # [n, K]
    # Symmetric positive semi-definite: gram = V diag(s) V^T.
    self._eigvals, self._eigvecs = np.linalg.eigh(gram)
    self._eigvals = np.maximum(self._eigvals, 0.0)
    self._projected = self._eigvecs.T @ self._rhs_base

  def weights(self, l2_reg: float) -> np.ndarray:
    """The weights W [d, K] for regularisation strength `l2_reg` > 0."""
    if not l2_reg > 0:
      raise ValueError(f'l2_reg must be positive, got {l2_reg}.')
    solved = self._eigvecs @ (self._projected / (self._eigvals + l2_reg)[:, None])
    return solved if self.form == 'primal' else self._x.T @ solved


def fit_ridge(x: np.ndarray, y: np.ndarray, l2_reg: float, form: str = 'auto'
              ) -> np.ndarray:
  """One ridge solution W [d, K]; see `RidgeSolver`."""
  return RidgeSolver(x, y, form).weights(l2_reg)


def probe_accuracy(train_x: np.ndarray, train_labels: np.ndarray,
                   eval_sets: Sequence[tuple[np.ndarray, np.ndarray]],
                   num_classes: int, l2_regs: Sequence[float]
                   ) -> np.ndarray:
  """Top-1 accuracy of the linear probe for every l2 in `l2_regs`.

  Standardises with the statistics of `train_x`, appends the bias feature,
  regresses to {-1, 1}^K targets and predicts the argmax. Returns an array
  [len(eval_sets), len(l2_regs)] of accuracies.
  """
  train, *evals = standardize(train_x, *(x for x, _ in eval_sets))
  solver = RidgeSolver(train, one_vs_rest_targets(train_labels, num_classes))
  out = np.zeros((len(eval_sets), len(l2_regs)))
  for j, l2 in enumerate(l2_regs):
    w = solver.weights(l2)
    for i, (x, (_, labels)) in enumerate(zip(evals, eval_sets)):
      if len(labels):
        out[i, j] = np.mean(np.argmax(x @ w, axis=1) == np.asarray(labels))
  return out
