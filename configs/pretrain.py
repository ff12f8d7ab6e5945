"""Pretraining recipes of the paper (Dosovitskiy et al., 2021, App. B.1, Table 3).

python -m vit_jax.main --config=configs/pretrain.py:model=B/16,dataset=imagenet21k \\
    --workdir=gs://BUCKET/vit-b16-i21k

Arguments: model (B/16, L/16, H/14, R50+B/16, ...), dataset (imagenet2012,
imagenet21k, jft), epochs (default: the first the table lists for the row),
lr (default: the table's; needed for a model the table has no row for), batch
(4096), image_size (224), tfds_name (the TFDS builder of a JFT-style custom
dataset, with num_classes), num_classes.

Every row of Table 3 is `model=X,dataset=Y[,epochs=E]` (TABLE_3 below). All
recipes: Adam (0.9, 0.999), batch 4096, 10k linear warm-up steps, 224 px,
sigmoid cross-entropy with the head bias at -10, and a representation
(pre-logits) layer of the model's width. Hybrids are trained "with the exact
setup as their ViT counterparts" (B.1), except where Table 3 lists them.
  jft:          linear decay, weight decay 0.1, no dropout; 7 epochs (7 or 14
                for L/16 and R50+L/16, 14 for H/14); lr 8e-4 (B/16, B/32,
                R50+B/16, R50+B/32), 6e-4 (L/32), 4e-4 (L/16, R50+L/16),
                3e-4 (H/14), 2e-4 (R50+L/32).
  imagenet21k:  lr 1e-3, linear, weight decay 0.03, dropout 0.1; 90 epochs
                for B, 30 or 90 for L.
  imagenet2012: 300 epochs, lr 3e-3, cosine, weight decay 0.3, dropout 0.1,
                and gradient clipping at global norm 1 (ImageNet only).
"""

from vit_jax import config_lib
from vit_jax.dataset_sizes import DATASETS
from vit_jax.models import get_spec

RECIPES = {
    # dataset: (tfds name, train split, val split, classes, weight decay,
    #           decay, dropout, gradient clipping at global norm)
    'imagenet2012': ('imagenet2012', 'train[:99%]', 'train[99%:]', 1000,
                     0.3, 'cosine', 0.1, 1.0),
    'imagenet21k': ('imagenet21k', 'full[102400:]', 'full[:102400]', 21843,
                    0.03, 'linear', 0.1, None),
    'jft': ('jft', 'train', 'validation', 18291, 0.1, 'linear', 0.0, None),
}
# Table 3: (model, dataset) -> (epochs it lists, base learning rate). Hybrids
# on ImageNet and ImageNet-21k follow their ViT counterparts (B.1).
_IMAGENET_VITS = ('B/16', 'B/32', 'L/16', 'L/32', 'H/14')
TABLE_3 = {
    ('ViT-B/16', 'jft'): ((7,), 8e-4),
    ('ViT-B/32', 'jft'): ((7,), 8e-4),
    ('ViT-L/32', 'jft'): ((7,), 6e-4),
    ('ViT-L/16', 'jft'): ((7, 14), 4e-4),
    ('ViT-H/14', 'jft'): ((14,), 3e-4),
    ('R50+ViT-B/16', 'jft'): ((7,), 8e-4),
    ('R50+ViT-B/32', 'jft'): ((7,), 8e-4),
    ('R50+ViT-L/32', 'jft'): ((7,), 2e-4),
    ('R50+ViT-L/16', 'jft'): ((7, 14), 4e-4),
    ('ViT-B/16', 'imagenet21k'): ((90,), 1e-3),
    ('ViT-B/32', 'imagenet21k'): ((90,), 1e-3),
    ('ViT-L/16', 'imagenet21k'): ((30, 90), 1e-3),
    ('ViT-L/32', 'imagenet21k'): ((30, 90), 1e-3),
    **{(f'ViT-{m}', 'imagenet2012'): ((300,), 3e-3) for m in _IMAGENET_VITS},
}
COUNTERPARTS = {'R50+ViT-B/16': 'ViT-B/16', 'R50+ViT-B/32': 'ViT-B/32',
                'R50+ViT-L/16': 'ViT-L/16', 'R50+ViT-L/32': 'ViT-L/32'}
NUM_EXAMPLES = {'imagenet2012': DATASETS['imagenet2012'],
                'imagenet21k': DATASETS['imagenet21k'],
                'jft': DATASETS['jft-300m']}


def table_row(name: str, dataset: str):
  """(epochs, lr) of Table 3 for the model and dataset, or None."""
  row = TABLE_3.get((name, dataset))
  if row is None and name in COUNTERPARTS and dataset != 'jft':
    row = TABLE_3.get((COUNTERPARTS[name], dataset))
  return row


def get_config(arg=None):
  args = config_lib.parse_arg(arg, model='B/16', dataset='imagenet21k',
                              epochs=0.0, lr=0.0, batch=4096, image_size=224,
                              tfds_name='', num_classes=0)
  if args.dataset not in RECIPES:
    raise ValueError(f'unknown pretraining dataset {args.dataset!r}; choose '
                     f'one of {", ".join(RECIPES)}.')
  (tfds_name, train_split, val_split, classes, wd, decay, dropout,
   clip) = RECIPES[args.dataset]
  name = config_lib.model_name(args.model)
  row = table_row(name, args.dataset)
  if row is None and not (args.epochs and args.lr):
    listed = sorted(m for m, d in TABLE_3 if d == args.dataset)
    raise ValueError(f'Table 3 has no {args.dataset} recipe for {name} (it '
                     f'lists {", ".join(listed)}); pass epochs=E,lr=LR.')
  spec = get_spec(name)  # a Table 3 model that is not registered: clear error
  epochs = args.epochs or row[0][0]
  lr = args.lr or row[1]
  if args.dataset == 'jft':
    tfds_name = args.tfds_name or tfds_name
  classes = args.num_classes or classes

  c = config_lib.base_config()
  c.batch_size = args.batch
  c.image_size = args.image_size
  c.num_classes = classes
  c.total_steps = int(round(epochs * NUM_EXAMPLES[args.dataset] / args.batch))

  c.model.name = name
  c.model.representation_size = spec.hidden_size
  c.model.head_bias_init = -10.0
  c.model.dropout_rate = dropout
  c.model.dtype = 'bfloat16'

  c.input.data.update(name=tfds_name, split=train_split)
  c.input.pp = f'vit_train({args.image_size}, {classes})'
  c.input.shuffle_buffer_size = 250_000

  c.loss = 'sigmoid_xent'
  c.optim.name = 'adam'
  c.optim.b1, c.optim.b2 = 0.9, 0.999
  c.optim.weight_decay = wd
  c.optim.grad_clip_norm = clip
  c.schedule.update(base_lr=lr, warmup_steps=10_000, decay_type=decay,
                    linear_end=1e-5)

  c.evals.val = config_lib.evaluator_config(
      'classify', data=dict(name=tfds_name, split=val_split),
      pp=f'vit_eval({args.image_size}, {classes})', every=5000)
  c.log_every = 100
  c.checkpoint_every = 1000
  c.keep_checkpoint_every = 50_000
  return c
