"""Few-shot linear probes on frozen pre-logits features (paper §4.1).

For each dataset, the representation the head sees is computed for a pool of
training images and for the test split. For every shot count k and seed, k
examples per class are drawn from the pool, the features are standardised
(train statistics) with a bias feature appended, and a ridge regression to
{-1, 1}^K targets is solved in closed form (see `ridge`). Accuracy is the
argmax on the test split; the mean and the standard deviation over seeds are
reported as `{dataset}_{k}shot` and `{dataset}_{k}shot_std`.

The regularisation strength is fixed (one value in `l2_regs`) or chosen per
shot and seed from the grid `l2_regs` by the accuracy on a held-out part of
the training pool: up to `holdout_per_class` examples per class that are not
among the k shots.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from vit_jax.evaluate import ridge, sharded


@dataclasses.dataclass(frozen=True)
class Features:
  """Pre-logits features [n, d], integer labels [n] and the class count."""
  x: np.ndarray
  labels: np.ndarray
  num_classes: int


def sample_per_class(labels: np.ndarray, num_classes: int, k: int,
                     rng: np.random.Generator, exclude: Optional[np.ndarray] = None,
                     strict: bool = True, dataset: str = '') -> np.ndarray:
  """Indices of k random examples of every class (without replacement).

  `exclude` removes indices from the choice. With `strict`, a class with fewer
  than k candidates is an error; otherwise it contributes what it has.
  """
  candidates = np.ones(len(labels), bool)
  if exclude is not None:
    candidates[exclude] = False
  chosen = []
  for c in range(num_classes):
    pool = np.flatnonzero((labels == c) & candidates)
    if len(pool) < k and strict:
      raise ValueError(f'{dataset or "few-shot"}: class {c} has {len(pool)} '
                       f'training examples, fewer than {k} shots; use a larger '
                       f'train_split or fewer shots for this dataset.')
    chosen.append(rng.choice(pool, size=min(k, len(pool)), replace=False))
  return np.sort(np.concatenate(chosen)).astype(np.int64)


def probe_scores(train: Features, test: Features, num_classes: int,
                 shots: Sequence[int], seeds: int, l2_regs: Sequence[float],
                 holdout_per_class: int = 10, seed: int = 0, dataset: str = ''
                 ) -> dict[str, float]:
  """Few-shot accuracies: mean and std over `seeds` for each k in `shots`.

  With one value in `l2_regs` it is used as it is; with several, each shot and
  seed picks the one with the best accuracy on held-out training examples.
  The chosen strength (geometric mean over seeds) is reported as `_l2`.
  """
  if not l2_regs:
    raise ValueError('few-shot l2_regs is empty; give one value (fixed) or a '
                     'grid to choose from on held-out training examples.')
  if seeds < 1:
    raise ValueError(f'few-shot seeds must be at least 1, got {seeds}.')
  select = len(l2_regs) > 1
  out = {}
  for k in shots:
    accs, chosen = [], []
    for s in range(seeds):
      rng = np.random.default_rng([seed, k, s])
      idx = sample_per_class(train.labels, num_classes, k, rng, dataset=dataset)
      eval_sets = [(test.x, test.labels)]
      if select:
        held = sample_per_class(train.labels, num_classes, holdout_per_class,
                                rng, exclude=idx, strict=False)
        if not len(held):
          raise ValueError(f'{dataset or "few-shot"}: no training example is '
                           f'left for choosing l2 at {k} shots; use a larger '
                           f'train_split or a single fixed l2_regs value.')
        eval_sets.append((train.x[held], train.labels[held]))
      grid = ridge.probe_accuracy(train.x[idx], train.labels[idx], eval_sets,
                                  num_classes, l2_regs)
      best = int(np.argmax(grid[1])) if select else 0
      accs.append(grid[0, best])
      chosen.append(l2_regs[best])
    name = f'{dataset}_{k}shot' if dataset else f'{k}shot'
    out[name] = float(np.mean(accs))
    out[f'{name}_std'] = float(np.std(accs, ddof=1)) if seeds > 1 else 0.0
    out[f'{name}_l2'] = float(np.exp(np.mean(np.log(chosen))))
  return out


@dataclasses.dataclass
class FewShotDataset:
  """Where one dataset's training pool and test split come from.

  `train_batches` / `test_batches` return fresh iterables of host batches
  (`image`, `labels`, `mask`), preprocessed for evaluation (no augmentation).
  """
  name: str
  train_batches: Callable[[], Iterable[dict]]
  test_batches: Callable[[], Iterable[dict]]
  shots: Sequence[int] = (1, 5, 10, 25)


@dataclasses.dataclass
class FewShotEvaluator:
  """Few-shot linear-probe accuracies of `model`'s pre-logits on `datasets`."""
  name: str
  every: int
  model: Any
  mesh: Mesh
  datasets: Sequence[FewShotDataset]
  batch_size: int
  seeds: int = 3
  l2_regs: Sequence[float] = (2.0**10,)
  holdout_per_class: int = 10
  seed: int = 0

  def __post_init__(self):
    def features(params, batch):
      x = self.model.apply({'params': params}, batch['image'], train=False,
                           return_prelogits=True)
      return {'x': x.astype(jnp.float32),
              'labels': jnp.argmax(batch['labels'], axis=-1),
              'mask': batch['mask']}
    self._reducer = sharded.BatchReducer(
        features, self.mesh, self.batch_size, ('image', 'labels', 'mask'))

  def features(self, params: Any, batches: Iterable[dict]) -> Features:
    """Features of every valid (unpadded) example of a split."""
    widths = set()

    def note_width(batches):
      for batch in batches:
        widths.add(int(np.shape(batch['labels'])[-1]))
        yield batch
    out = self._reducer.concat(params, note_width(batches))
    valid = out['mask'] > 0
    return Features(out['x'][valid], out['labels'][valid].astype(np.int64),
                    max(widths))

  def run(self, params: Any) -> dict[str, float]:
    params = sharded.place_params(params, self.mesh)
    results = {}
    per_shot = {}
    for ds in self.datasets:
      train = self.features(params, ds.train_batches())
      test = self.features(params, ds.test_batches())
      if train.num_classes != test.num_classes:
        raise ValueError(f'{ds.name}: the train split has {train.num_classes} '
                         f'classes but the test split {test.num_classes}.')
      scores = probe_scores(train, test, train.num_classes, ds.shots, self.seeds,
                            self.l2_regs, self.holdout_per_class, self.seed,
                            ds.name)
      results.update(scores)
      for k in ds.shots:
        per_shot.setdefault(k, []).append(scores[f'{ds.name}_{k}shot'])
    if len(self.datasets) > 1:
      for k, accs in per_shot.items():
        if len(accs) == len(self.datasets):
          results[f'mean_{k}shot'] = float(np.mean(accs))
    return results
