"""The four pictures (matplotlib, Agg backend): attention maps, posemb grid, filters, distances.

Every function takes plain NumPy arrays and writes one PNG; none computes
anything beyond scaling values for display.
"""

from __future__ import annotations

from typing import Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import scipy.ndimage  # pylint: disable=g-import-not-at-top,wrong-import-position

_DPI = 100


def _save(fig, path: str) -> None:
  fig.savefig(path, dpi=_DPI, bbox_inches='tight')
  plt.close(fig)


def _upsample(grid_map: np.ndarray, size: int) -> np.ndarray:
  """A [h, w] token map bilinearly resized to [size, size] pixels."""
  h, w = grid_map.shape
  return scipy.ndimage.zoom(grid_map, (size / h, size / w), order=1,
                            mode='nearest', grid_mode=True)


def attention_figure(path: str, images: np.ndarray, maps: np.ndarray,
                     head_maps: np.ndarray, titles: Sequence[str],
                     map_label: str, heads_label: str, suptitle: str) -> None:
  """One row per image: the image, the rollout overlay, the last layer's heads.

  `images` [B, S, S, 3] in [0, 1]; `maps` [B, h, w]; `head_maps` [B, heads, h, w].
  """
  b, heads = len(images), head_maps.shape[1]
  cols = 2 + heads
  fig, axes = plt.subplots(b, cols, figsize=(1.6 * cols, 1.75 * b + 0.5),
                           squeeze=False)
  size = images.shape[1]
  for i in range(b):
    axes[i, 0].imshow(images[i], interpolation='nearest')
    axes[i, 0].set_title(titles[i], fontsize=7)
    m = _upsample(maps[i], size)
    axes[i, 1].imshow(images[i].mean(-1), cmap='gray', interpolation='nearest')
    axes[i, 1].imshow(m / m.max(), cmap='inferno', alpha=0.6, vmin=0, vmax=1,
                      interpolation='nearest')
    for h in range(heads):
      axes[i, 2 + h].imshow(head_maps[i, h], cmap='viridis',
                            interpolation='nearest')
    if i == 0:
      axes[i, 1].set_title(map_label, fontsize=7)
      for h in range(heads):
        axes[i, 2 + h].set_title(f'{heads_label} {h + 1}', fontsize=7)
  for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
  fig.suptitle(suptitle, fontsize=8)
  _save(fig, path)


def posemb_figure(path: str, similarity: np.ndarray, suptitle: str) -> None:
  """Figure 7 centre: panel (r, c) = similarity of position (r, c) to all."""
  h, w = similarity.shape[:2]
  fig, axes = plt.subplots(h, w, figsize=(0.5 * w + 1.2, 0.5 * h + 0.6),
                           squeeze=False, gridspec_kw=dict(wspace=0.06,
                                                           hspace=0.06))
  for r in range(h):
    for c in range(w):
      image = axes[r, c].imshow(similarity[r, c], cmap='viridis', vmin=-1,
                                vmax=1, interpolation='nearest')
      axes[r, c].set_xticks([])
      axes[r, c].set_yticks([])
    axes[r, 0].set_ylabel(str(r + 1), fontsize=6, rotation=0, labelpad=6)
  for c in range(w):
    axes[h - 1, c].set_xlabel(str(c + 1), fontsize=6)
  fig.supylabel('input patch row', fontsize=7)
  fig.supxlabel('input patch column', fontsize=7)
  fig.colorbar(image, ax=axes, shrink=0.6, label='cosine similarity')
  fig.suptitle(suptitle, fontsize=8)
  _save(fig, path)


def filters_figure(path: str, components: np.ndarray, ratio: np.ndarray,
                   suptitle: str) -> None:
  """Figure 7 left: each component [k, ph, pw, 3] as an RGB tile (min-max scaled)."""
  k = len(components)
  cols = min(7, k)
  rows = -(-k // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(1.1 * cols, 1.25 * rows + 0.4),
                           squeeze=False)
  for ax in axes.ravel():
    ax.axis('off')
  for i, (comp, r) in enumerate(zip(components, ratio)):
    lo, hi = comp.min(), comp.max()
    tile = (comp - lo) / (hi - lo) if hi > lo else np.zeros_like(comp)
    ax = axes[i // cols, i % cols]
    ax.imshow(tile, interpolation='nearest')
    ax.set_title(f'{i + 1}: {100 * r:.1f}%', fontsize=6)
  fig.suptitle(suptitle, fontsize=8)
  _save(fig, path)


def distance_figure(path: str, distances: np.ndarray, image_size: int,
                    uniform: float, suptitle: str) -> None:
  """Figure 7 right: mean attention distance [layers, heads] against depth.

  `uniform` (a dashed line) is the distance of attention spread evenly.
  """
  layers, heads = distances.shape
  fig, ax = plt.subplots(figsize=(4.2, 3.2))
  for h in range(heads):
    ax.scatter(np.arange(1, layers + 1), distances[:, h], s=12,
               label=f'head {h + 1}')
  ax.axhline(uniform, color='gray', linestyle='--', linewidth=0.8,
             label='uniform attention')
  ax.set_xlabel('network depth (layer)')
  ax.set_ylabel('mean attention distance (pixels)')
  ax.set_xticks(np.arange(1, layers + 1))
  ax.set_ylim(0, image_size)
  if heads <= 16:
    ax.legend(fontsize=6, loc='lower right', ncol=2)
  ax.set_title(suptitle, fontsize=8)
  _save(fig, path)
