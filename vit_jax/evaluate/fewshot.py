"""Few-shot linear probes on frozen pre-logits features (paper §4.1).

For each dataset, the representation the head sees is computed for a pool of
training images and for the test split. For every shot count k and seed, k
examples per class are drawn from the pool, the features are standardised
(train statistics) with a bias feature appended, and a ridge regression to
{-1, 1}^K targets is solved in closed form (see `ridge`). Accuracy is the
argmax on the test split; the mean and the standard deviation over seeds are
reported as `{dataset}_{k}shot` and `{dataset}_{k}shot_std`.

The regularisation strength is fixed (one value in `l2_regs`) or chosen per
shot and seed from the grid `l2_regs` by the accuracy on held-out training
examples: up to `holdout_per_class` examples per class that are not among the
k shots (or, for datasets whose training split is too small, drawn from a
separate `holdout_split`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Optional, Sequence

import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from vit_jax.evaluate import inputs, ridge, sharded


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
                 holdout_per_class: int = 10, seed: int = 0, dataset: str = '',
                 holdout: Optional[Features] = None) -> dict[str, float]:
  """Few-shot accuracies: mean and std over `seeds` for each k in `shots`.

  With one value in `l2_regs` it is used as it is; with several, each shot and
  seed picks the one with the best accuracy on held-out examples: from
  `holdout` when given, else training examples that are not among the shots.
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
      probe = ridge.LinearProbe(train.x[idx], train.labels[idx], num_classes)
      l2 = l2_regs[0]
      if select:
        pool = train if holdout is None else holdout
        held = sample_per_class(pool.labels, num_classes, holdout_per_class,
                                rng, exclude=idx if holdout is None else None,
                                strict=False)
        if not len(held):
          raise ValueError(f'{dataset or "few-shot"}: no training example is '
                           f'left for choosing l2 at {k} shots; use a larger '
                           f'train_split, a holdout_split or a single fixed '
                           f'l2_regs value.')
        held_accs = probe.accuracy(pool.x[held], pool.labels[held], l2_regs)
        l2 = l2_regs[int(np.argmax(held_accs))]
      accs.append(probe.accuracy(test.x, test.labels, [l2])[0])
      chosen.append(l2)
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
  holdout_batches: Optional[Callable[[], Iterable[dict]]] = None


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
      holdout = None
      if ds.holdout_batches is not None and len(self.l2_regs) > 1:
        holdout = self.features(params, ds.holdout_batches())
      scores = probe_scores(train, test, train.num_classes, ds.shots, self.seeds,
                            self.l2_regs, self.holdout_per_class, self.seed,
                            ds.name, holdout)
      results.update(scores)
      for k in ds.shots:
        per_shot.setdefault(k, []).append(scores[f'{ds.name}_{k}shot'])
    if len(self.datasets) > 1:
      for k, accs in per_shot.items():
        if len(accs) == len(self.datasets):
          results[f'mean_{k}shot'] = float(np.mean(accs))
    return results


# The customary few-shot datasets (TFDS names): the training split the shots
# are drawn from, the test split, the class count and the shot counts.
# imagenet2012 draws from its first 65,000 training images (about 65 per
# class, in TFDS's shuffled order) and reports 5 shots. oxford_flowers102
# has exactly 10 training images per class, so it stops at 10 shots and
# chooses l2 on its validation split. cars196 leaves out 25 shots: 25 shots
# plus held-out images need more images in every class than its training
# split guarantees. uc_merced has one split: 1,000 images to draw from and the
# other 1,100 to test on.
CUSTOMARY_DATASETS = {
    'imagenet2012': dict(data=dict(name='imagenet2012'),
                         train_split='train[:65000]', test_split='validation',
                         num_classes=1000, shots=(5,)),
    'cifar100': dict(data=dict(name='cifar100'), train_split='train',
                     test_split='test', num_classes=100, shots=(1, 5, 10, 25)),
    'oxford_iiit_pet': dict(data=dict(name='oxford_iiit_pet'),
                            train_split='train', test_split='test',
                            num_classes=37, shots=(1, 5, 10, 25)),
    'oxford_flowers102': dict(data=dict(name='oxford_flowers102'),
                              train_split='train', test_split='test',
                              holdout_split='validation', num_classes=102,
                              shots=(1, 5, 10)),
    'caltech101': dict(data=dict(name='caltech101'), train_split='train',
                       test_split='test', num_classes=102,
                       shots=(1, 5, 10, 25)),
    'dtd': dict(data=dict(name='dtd'), train_split='train', test_split='test',
                num_classes=47, shots=(1, 5, 10, 25)),
    'cars196': dict(data=dict(name='cars196'), train_split='train',
                    test_split='test', num_classes=196, shots=(1, 5, 10)),
    'uc_merced': dict(data=dict(name='uc_merced'), train_split='train[:1000]',
                      test_split='train[1000:]', num_classes=21,
                      shots=(1, 5, 10, 25)),
}
#: Regularisation grid, chosen on held-out training examples by default.
DEFAULT_L2_REGS = tuple(2.0**i for i in range(-6, 20, 2))


def from_config(name: str, config: Any, *, model: Any, mesh: Mesh,
                context: inputs.EvalContext) -> FewShotEvaluator:
  """Config keys: datasets ({name: {data, train_split, test_split,
  holdout_split, num_classes, shots, pp}}; default CUSTOMARY_DATASETS),
  seeds (3), l2_regs (DEFAULT_L2_REGS; one value = fixed), holdout_per_class
  (10), batch_size, every."""
  size = inputs.image_size_of(context.image_size)
  batch_size = int(inputs.get(config, 'batch_size', inputs.DEFAULT_BATCH_SIZE))
  specs = inputs.as_dict(inputs.get(config, 'datasets', CUSTOMARY_DATASETS))
  if not specs:
    raise ValueError(f'evaluator {name!r} has no datasets; set '
                     f'evals.{name}.datasets or leave it out for the customary '
                     f'set ({", ".join(CUSTOMARY_DATASETS)}).')
  datasets, problems = [], []
  for ds_name, spec in specs.items():
    try:
      datasets.append(_dataset(f'{name}/{ds_name}', ds_name, spec, size,
                               batch_size, context))
    except (ValueError, FileNotFoundError) as e:
      problems.append(str(e))
  if problems:  # Every unusable dataset at once, not one per attempt.
    raise ValueError(' | '.join(problems))
  return FewShotEvaluator(
      name=name, every=int(inputs.get(config, 'every', 0)), model=model,
      mesh=mesh, datasets=datasets, batch_size=batch_size,
      seeds=int(inputs.get(config, 'seeds', 3)),
      l2_regs=tuple(float(v) for v in inputs.get(config, 'l2_regs',
                                                 DEFAULT_L2_REGS)),
      holdout_per_class=int(inputs.get(config, 'holdout_per_class', 10)),
      seed=int(inputs.get(config, 'seed', 0)))


def _dataset(where: str, ds_name: str, spec: Any, size: int, batch_size: int,
             context: inputs.EvalContext) -> FewShotDataset:
  data = inputs.get(spec, 'data', {'name': ds_name})
  if isinstance(data, str):
    data = {'name': data}
  pp = inputs.get(spec, 'pp')
  if not pp:
    classes = inputs.get(spec, 'num_classes')
    if not classes:
      raise ValueError(f'{where}: give num_classes (or a pp string).')
    pp = f'vit_eval({size}, {classes})'

  def pipeline(split_key, default):
    split = inputs.get(spec, split_key, default)
    if split is None:
      return None
    return inputs.reiterable(inputs.eval_pipeline(where, data, split, pp,
                                                  batch_size, context))
  return FewShotDataset(
      name=ds_name, train_batches=pipeline('train_split', 'train'),
      test_batches=pipeline('test_split', 'test'),
      holdout_batches=pipeline('holdout_split', None),
      shots=tuple(int(k) for k in inputs.get(spec, 'shots', (1, 5, 10, 25))))
