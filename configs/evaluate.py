"""Evaluating a checkpoint: any of top-1, ImageNet ReaL, few-shot, VTAB-1k.

python -m vit_jax.evaluate --config=configs/evaluate.py:ARGS \
    --checkpoint=PATH --workdir=DIR

PATH is a released .npz (give model=, unless the file is named like
ViT-B_16.npz) or the workdir of one of our runs (its config.json says the
model). ARGS, comma-separated NAME=VALUE (lists joined by '+'):

  evals=classify+fewshot   any of classify, real, fewshot, vtab
  model=ViT-B/16           registry name (default: from the checkpoint)
  image_size=384           evaluation resolution (default: the checkpoint's
                           own, from its position-embedding grid x the
                           model's pixels per token; a different one is
                           said in the log line that starts the evaluation)
  batch_size=512           global evaluation batch
  data_dir=PATH            TFDS data directory
  dataset=cifar10          classify: the dataset ('digits', a TFDS name)
  split=test               classify: the split
  pp=...                   classify: preprocessing (default vit_eval)
  real_json=PATH           real: another real.json (default: the copy that
                           ships in vit_jax/assets, from google-research/
                           reassessed-imagenet)
  real_data=imagenet2012   real: 'imagenet2012', 'imagenet2012_real' or
                           'folder' (with real_root=ROOT holding
                           ROOT/validation/<class>/ILSVRC2012_val_*.JPEG)
  real_view=resize         real: the view scored, 'resize' (the whole image
                           at the model's resolution, as the paper, BiT and
                           classify) or 'central_crop' (shorter side to 8/7,
                           central crop, as imagenet_eval)
  fewshot=default          few-shot datasets: 'default' (big_vision's set:
                           imagenet2012, reported beside the mean_{k}shot of
                           caltech101, cars196, cifar100, dtd,
                           oxford_iiit_pet, uc_merced),
                           'digits' (bundled, offline), or names of those
                           and oxford_flowers102 joined by '+'
  shots=1+5+10+25          override every few-shot dataset's shots
  seeds=3                  few-shot seeds
  l2=1024                  few-shot l2, fixed (big_vision's 2^10)
  tuned_l2=false           also report l2 chosen per shot and seed on held-out
                           training data, as {dataset}_{k}shot_tuned_l2
  vtab_mode=paper          'paper' (the paper's protocol: lr 0.01, 2,500
                           steps, 384 px, one setting for all tasks),
                           'paper_select' (re-make the paper's choice of
                           setting by the mean val200 score), 'per_task'
                           (each task's best setting: not comparable) or
                           'quick' (500 steps, 224 px: not comparable)
  vtab_tasks=all           'all', a group (natural, specialized,
                           structured) or task names joined by '+'
  skip_missing=false       VTAB and few-shot: run the prepared tasks and
                           datasets, list the others (default: list them
                           in one line and stop before anything runs)

Which numbers compare with what: classify top-1 at the checkpoint's own
resolution on a fine-tuned checkpoint compares with Tables 2 and 5 of the
paper; real with their "ImageNet ReaL" rows; the default few-shot numbers
(fixed l2, big_vision's preprocessing, datasets and seeds) with big_vision's
few-shot evaluator, the basis of the paper's few-shot figures, not with the
_tuned_l2 ones. See docs/evaluate.md.

Offline example (bundled digits, a run of configs/quickstart.py):
python -m vit_jax.evaluate --config=configs/evaluate.py:evals=classify+fewshot,\
dataset=digits,fewshot=digits --checkpoint=runs/quickstart --workdir=runs/eval
"""

import ml_collections

from vit_jax import config_lib
from vit_jax.evaluate import fewshot as fewshot_lib
from vit_jax.evaluate import real as real_lib
from vit_jax.data import vtab_tasks

EVALS = ('classify', 'real', 'fewshot', 'vtab')
DIGITS = {'digits': dict(data=dict(name='digits'), train_split='train',
                         test_split='test', num_classes=10,
                         shots=(1, 5, 10, 25))}


def _list(value: str) -> list[str]:
  return [v for v in value.split('+') if v]


def _fewshot_datasets(choice: str) -> dict:
  if choice == 'default':
    return dict(fewshot_lib.DATASETS)
  if choice == 'digits':
    return dict(DIGITS)
  known = {**fewshot_lib.DATASETS, **fewshot_lib.EXTRA_DATASETS, **DIGITS}
  names = _list(choice)
  unknown = [n for n in names if n not in known]
  if unknown:
    raise ValueError(f'fewshot={choice!r}: unknown dataset(s) {unknown}; use '
                     f"'default', 'digits' or names from {sorted(known)}.")
  return {n: known[n] for n in names}


def get_config(arg=None):
  a = config_lib.parse_arg(
      arg, evals='classify', model='', image_size=0, batch_size=512,
      data_dir='', dataset='', split='test', pp='', real_json='',
      real_data='imagenet2012', real_root='', real_view='resize',
      fewshot='default', shots='',
      seeds=3, l2=2.0**10, tuned_l2=False, vtab_mode='paper', vtab_tasks='all',
      skip_missing=False)
  evals = _list(a.evals)
  unknown = [e for e in evals if e not in EVALS]
  if unknown or not evals:
    raise ValueError(f'evals={a.evals!r}: choose from {"+".join(EVALS)}.')

  c = ml_collections.ConfigDict()
  base = config_lib.base_config()
  c.model = base.model
  c.model.name = a.model  # '': from the checkpoint.
  c.image_size = a.image_size or config_lib.placeholder(int)
  c.num_classes = config_lib.placeholder(int)  # From the checkpoint's head.
  c.mesh = base.mesh
  c.sharding = base.sharding
  c.data_dir = a.data_dir or config_lib.placeholder(str)
  c.evals = ml_collections.ConfigDict()

  if 'classify' in evals:
    if not a.dataset:
      raise ValueError("evals=classify needs dataset=NAME (e.g. 'digits' or "
                       "'cifar10').")
    c.evals.classify = dict(type='classify', data=dict(name=a.dataset),
                            split=a.split, batch_size=a.batch_size)
    if a.pp:
      c.evals.classify.pp = a.pp
  if 'real' in evals:
    if a.real_view not in real_lib.VIEWS:
      raise ValueError(f'real_view={a.real_view!r}: choose '
                       f'{" or ".join(real_lib.VIEWS)}.')
    data = dict(name=a.real_data)
    if a.real_data == 'folder':
      data['root'] = a.real_root
    c.evals.real = dict(type='real', data=data, real_json=a.real_json,
                        view=a.real_view, batch_size=a.batch_size)
  if 'fewshot' in evals:
    datasets = _fewshot_datasets(a.fewshot)
    if a.shots:
      shots = tuple(int(s) for s in _list(a.shots))
      datasets = {n: {**d, 'shots': shots} for n, d in datasets.items()}
    c.evals.fewshot = dict(type='fewshot', datasets=datasets, seeds=a.seeds,
                           batch_size=a.batch_size, l2_reg=a.l2,
                           tuned_l2=a.tuned_l2, skip_missing=a.skip_missing)
  # VTAB-1k trains: it runs through vit_jax.transfer, not as an evaluator.
  c.vtab = base.vtab
  if 'vtab' in evals:
    c.vtab.update(mode=a.vtab_mode, tasks='+'.join(
        vtab_tasks.task_names(a.vtab_tasks)), skip_missing=a.skip_missing,
                  data_dir=a.data_dir or None)
  return c
