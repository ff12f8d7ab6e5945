"""Fine-tuning recipe of the paper (Table 4, App. B.1.1) from a released checkpoint.

python -m vit_jax.main --config=configs/finetune.py:model=B/16,dataset=cifar10 \\
    --config.init_from=/path/to/ViT-B_16.npz --workdir=runs/b16-cifar10

Arguments: model, dataset (imagenet2012, cifar10, cifar100, oxford_iiit_pet,
oxford_flowers102, folder), steps (default: the paper's for the dataset),
lr (0.01; the paper sweeps 0.001, 0.003, 0.01, 0.03), batch (512),
image_size (384), folder and classes (ROOT of ROOT/<split>/<class>/*.jpg and
its class count, for dataset=folder), init (the checkpoint; default: the
ImageNet-21k release).

SGD with momentum 0.9, batch 512, global-norm clipping at 1, cosine decay
with linear warm-up, no weight decay, 384 px; the head is replaced by a
zero-initialised one and the position embeddings are resampled to the new
grid (vit_jax.checkpoint.load_pretrained).
"""

from vit_jax import config_lib

RECIPES = {
    # dataset: (train split, val split, classes, steps)
    'imagenet2012': ('train[:99%]', 'train[99%:]', 1000, 20_000),
    'cifar10': ('train[:98%]', 'train[98%:]', 10, 10_000),
    'cifar100': ('train[:98%]', 'train[98%:]', 100, 10_000),
    'oxford_iiit_pet': ('train[:90%]', 'train[90%:]', 37, 500),
    'oxford_flowers102': ('train', 'validation', 102, 500),
    'folder': ('train', 'val', 0, 1000),
}
RELEASED = 'gs://vit_models/imagenet21k/{stem}.npz'


def get_config(arg=None):
  args = config_lib.parse_arg(arg, model='B/16', dataset='cifar10', steps=0,
                              lr=0.01, batch=512, image_size=384, folder='',
                              classes=0, init='')
  if args.dataset not in RECIPES:
    raise ValueError(f'unknown fine-tuning dataset {args.dataset!r}; choose '
                     f'one of {", ".join(RECIPES)}.')
  train_split, val_split, classes, steps = RECIPES[args.dataset]
  if args.dataset == 'folder' and not (args.folder and args.classes):
    raise ValueError('dataset=folder needs folder=ROOT and classes=N (with '
                     'ROOT/train/<class>/*.jpg and ROOT/val/<class>/*.jpg).')
  classes = args.classes or classes
  name = args.model if 'ViT' in args.model else (
      args.model.replace('+', '+ViT-') if '+' in args.model
      else f'ViT-{args.model}')

  c = config_lib.base_config()
  c.total_steps = args.steps or steps
  c.batch_size = args.batch
  c.image_size = args.image_size
  c.num_classes = classes
  c.model.name = name
  c.model.dtype = 'bfloat16'

  data = dict(name=args.dataset, split=train_split)
  if args.dataset == 'folder':
    data.update(root=args.folder)
  c.input.data = data
  c.input.pp = f'vit_train({args.image_size}, {classes})'

  c.optim.name = 'sgd'
  c.optim.momentum = 0.9
  c.optim.grad_clip_norm = 1.0
  c.schedule = dict(base_lr=args.lr,
                    warmup_steps=min(500, c.total_steps // 10),
                    decay_type='cosine', linear_end=0.0)
  c.init_from = args.init or RELEASED.format(stem=name.replace('/', '_'))

  c.evals.val = dict(type='classify', data=dict(data, split=val_split),
                     pp=f'vit_eval({args.image_size}, {classes})',
                     every=max(c.total_steps // 10, 100))
  c.log_every = 50
  c.checkpoint_every = 500
  return c
