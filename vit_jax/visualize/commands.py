"""The four sub-commands: compute a figure's numbers, write them as JSON and as a PNG.

Each `run_*` takes a loaded model (loading.Loaded) and an output directory
and returns the dictionary it wrote to `OUT/<command>.json`, next to
`OUT/<command>.png`.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np

from vit_jax import predict
from vit_jax.models.resnet import weight_standardize
from vit_jax.models.vit import sincos_2d_posemb
from vit_jax.visualize import capture, embeddings, plots, rollout
from vit_jax.visualize.loading import Loaded

#: The paper shows the first 28 principal components of the RGB filters.
NUM_COMPONENTS = 28
#: Figure 7 right averages over 128 images.
PAPER_DISTANCE_IMAGES = 128


def read_images(paths: Sequence[str], image_size: int) -> np.ndarray:
  """[N, S, S, 3] in [-1, 1], resized as predict does; one-line errors."""
  if not paths:
    raise ValueError('no images given; pass one or more image files.')
  return np.stack([predict.load_image(p, image_size) for p in paths])


def _png(out: str, command: str) -> str:
  os.makedirs(out, exist_ok=True)
  return os.path.join(out, f'{command}.png')


def _write(out: str, command: str, numbers: dict) -> dict:
  with open(os.path.join(out, f'{command}.json'), 'w', encoding='utf-8') as f:
    json.dump(numbers, f, indent=1)
  return numbers


def _grid(values: np.ndarray, grid: Sequence[int]) -> np.ndarray:
  return values.reshape(values.shape[:-1] + tuple(grid))


def run_attention(loaded: Loaded, paths: Sequence[str], out: str,
                  batch_size: int = 16) -> dict:
  """Attention rollout to the output, and the last layer's raw per-head maps."""
  images = read_images(paths, loaded.image_size)
  maps, shares, heads, predicted = [], [], [], []
  for weights, outputs in capture.attention_batches(
      loaded.model, loaded.params, images, batch_size):
    m, s = rollout.output_map(rollout.rollout(weights),
                              loaded.num_prefix_tokens)
    maps.append(m)
    shares.append(s)
    heads.append(rollout.last_layer_maps(weights[-1], loaded.num_prefix_tokens))
    if loaded.model.num_classes:
      predicted.extend(int(i) for i in np.argmax(outputs, axis=-1))
  maps = _grid(np.concatenate(maps), loaded.grid)
  heads = _grid(np.concatenate(heads), loaded.grid)
  shares = np.concatenate(shares)
  token = loaded.num_prefix_tokens > 0
  shown = ('rollout from the class token to the patches (its row of the '
           'rollout restricted to the patches, rescaled to sum to one)'
           if token else
           'gap classifier, no class token: the mean rollout row of all '
           'tokens (what the pooled output draws from each patch)')
  numbers = dict(
      loaded.description, what=shown,
      last_layer=('raw attention of the class token to the patches, per head'
                  if token else 'raw attention to each patch averaged over '
                  'all queries, per head'),
      images=[dict(path=p, rollout=maps[i].round(6).tolist(),
                   class_token_share=round(float(shares[i]), 6),
                   last_layer_heads=heads[i].round(6).tolist(),
                   **({'predicted_class': predicted[i]} if predicted else {}))
              for i, p in enumerate(paths)])
  titles = [os.path.basename(p) + (f' -> {predicted[i]}' if predicted else '')
            for i, p in enumerate(paths)]
  plots.attention_figure(
      _png(out, 'attention'), (images + 1) / 2, maps, heads, titles,
      'rollout (class token)' if token else 'rollout (mean of tokens)',
      'last layer, head',
      f'{loaded.name} at {loaded.image_size}px: attention rollout '
      f'({loaded.model.num_layers} layers) and last-layer heads')
  return _write(out, 'attention', numbers)


def position_embeddings(loaded: Loaded) -> np.ndarray:
  """The [h*w, D] patch position embeddings at the loaded resolution."""
  if loaded.model.posemb == 'sincos2d':
    return sincos_2d_posemb(*loaded.grid, loaded.model.hidden_size)[0]
  table = np.asarray(
      loaded.params['Transformer']['posembed_input']['pos_embedding'])
  return table[0, loaded.num_prefix_tokens:]


def run_posemb(loaded: Loaded, out: str) -> dict:
  """Cosine similarity of every patch position embedding with all others."""
  similarity = embeddings.cosine_similarity(position_embeddings(loaded))
  h, w = loaded.grid
  numbers = dict(
      loaded.description,
      what=('cosine similarity of each patch position embedding with all '
            'others; similarity[r][c] is the map of position (r, c)'),
      posemb=loaded.model.posemb,
      mean_similarity_by_distance=embeddings.similarity_by_distance(
          similarity, loaded.grid),
      similarity=similarity.reshape(h, w, h, w).round(6).tolist())
  plots.posemb_figure(_png(out, 'posemb'),
                      similarity.reshape(h, w, h, w),
                      f'{loaded.name}: position embedding similarity '
                      f'({loaded.model.posemb}, {h}x{w} grid)')
  return _write(out, 'posemb', numbers)


def filters_source(loaded: Loaded, layer: str) -> tuple[np.ndarray, str]:
  """(kernel [ph, pw, 3, filters], what it is) for `layer`; refuses non-RGB ones."""
  if layer == 'embedding':
    if loaded.hybrid:
      kernel = loaded.params['embedding']['kernel']
      raise ValueError(
          f'{loaded.name} is a hybrid: its patch embedding is a '
          f'{kernel.shape[0]}x{kernel.shape[1]} projection of '
          f'{kernel.shape[2]} ResNet feature channels, not RGB filters; pass '
          f'--layer conv_root for the stem\'s RGB filters instead.')
    return (np.asarray(loaded.params['embedding']['kernel']),
            'the patch-embedding filters (embedding/kernel)')
  if layer == 'conv_root':
    if not loaded.hybrid:
      raise ValueError(f'{loaded.name} has no ResNet stem (conv_root); use '
                       f'--layer embedding.')
    kernel = weight_standardize(loaded.params['conv_root']['kernel'],
                                axis=[0, 1, 2])  # as StdConv applies it
    return (np.asarray(kernel),
            'the ResNet stem\'s root convolution filters (conv_root/kernel, '
            'weight-standardised as applied), not the patch embedding')
  raise ValueError(f'unknown --layer {layer!r}; choose embedding or conv_root.')


def run_filters(loaded: Loaded, out: str, layer: str = 'embedding',
                num_components: int = NUM_COMPONENTS) -> dict:
  """Principal components of the RGB patch-embedding filters."""
  kernel, what = filters_source(loaded, layer)
  pca = embeddings.filter_components(kernel, num_components)
  numbers = dict(
      loaded.description, layer=layer,
      what=f'principal components of {what}, {pca.num_filters} filters of '
           f'shape {list(kernel.shape[:3])}, each component min-max scaled '
           f'to an RGB tile',
      explained_variance=pca.explained_variance.tolist(),
      explained_variance_ratio=pca.explained_variance_ratio.tolist(),
      total_variance=pca.total_variance,
      components=pca.components.round(6).tolist())
  plots.filters_figure(
      _png(out, 'filters'), pca.components,
      pca.explained_variance_ratio,
      f'{loaded.name}: first {len(pca.components)} principal components of '
      f'the {"patch-embedding" if layer == "embedding" else "stem root"} '
      f'filters (% of variance)')
  return _write(out, 'filters', numbers)


def run_distance(loaded: Loaded, paths: Sequence[str], out: str,
                 batch_size: int = 16) -> dict:
  """Mean attention distance in pixels per head and layer, over the images."""
  images = read_images(paths, loaded.image_size)
  total = np.zeros((loaded.model.num_layers, loaded.model.num_heads))
  for weights, _ in capture.attention_batches(
      loaded.model, loaded.params, images, batch_size):
    total += rollout.mean_attention_distance(
        weights, loaded.grid, loaded.stride,
        loaded.num_prefix_tokens).sum(axis=1)
  distances = total / len(images)
  uniform = float(rollout.token_distances(loaded.grid, loaded.stride).mean())
  numbers = dict(
      loaded.description, num_images=len(images),
      what=('mean attention distance in input pixels per layer (rows) and '
            'head (columns): patch queries to patch keys, weights '
            'renormalised over the patches, averaged over queries and images'),
      uniform_attention_pixels=round(uniform, 4),
      distance_pixels=distances.round(4).tolist())
  plots.distance_figure(
      _png(out, 'distance'), distances, loaded.image_size, uniform,
      f'{loaded.name} at {loaded.image_size}px, {len(images)} images')
  return _write(out, 'distance', numbers)


def distance_table(numbers: dict[str, Any]) -> str:
  """The printed table: one row per layer, one column per head (pixels)."""
  rows = numbers['distance_pixels']
  head = 'layer ' + ' '.join(f'{f"h{h + 1}":>7}' for h in range(len(rows[0])))
  lines = [head] + [f'{i + 1:>5} ' + ' '.join(f'{d:7.2f}' for d in row)
                    for i, row in enumerate(rows)]
  lines.append(f'uniform attention: {numbers["uniform_attention_pixels"]:.2f} '
               f'pixels')
  return '\n'.join(lines)
