"""Attention rollout and mean attention distance, from captured attention weights.

Attention rollout (Abnar & Zuidema, 2020), as the paper's Figure 6 uses it:
average the heads of each layer, add the identity for the residual
connection, renormalise every row, and multiply the layers together,
`R = A~_L ... A~_1`. Row i of R says how much each input token flows into
token i at the output. The map of a class-token model is the class token's
row over the patches; a `gap` model pools the mean of all tokens, so its map
is the mean of all rows. Both are rescaled to sum to one over the patches.

Mean attention distance (the paper's Figure 7 right): for every patch query,
the distance in input pixels to each patch key, weighted by the attention
weight, averaged over the queries (and images). The class token is left out
as query and key and each query's weights on the patches are renormalised,
so a head that attends only to itself has distance 0 and one that attends
uniformly has the mean pairwise distance of the token grid.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def rollout(attention: np.ndarray) -> np.ndarray:
  """Attention rollout of weights [layers, ..., heads, N, N] -> [..., N, N].

  Every output row sums to one (a product of row-stochastic matrices).
  """
  a = np.asarray(attention, np.float64)
  if a.ndim < 4 or a.shape[-1] != a.shape[-2]:
    raise ValueError(f'attention weights must be [layers, ..., heads, N, N], '
                     f'got shape {a.shape}.')
  a = a.mean(axis=-3)  # heads
  a = a + np.eye(a.shape[-1])  # the residual connection
  a = a / a.sum(axis=-1, keepdims=True)
  joint = a[0]
  for layer in a[1:]:
    joint = layer @ joint
  return joint


def output_map(joint: np.ndarray, num_prefix_tokens: int
               ) -> tuple[np.ndarray, np.ndarray]:
  """(map over the patches summing to one [..., M], the class token's share [...]).

  With a class token (`num_prefix_tokens=1`) the map is the class token's
  rollout row restricted to the patches; the share is what that row keeps on
  the class token itself (the map is rescaled by 1 - share). Without one
  (`gap`), the map is the mean of all rows and the share is 0.
  """
  joint = np.asarray(joint, np.float64)
  if num_prefix_tokens:
    row = joint[..., 0, :]
    share = row[..., :num_prefix_tokens].sum(axis=-1)
  else:
    row = joint.mean(axis=-2)
    share = np.zeros(row.shape[:-1])
  patches = row[..., num_prefix_tokens:]
  total = patches.sum(axis=-1, keepdims=True)
  if np.any(total <= 0):
    raise ValueError('the output token attends to no patch at all (its rollout '
                     'row is zero on every patch), so there is no map to show.')
  return patches / total, share


def last_layer_maps(attention_last: np.ndarray, num_prefix_tokens: int
                    ) -> np.ndarray:
  """Raw per-head maps of one layer's weights [..., heads, N, N] -> [..., heads, M].

  The class token's attention to the patches (not rescaled), or, without a
  class token, the mean over all queries of their attention to the patches.
  """
  a = np.asarray(attention_last, np.float64)
  row = a[..., 0, :] if num_prefix_tokens else a.mean(axis=-2)
  return row[..., num_prefix_tokens:]


def token_distances(grid: Sequence[int], stride: int) -> np.ndarray:
  """Pairwise Euclidean distances in pixels [h*w, h*w] between token centres."""
  h, w = grid
  ys, xs = np.mgrid[:h, :w]
  centres = np.stack([ys.ravel(), xs.ravel()], axis=-1).astype(np.float64)
  diff = centres[:, None, :] - centres[None, :, :]
  return np.sqrt((diff**2).sum(-1)) * stride


def mean_attention_distance(attention: np.ndarray, grid: Sequence[int],
                            stride: int, num_prefix_tokens: int) -> np.ndarray:
  """Mean attention distance in pixels, weights [..., heads, N, N] -> [..., heads].

  Averaged over the patch queries; see the module doc for the conventions.
  """
  a = np.asarray(attention, np.float64)
  h, w = grid
  if a.shape[-1] != num_prefix_tokens + h * w:
    raise ValueError(f'attention over {a.shape[-1]} tokens does not match a '
                     f'{h}x{w} grid with {num_prefix_tokens} prefix token(s).')
  a = a[..., num_prefix_tokens:, num_prefix_tokens:]
  a = a / a.sum(axis=-1, keepdims=True)
  per_query = np.einsum('...qk,qk->...q', a, token_distances(grid, stride))
  return per_query.mean(axis=-1)
