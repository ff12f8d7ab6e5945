"""The embedded default (`make run`): a small ViT on the bundled digits, no network.

A ViT with 4 blocks of width 64 on 4x4 patches of the 8x8 scikit-learn
digits upsampled to 16x16 (16 tokens + class token). It trains in a few
minutes on 2 CPU cores and reaches >= 95% top-1 on the 300 held-out digits.

python -m vit_jax.main --config=configs/quickstart.py --workdir=runs/quickstart
"""

from vit_jax import config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(arg, steps=600, batch=128)
  c = config_lib.base_config()
  c.total_steps = args.steps
  c.batch_size = args.batch
  c.image_size = 16
  c.num_classes = 10

  c.model.name = 'ViT-Ti/16'
  c.model.patch_size = 4
  c.model.hidden_size = 64
  c.model.num_layers = 4
  c.model.mlp_dim = 128
  c.model.num_heads = 4

  c.input.data.update(name='digits', split='train')
  c.input.pp = 'resize(16)|value_range(-1, 1)|onehot(10)'

  c.optim.name = 'adam'
  c.optim.weight_decay = 1e-4
  c.optim.grad_clip_norm = 1.0
  c.schedule.update(base_lr=1e-3, warmup_steps=min(50, args.steps // 10),
                    decay_type='cosine', linear_end=0.0)

  c.evals.val = config_lib.evaluator_config(
      'classify', data=dict(name='digits', split='test'),
      pp='resize(16)|value_range(-1, 1)|onehot(10)', batch_size=128,
      every=200)
  c.log_every = 50
  c.checkpoint_every = 200
  return c
