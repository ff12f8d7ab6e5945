"""Pretraining recipes of the paper (Dosovitskiy et al., 2021, App. B.1, Table 3).

python -m vit_jax.main --config=configs/pretrain.py:model=B/16,dataset=imagenet21k \\
    --workdir=gs://BUCKET/vit-b16-i21k

Arguments: model (B/16, L/16, H/14, R50+B/16, ...), dataset (imagenet2012,
imagenet21k, jft), epochs (default: the paper's for the dataset), batch
(4096), image_size (224), tfds_name (the TFDS builder of a JFT-style custom
dataset, with num_classes), num_classes.

All recipes: Adam (0.9, 0.999), batch 4096, 10k warm-up steps, global-norm
clipping at 1, sigmoid cross-entropy with the head bias at -10, and a
representation (pre-logits) layer of the model's width.
  imagenet2012: 300 epochs, lr 3e-3, weight decay 0.3, cosine, dropout 0.1.
  imagenet21k:  90 epochs, lr 1e-3, weight decay 0.03, linear, dropout 0.1.
  jft:          7 epochs (14 for H/14), lr 8e-4 (B), 4e-4 (L), 3e-4 (H),
                weight decay 0.1, linear decay, no dropout.
"""

from vit_jax import config_lib
from vit_jax.budget import DATASETS
from vit_jax.models import get_spec

RECIPES = {
    # dataset: (tfds name, train split, val split, classes, epochs, lr,
    #           weight decay, decay, dropout)
    'imagenet2012': ('imagenet2012', 'train[:99%]', 'train[99%:]', 1000, 300,
                     3e-3, 0.3, 'cosine', 0.1),
    'imagenet21k': ('imagenet21k', 'full[102400:]', 'full[:102400]', 21843,
                    90, 1e-3, 0.03, 'linear', 0.1),
    'jft': ('jft', 'train', 'validation', 18291, 7, None, 0.1, 'linear', 0.0),
}
JFT_LR = {'Ti': 1e-3, 'S': 1e-3, 'B': 8e-4, 'L': 4e-4, 'H': 3e-4}
NUM_EXAMPLES = {'imagenet2012': DATASETS['imagenet2012'],
                'imagenet21k': DATASETS['imagenet21k'],
                'jft': DATASETS['jft-300m']}


def get_config(arg=None):
  args = config_lib.parse_arg(arg, model='B/16', dataset='imagenet21k',
                              epochs=0.0, batch=4096, image_size=224,
                              tfds_name='', num_classes=0)
  if args.dataset not in RECIPES:
    raise ValueError(f'unknown pretraining dataset {args.dataset!r}; choose '
                     f'one of {", ".join(RECIPES)}.')
  (tfds_name, train_split, val_split, classes, epochs, lr, wd, decay,
   dropout) = RECIPES[args.dataset]
  name = config_lib.model_name(args.model)
  spec = get_spec(name)
  size = name.split('ViT-')[1][0]
  if args.dataset == 'jft':
    lr = JFT_LR[size]
    epochs = 14 if size == 'H' else epochs
    tfds_name = args.tfds_name or tfds_name
  classes = args.num_classes or classes
  epochs = args.epochs or epochs

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
  c.optim.weight_decay = wd
  c.optim.grad_clip_norm = 1.0
  c.schedule.update(base_lr=lr, warmup_steps=10_000, decay_type=decay,
                    linear_end=1e-5)

  c.evals.val = config_lib.evaluator_config(
      'classify', data=dict(name=tfds_name, split=val_split),
      pp=f'vit_eval({args.image_size}, {classes})', every=5000)
  c.log_every = 100
  c.checkpoint_every = 1000
  c.keep_checkpoint_every = 50_000
  return c
