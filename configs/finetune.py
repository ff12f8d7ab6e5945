"""Fine-tuning recipe of the paper (Table 4, App. B.1.1) from a released checkpoint.

python -m vit_jax.main --config=configs/finetune.py:model=B/16,dataset=cifar10 \\
    --config.init_from=/path/to/ViT-B_16.npz --workdir=runs/b16-cifar10

Arguments: model (default B/16; with init=RUN_DIR, that run's model),
dataset (imagenet2012, cifar10, cifar100, oxford_iiit_pet,
oxford_flowers102, folder; digits: the bundled 8x8 digits at 16 px, for
offline checks, not a paper dataset), protocol (below), steps (default: the
paper's for the dataset), lr (default: see "Learning rate"), batch (512),
image_size (384; digits 16), folder and classes (ROOT of
ROOT/<split>/<class>/*.jpg and its class count, for dataset=folder), init (a
released .npz or a run's workdir; default: the ImageNet-21k release of the
model).

Protocols (App. B.1.1: "for final results we train on the entire training
set and evaluate on the respective test data"):

  final  (default) trains on the whole training split and reports the test
         split (ImageNet: validation). Comparable with Table 2 (at 384 px
         without Polyak averaging: Table 5; Table 2's ImageNet numbers use
         512/518 px and Polyak averaging 0.9999) when its learning rate was
         chosen on dev, as the paper's were (below: a sweep's); with the
         default table's rate it is one model's choice, not this model's.
  dev    trains on the training split less its dev part and reports the dev
         part: 10% for Pets and Flowers, 2% for CIFAR, 1% for ImageNet (the
         paper's fractions), for choosing hyper-parameters. Not a test number.
  sweep  one command: the Table 4 learning-rate grid under the dev protocol,
         then the final protocol with the best rate; each run in its own
         workdir under WORKDIR/sweep/, resumable; table in
         WORKDIR/sweep_results.md.

Learning rate (`lr_source` in the log and in vit_jax.transfer.table's results):
`lr=` given: that rate ('given'). Otherwise, under `final`, the rate a
finished `protocol=sweep` chose on dev in the same workdir
(WORKDIR/sweep_results.json, 'sweep:<path>'), else the dataset's rate in
DEFAULT_LR ('table:configs/finetune.py'): big_vision's
big_vision/configs/transfer.py lists the rate it selected on (mini)val for
ViT-AugReg-B/32 per dataset (ImageNet 0.03, CIFAR-10 0.003, CIFAR-100 0.01,
Pets 0.003, Flowers 0.003) and uses 0.01 by default (`config.lr`), here for
folder datasets. These are one model's choices: for a Table 2 number, choose
on dev (`protocol=sweep`). `dev` and `sweep` ignore the sweep in the workdir.

Table 4's learning-rate grids: ImageNet {0.003, 0.01, 0.03, 0.06};
CIFAR-10/100, Pets, Flowers {0.001, 0.003, 0.01, 0.03}. Steps: ImageNet
20,000; CIFAR 10,000; Pets and Flowers 500.

SGD with momentum 0.9, batch 512, global-norm clipping at 1, cosine decay
with linear warm-up, no weight decay, 384 px; the whole head (pre-logits and
classifier) is replaced by a zero-initialised layer and the position
embeddings are resampled to the new grid (vit_jax.checkpoint.load_pretrained).
"""

import dataclasses

from vit_jax import config_lib


@dataclasses.dataclass(frozen=True)
class Recipe:
  train: str             # the whole training split
  test: str              # what the final protocol reports
  dev_percent: int       # the dev part of `train` (App. B.1.1)
  classes: int
  steps: int
  learning_rates: tuple  # Table 4's grid
  image_size: int = 384
  #: Preprocessing (train, eval); None: the paper's vit_train / vit_eval.
  pp: tuple = None
  dtype: str = 'bfloat16'  # None: the backend's (models/fast_path.py).

  def dev_splits(self) -> tuple[str, str]:
    """(train less dev, dev): the last `dev_percent` percent is dev."""
    cut = 100 - self.dev_percent
    return f'{self.train}[:{cut}%]', f'{self.train}[{cut}%:]'


GRID = (0.001, 0.003, 0.01, 0.03)
RECIPES = {
    'imagenet2012': Recipe('train', 'validation', 1, 1000, 20_000,
                           (0.003, 0.01, 0.03, 0.06)),
    'cifar10': Recipe('train', 'test', 2, 10, 10_000, GRID),
    'cifar100': Recipe('train', 'test', 2, 100, 10_000, GRID),
    'oxford_iiit_pet': Recipe('train', 'test', 10, 37, 500, GRID),
    'oxford_flowers102': Recipe('train', 'test', 10, 102, 500, GRID),
    'folder': Recipe('train', 'val', 10, 0, 1000, GRID),
    # The bundled digits (offline checks; not a paper dataset): 8x8 images at
    # 16 px, no crop and no flip (a flipped digit is another digit).
    'digits': Recipe('train', 'test', 10, 10, 500, GRID, image_size=16,
                     pp=('resize({size})|value_range(-1, 1)|onehot({classes})',
                         'resize({size})|value_range(-1, 1)|onehot({classes})'),
                     dtype=None),
}
#: Each dataset's rate when neither `lr=` nor a sweep in the workdir gives one.
LR_SOURCE = ('big_vision/configs/transfer.py: the rate selected on (mini)val '
             'for ViT-AugReg-B/32 per dataset, config.lr=0.01 otherwise')
DEFAULT_LR = {'imagenet2012': 0.03, 'cifar10': 0.003, 'cifar100': 0.01,
              'oxford_iiit_pet': 0.003, 'oxford_flowers102': 0.003,
              'folder': 0.01, 'digits': 0.01}
PROTOCOLS = ('final', 'dev', 'sweep')
RELEASED = 'gs://vit_models/imagenet21k/{stem}.npz'


def get_config(arg=None):
  args = config_lib.parse_arg(arg, model='', dataset='cifar10',
                              protocol='final', steps=0, lr=0.0, batch=512,
                              image_size=0, folder='', classes=0, init='')
  if args.dataset not in RECIPES:
    raise ValueError(f'unknown fine-tuning dataset {args.dataset!r}; choose '
                     f'one of {", ".join(RECIPES)}.')
  if args.protocol not in PROTOCOLS:
    raise ValueError(f'unknown protocol {args.protocol!r}; choose one of '
                     f'{", ".join(PROTOCOLS)}.')
  recipe = RECIPES[args.dataset]
  if args.dataset == 'folder' and not (args.folder and args.classes):
    raise ValueError('dataset=folder needs folder=ROOT and classes=N (with '
                     'ROOT/train/<class>/*.jpg and ROOT/val/<class>/*.jpg).')
  classes = args.classes or recipe.classes
  size = args.image_size or recipe.image_size
  train_pp, eval_pp = recipe.pp or ('vit_train({size}, {classes})',
                                    'vit_eval({size}, {classes})')
  # With init=RUN_DIR and no model, the training loop reads the run's model.
  name = config_lib.model_name(args.model or ('' if args.init else 'B/16'))
  dev_train, dev = recipe.dev_splits()
  train_split, eval_split, eval_name = ((dev_train, dev, 'dev')
                                        if args.protocol == 'dev' else
                                        (recipe.train, recipe.test, 'test'))

  c = config_lib.base_config()
  c.total_steps = args.steps or recipe.steps
  c.batch_size = args.batch
  c.image_size = size
  c.num_classes = classes
  c.model.name = name
  c.model.dtype = recipe.dtype

  c.input.data.update(name=args.dataset, split=train_split)
  if args.dataset == 'folder':
    c.input.data.root = args.folder
  c.input.pp = train_pp.format(size=size, classes=classes)

  c.optim.update(name='sgd', momentum=0.9, grad_clip_norm=1.0)
  c.schedule.update(base_lr=args.lr or DEFAULT_LR[args.dataset],
                    warmup_steps=min(500, c.total_steps // 10),
                    decay_type='cosine', linear_end=0.0)
  c.init_from = args.init or RELEASED.format(stem=name.replace('/', '_'))

  data = dict(name=args.dataset, split=eval_split)
  if args.dataset == 'folder':
    data['root'] = args.folder
  c.evals[eval_name] = config_lib.evaluator_config(
      'classify', data=data, pp=eval_pp.format(size=size, classes=classes),
      every=max(c.total_steps // 500 * 50, 100))  # ~1/10, a log step.
  if args.protocol == 'sweep':
    c.sweep.update(learning_rates=recipe.learning_rates, train_split=dev_train,
                   eval_split=dev)
  elif args.protocol == 'final' and not args.lr:
    # No rates: nothing is swept now; the dev splits say that the rate is the
    # default, which a finished sweep on them in the workdir replaces
    # (vit_jax.transfer.sweep.final_learning_rate).
    c.sweep.update(train_split=dev_train, eval_split=dev)
  c.log_every = 50
  c.checkpoint_every = 500
  return c
