"""Few-shot linear probes on frozen pre-logits features (paper §4.1).

For each dataset, the representation the head sees is computed for a pool of
training images and for the test split. For every seed, the training
examples of each class are put in a random order (`numpy.random.default_rng(
seed)`, one permutation per class, in class order), and the k shots of a
class are the first k of its order, so the shot sets are nested. The features
are standardised (train mean, train std + 1e-5) with a bias feature of 100,
and a ridge regression to {-1, 1}^K targets is solved in closed form (see
`ridge`). Accuracy is the argmax on the test split; the mean and the
standard deviation over seeds are reported as `{dataset}_{k}shot` and
`{dataset}_{k}shot_std`, and the mean over datasets as `mean_{k}shot`:
over big_vision's six (`MEAN_DATASETS`) with the default set, never over
ImageNet, which is reported beside the mean (`BESIDE_MEAN`), as big_vision
shows it and the paper reports it; `mean_num_datasets` counts the datasets
averaged and the evaluator's `protocol` names them.

Default protocol: big_vision's few-shot evaluator (`configs/
common_fewshot.py`, `evaluators/fewshot_lsr.py`), the one behind the few-shot
numbers of the ViT follow-up papers: a fixed l2 of 2^10, preprocessing
`decode|resize(256)|central_crop(224)|value_range(-1, 1)` (the ratio 8/7 at
other sizes), the datasets and splits of `DATASETS`, shots 1, 5, 10 and 25, 3
seeds. A dataset that is not prepared stops the evaluator when it is built,
before anything runs, in one line that names every such dataset and the
fix (prepare them, or `skip_missing=True` to run the prepared ones). The
paper's own few-shot figures (Figs. 3-6, "linear 5-shot
ImageNet") came from Google's internal code and are close to, not exactly,
this protocol. A class with fewer than k training examples contributes what
it has, as in big_vision.

Option `tuned_l2=True`: l2 is also chosen per shot and seed from the grid
`l2_grid` by the accuracy on held-out training examples (up to
`holdout_per_class` per class that are not among the k shots, or a separate
`holdout_split`), reported beside the default under its own names
`{dataset}_{k}shot_tuned_l2`, `..._tuned_l2_std` and `..._tuned_l2_reg` (the
chosen strength, geometric mean over seeds). Choosing l2 per shot inflates
1-shot numbers: they are not comparable with the fixed-l2 ones.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any, Callable, Iterable, Optional, Sequence

import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from vit_jax.evaluate import inputs, ridge, sharded


#: big_vision's fixed l2 regularisation (configs/common_fewshot.py).
DEFAULT_L2_REG = 2.0**10
#: The grid that tuned_l2 chooses from on held-out training examples.
DEFAULT_L2_GRID = tuple(2.0**i for i in range(-6, 20, 2))


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


def shot_orders(labels: np.ndarray, num_classes: int,
                seed: int) -> list[np.ndarray]:
  """Each class's training indices in a random order of `seed`.

  The k shots of a class are the first k of its order (nested over k).
  """
  rng = np.random.default_rng(seed)
  return [rng.permutation(np.flatnonzero(labels == c))
          for c in range(num_classes)]


def _shots(orders: Sequence[np.ndarray], k: int) -> np.ndarray:
  return np.sort(np.concatenate([o[:k] for o in orders])).astype(np.int64)


def _suffix_names(dataset: str, k: int) -> str:
  return f'{dataset}_{k}shot' if dataset else f'{k}shot'


def probe_scores(train: Features, test: Features, num_classes: int,
                 shots: Sequence[int], seeds: int,
                 l2_reg: float = DEFAULT_L2_REG,
                 tuned_l2_grid: Optional[Sequence[float]] = None,
                 holdout_per_class: int = 10, seed: int = 0, dataset: str = '',
                 holdout: Optional[Features] = None) -> dict[str, float]:
  """Few-shot accuracies: mean and std over `seeds` for each k in `shots`.

  Fixed `l2_reg` (the default protocol, see the module doc); with
  `tuned_l2_grid`, also the accuracies with l2 chosen per shot and seed on
  held-out examples (from `holdout` when given, else training examples that
  are not among the shots), under the `_tuned_l2` names.
  """
  if not l2_reg > 0:
    raise ValueError(f'few-shot l2_reg must be positive, got {l2_reg}.')
  if tuned_l2_grid is not None and not len(tuned_l2_grid):
    raise ValueError('few-shot l2_grid is empty; give the strengths that '
                     'tuned_l2 chooses from.')
  if seeds < 1:
    raise ValueError(f'few-shot seeds must be at least 1, got {seeds}.')
  fixed = {k: [] for k in shots}
  tuned = {k: [] for k in shots}
  chosen = {k: [] for k in shots}
  for s in range(seeds):
    orders = shot_orders(train.labels, num_classes, seed + s)
    for k in shots:
      idx = _shots(orders, k)
      probe = ridge.LinearProbe(train.x[idx], train.labels[idx], num_classes)
      fixed[k].append(probe.accuracy(test.x, test.labels, [l2_reg])[0])
      if tuned_l2_grid is None:
        continue
      pool = train if holdout is None else holdout
      rng = np.random.default_rng([seed, k, s])
      held = sample_per_class(pool.labels, num_classes, holdout_per_class,
                              rng, exclude=idx if holdout is None else None,
                              strict=False)
      if not len(held):
        raise ValueError(f'{dataset or "few-shot"}: no training example is '
                         f'left for choosing l2 at {k} shots; use a larger '
                         f'train_split, a holdout_split or tuned_l2=False.')
      held_accs = probe.accuracy(pool.x[held], pool.labels[held],
                                 tuned_l2_grid)
      l2 = tuned_l2_grid[int(np.argmax(held_accs))]
      tuned[k].append(probe.accuracy(test.x, test.labels, [l2])[0])
      chosen[k].append(l2)
  std = lambda a: float(np.std(a, ddof=1)) if seeds > 1 else 0.0
  out = {}
  for k in shots:
    name = _suffix_names(dataset, k)
    out[name] = float(np.mean(fixed[k]))
    out[f'{name}_std'] = std(fixed[k])
    if tuned_l2_grid is not None:
      out[f'{name}_tuned_l2'] = float(np.mean(tuned[k]))
      out[f'{name}_tuned_l2_std'] = std(tuned[k])
      out[f'{name}_tuned_l2_reg'] = float(np.exp(np.mean(np.log(chosen[k]))))
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
  l2_reg: float = DEFAULT_L2_REG
  tuned_l2: bool = False
  l2_grid: Sequence[float] = DEFAULT_L2_GRID
  holdout_per_class: int = 10
  seed: int = 0
  #: Datasets of the default set that were not prepared (skip_missing=True).
  skipped: Sequence[str] = ()

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

  @property
  def mean_datasets(self) -> list[str]:
    """The datasets `mean_{k}shot` averages: all but those beside the mean."""
    return [ds.name for ds in self.datasets if ds.name not in BESIDE_MEAN]

  @property
  def protocol(self) -> dict[str, Any]:
    """What the mean is over (results.json's `protocol`)."""
    beside = [ds.name for ds in self.datasets if ds.name in BESIDE_MEAN]
    mean = self.mean_datasets if len(self.mean_datasets) > 1 else []
    out = {'mean_datasets': mean, 'beside_mean': beside,
           'skipped': list(self.skipped)}
    if mean and set(mean) != set(MEAN_DATASETS):
      out['note'] = "not big_vision's six: its mean is not comparable"
    return out

  def run(self, params: Any) -> dict[str, float]:
    params = sharded.place_params(params, self.mesh)
    results = {}
    per_shot = {}
    for ds in self.datasets:
      train = self.features(params, ds.train_batches())
      test = self.features(params, ds.test_batches())
      holdout = None
      if ds.holdout_batches is not None and self.tuned_l2:
        holdout = self.features(params, ds.holdout_batches())
      scores = probe_scores(
          train, test, train.num_classes, ds.shots, self.seeds, self.l2_reg,
          tuned_l2_grid=tuple(self.l2_grid) if self.tuned_l2 else None,
          holdout_per_class=self.holdout_per_class, seed=self.seed,
          dataset=ds.name, holdout=holdout)
      results.update(scores)
      if ds.name in BESIDE_MEAN:
        continue  # Reported beside the mean, not in it.
      for k in ds.shots:
        for suffix in ('', '_tuned_l2') if self.tuned_l2 else ('',):
          per_shot.setdefault(f'{k}shot{suffix}', []).append(
              scores[f'{ds.name}_{k}shot{suffix}'])
    averaged = self.mean_datasets
    if len(averaged) > 1:
      for name, accs in per_shot.items():
        if len(accs) == len(averaged):
          results[f'mean_{name}'] = float(np.mean(accs))
      results['mean_num_datasets'] = float(len(averaged))
    return results


# big_vision's few-shot datasets (configs/common_fewshot.py): the TFDS name,
# the split the shots are drawn from, the test split, the class count. Shots
# 1, 5, 10, 25 everywhere. imagenet2012 is listed there too, commented out
# because it needs a manual download, and shown first when present; it draws
# from its first 65,000 training images (at least 30 per class). uc_merced
# has one split: 1,000 images to draw from, the other 1,100 to test on.
DATASETS = {
    'imagenet2012': dict(data=dict(name='imagenet2012'),
                         train_split='train[:65000]', test_split='validation',
                         num_classes=1000),
    'caltech101': dict(data=dict(name='caltech101'), train_split='train',
                       test_split='test', num_classes=102),
    'cars196': dict(data=dict(name='cars196:2.1.0'), train_split='train',
                    test_split='test', num_classes=196),
    'cifar100': dict(data=dict(name='cifar100'), train_split='train',
                     test_split='test', num_classes=100),
    'dtd': dict(data=dict(name='dtd'), train_split='train', test_split='test',
                num_classes=47),
    'oxford_iiit_pet': dict(data=dict(name='oxford_iiit_pet'),
                            train_split='train', test_split='test',
                            num_classes=37),
    'uc_merced': dict(data=dict(name='uc_merced'), train_split='train[:1000]',
                      test_split='train[1000:]', num_classes=21),
}
#: big_vision's default set, the datasets its few-shot mean averages.
MEAN_DATASETS = ('caltech101', 'cars196', 'cifar100', 'dtd', 'oxford_iiit_pet',
                 'uc_merced')
#: Reported beside the mean, never in it (the paper reports ImageNet
#: few-shot on its own; big_vision's default set leaves it out).
BESIDE_MEAN = ('imagenet2012',)
DATASETS = {n: {**d, 'shots': (1, 5, 10, 25)} for n, d in DATASETS.items()}
# Not in big_vision's set, available by name: oxford_flowers102 has exactly
# 10 training images per class, so it stops at 10 shots and (with tuned_l2)
# chooses l2 on its validation split.
EXTRA_DATASETS = {
    'oxford_flowers102': dict(data=dict(name='oxford_flowers102'),
                              train_split='train', test_split='test',
                              holdout_split='validation', num_classes=102,
                              shots=(1, 5, 10)),
}


def default_pp(size: int, num_classes: int) -> str:
  """big_vision's few-shot preprocessing: resize to size x 8/7, central crop."""
  return (f'decode|resize({round(size * 8 / 7)})|central_crop({size})|'
          f"value_range(-1, 1)|onehot({num_classes})|keep('image', 'labels')")


def from_config(name: str, config: Any, *, model: Any, mesh: Mesh,
                context: inputs.EvalContext) -> FewShotEvaluator:
  """Config keys: datasets ({name: {data, train_split, test_split,
  holdout_split, num_classes, shots, pp (default: `default_pp`)}}; default
  DATASETS), seeds (3), l2_reg (2^10), tuned_l2 (False), l2_grid
  (DEFAULT_L2_GRID), holdout_per_class (10), seed (0), skip_missing
  (False: a dataset that is not prepared is an error, raised here, before
  anything runs, naming every such dataset), batch_size, every."""
  size = inputs.image_size_of(context.image_size)
  batch_size = int(inputs.get(config, 'batch_size', inputs.DEFAULT_BATCH_SIZE))
  specs = inputs.as_dict(inputs.get(config, 'datasets', DATASETS))
  if not specs:
    raise ValueError(f'evaluator {name!r} has no datasets; set '
                     f'evals.{name}.datasets or leave it out for big_vision\'s '
                     f'set ({", ".join(DATASETS)}).')
  # ImageNet first, as big_vision shows it (a ConfigDict sorts its keys).
  specs = dict(sorted(specs.items(), key=lambda kv: kv[0] not in BESIDE_MEAN))
  datasets, problems, missing = [], [], {}
  for ds_name, spec in specs.items():
    try:
      datasets.append(_dataset(f'{name}/{ds_name}', ds_name, spec, size,
                               batch_size, context))
    except FileNotFoundError as e:  # Not prepared (or a folder not there).
      missing[ds_name] = _how_to_prepare(str(e))
    except ValueError as e:
      problems.append(str(e))
  if problems:  # Every unusable dataset at once, not one per attempt.
    raise ValueError(' | '.join(problems + [
        f'{name}/{n}: not prepared ({fix})' for n, fix in missing.items()]))
  skip_missing = bool(inputs.get(config, 'skip_missing', False))
  if missing:
    listed = '; '.join(f'{n}: {fix}' for n, fix in missing.items())
    in_mean = [n for n in missing if n in MEAN_DATASETS]
    mean_note = (f" (without {', '.join(in_mean)} the mean is not "
                 f"big_vision's)" if in_mean else '')
    if not datasets:
      raise FileNotFoundError(
          f'evals.{name}: none of the few-shot datasets is prepared, so '
          f'nothing ran: {", ".join(missing)}; prepare them ({listed}).')
    if not skip_missing:
      raise FileNotFoundError(
          f'evals.{name}: {len(missing)} of {len(specs)} few-shot datasets '
          f'are not prepared, so nothing ran: {", ".join(missing)}. Prepare '
          f'them ({listed}), or set evals.{name}.skip_missing=True '
          f'(configs/evaluate.py: skip_missing=true) to run the others'
          f'{mean_note}.')
    logging.warning('evals.%s: skipping the few-shot datasets that are not '
                    'prepared: %s%s.', name, ', '.join(missing), mean_note)
  evaluator = FewShotEvaluator(
      name=name, every=int(inputs.get(config, 'every', 0)), model=model,
      mesh=mesh, datasets=datasets, batch_size=batch_size,
      seeds=int(inputs.get(config, 'seeds', 3)),
      l2_reg=float(inputs.get(config, 'l2_reg', DEFAULT_L2_REG)),
      tuned_l2=bool(inputs.get(config, 'tuned_l2', False)),
      l2_grid=tuple(float(v) for v in inputs.get(config, 'l2_grid',
                                                 DEFAULT_L2_GRID)),
      holdout_per_class=int(inputs.get(config, 'holdout_per_class', 10)),
      seed=int(inputs.get(config, 'seed', 0)), skipped=tuple(missing))
  protocol = evaluator.protocol
  if protocol['mean_datasets']:
    logging.info('evals.%s: mean_{k}shot averages %s%s%s.', name,
                 ', '.join(protocol['mean_datasets']),
                 f"; {', '.join(protocol['beside_mean'])} beside it"
                 if protocol['beside_mean'] else '',
                 f" ({protocol['note']})" if 'note' in protocol else '')
  return evaluator


_PREPARE = re.compile(r'tfds build \S+(?: --\S+)*')


def _how_to_prepare(message: str) -> str:
  """The command in a data source's "not prepared" error, else the error."""
  match = _PREPARE.search(message)
  if not match:
    return message.split('; ')[0]
  command = match.group(0).rstrip(',;.)')
  manual = ' with manually downloaded archives' if '--manual_dir' in command else ''
  return f'{command}{manual}'


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
    pp = default_pp(size, classes)

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
