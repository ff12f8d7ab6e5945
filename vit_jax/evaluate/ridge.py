"""Closed-form regularised least squares: the few-shot linear probe's solver.

The paper (§4.1) scores a frozen representation by solving a ridge
regression from the pre-logits features of k examples per class to
{-1, 1}^K targets. With n examples and d features (after standardisation and
a bias feature), the weights are

  primal:  W = (X^T X + l2 I_d)^-1 X^T Y        (a d x d system)
  dual:    W = X^T (X X^T + l2 I_n)^-1 Y        (an n x n system)

which are the same matrix; we solve the smaller system. The few-shot probe
(`LinearProbe`) standardises like big_vision's few-shot evaluator: features
are divided by their train std + 1e-5, and the bias feature is the constant
100, so that the bias is almost unregularised even at l2 = 2^10. The Gram matrix is
diagonalised once, so a grid of regularisation strengths costs one
eigendecomposition and a few matrix products. Everything is float64 numpy on
the host: the systems are small (n <= 25 x classes, d <= a few thousand).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


#: The few-shot probe's bias feature and std offset (big_vision's values).
BIAS_FEATURE = 100.0
STD_EPS = 1e-5


def _moments(train: np.ndarray, std_eps: float | None = None):
  """Per-column mean and std of `train`.

  `std_eps` None: constant columns get std 1; else std + std_eps everywhere.
  """
  std = train.std(axis=0)
  if std_eps is None:
    return train.mean(axis=0), np.where(std > 1e-8, std, 1.0)
  return train.mean(axis=0), std + std_eps


def _with_bias(x: np.ndarray, mean: np.ndarray, std: np.ndarray,
               bias: float = 1.0) -> np.ndarray:
  x = (np.asarray(x, np.float64) - mean) / std
  return np.concatenate([x, np.full((x.shape[0], 1), bias)], axis=1)


def standardize(train: np.ndarray, *others: np.ndarray, bias: float = 1.0,
                std_eps: float | None = None) -> tuple[np.ndarray, ...]:
  """Centres and scales features by the mean and std of `train` (per column).

  Returns float64 copies of `train` and of each of `others`, each with a
  constant bias feature (`bias`) appended. `std_eps`: see `_moments`.
  """
  train = np.asarray(train, np.float64)
  mean, std = _moments(train, std_eps)
  return tuple(_with_bias(x, mean, std, bias) for x in (train, *others))


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


class LinearProbe:
  """The paper's few-shot probe fitted on `train_x` [n, d], `train_labels` [n].

  Features are standardised with the statistics of `train_x` (std +
  `STD_EPS`) and get the bias feature `BIAS_FEATURE`; the regression targets
  are {-1, 1}^K; prediction is the argmax. One eigendecomposition serves
  every l2 strength.
  """

  def __init__(self, train_x: np.ndarray, train_labels: np.ndarray,
               num_classes: int):
    train_x = np.asarray(train_x, np.float64)
    self._moments = _moments(train_x, STD_EPS)
    self._solver = RidgeSolver(
        _with_bias(train_x, *self._moments, BIAS_FEATURE),
        one_vs_rest_targets(train_labels, num_classes))

  def accuracy(self, x: np.ndarray, labels: np.ndarray,
               l2_regs: Sequence[float]) -> np.ndarray:
    """Top-1 accuracy on (x, labels) for every l2 in `l2_regs`."""
    if not len(labels):
      return np.zeros(len(l2_regs))
    feats = _with_bias(x, *self._moments, BIAS_FEATURE)
    labels = np.asarray(labels)
    return np.array([np.mean(np.argmax(feats @ self._solver.weights(l2), axis=1)
                             == labels) for l2 in l2_regs])
