"""Position-embedding similarity and principal components of the patch filters.

The paper's Figure 7 centre: the cosine similarity of each patch position's
embedding with every other one (class token left out), which shows the 2-D
grid a model has learned from 1-D positions. Figure 7 left: the principal
components of the patch-embedding filters, each filter (a patch_h x patch_w
x channels kernel of `embedding/kernel`) taken as one sample.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


def cosine_similarity(posemb: np.ndarray) -> np.ndarray:
  """[M, D] embeddings -> [M, M] cosine similarities (float64)."""
  x = np.asarray(posemb, np.float64)
  if x.ndim != 2:
    raise ValueError(f'position embeddings must be [positions, width], got '
                     f'shape {x.shape}.')
  norm = np.linalg.norm(x, axis=-1, keepdims=True)
  if np.any(norm == 0):
    raise ValueError('a position embedding is all zeros; its cosine '
                     'similarity is undefined.')
  x = x / norm
  return x @ x.T


def similarity_by_distance(similarity: np.ndarray, grid: Sequence[int]
                           ) -> dict[str, float]:
  """Mean similarity of pairs of distinct positions by their grid distance.

  Keys are the Euclidean distances in tokens, rounded to 3 decimals, in
  increasing order: a learned 2-D structure makes the values fall.
  """
  h, w = grid
  ys, xs = np.mgrid[:h, :w]
  ys, xs = ys.ravel(), xs.ravel()
  dist = np.round(np.hypot(ys[:, None] - ys[None], xs[:, None] - xs[None]), 3)
  out = {}
  for d in np.unique(dist[dist > 0]):
    out[f'{d:g}'] = float(similarity[dist == d].mean())
  return out


@dataclasses.dataclass(frozen=True)
class FilterComponents:
  """Principal components of a set of filters (one filter = one sample)."""
  components: np.ndarray          # [k, patch_h, patch_w, channels], unit norm
  explained_variance: np.ndarray  # [k], variance along each component
  explained_variance_ratio: np.ndarray  # [k], of the total variance
  total_variance: float           # sum of the per-dimension variances
  num_filters: int


def filter_components(kernel: np.ndarray, num_components: int
                      ) -> FilterComponents:
  """PCA of a conv kernel [patch_h, patch_w, channels, filters] over its filters.

  The filters are centred on their mean; the components are the right
  singular vectors of the centred [filters, patch_h*patch_w*channels]
  matrix, the variances its squared singular values / (filters - 1).
  """
  kernel = np.asarray(kernel, np.float64)
  if kernel.ndim != 4:
    raise ValueError(f'a patch-embedding kernel is [patch_h, patch_w, '
                     f'channels, filters], got shape {kernel.shape}.')
  ph, pw, c, n = kernel.shape
  if n < 2:
    raise ValueError(f'{n} filter(s): principal components need at least 2.')
  x = kernel.reshape(ph * pw * c, n).T
  x = x - x.mean(axis=0)
  _, s, vt = np.linalg.svd(x, full_matrices=False)
  k = min(num_components, len(s))
  variance = s**2 / (n - 1)
  return FilterComponents(
      components=vt[:k].reshape(k, ph, pw, c),
      explained_variance=variance[:k],
      explained_variance_ratio=variance[:k] / variance.sum(),
      total_variance=float(variance.sum()),
      num_filters=n)
