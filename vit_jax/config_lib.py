"""The training config's schema and defaults, and the config files' named arguments.

Every key a training run reads is declared here with its type, so
`--config.key=value` with an unknown key or a value of the wrong type fails
before anything is compiled. Config files in configs/ start from
`base_config()` and set what their recipe needs.
"""

from __future__ import annotations

from typing import Any

import ml_collections
from ml_collections import config_dict

from vit_jax.parallel import default_sharding_rules

placeholder = config_dict.placeholder


def base_config() -> ml_collections.ConfigDict:
  """All keys of a training run, with neutral defaults."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 1000
  c.batch_size = 512           # Global batch, over all hosts and devices.
  c.accum_steps = 1            # Micro-batches per step (gradient accumulation).
  c.image_size = 224
  c.num_classes = placeholder(int)  # None: taken from the training data.

  # Model: a registered name plus any VisionTransformer field to override.
  c.model = ml_collections.ConfigDict(dict(
      name='ViT-B/16',
      dtype='float32',
      remat_policy='none',
      scan_layers=False,
      classifier='token',
      representation_size=placeholder(int),
      head_bias_init=0.0,
      dropout_rate=placeholder(float),
      attention_dropout_rate=0.0,
      gelu_approximate=True,
      posemb='learn',
      attention_implementation=placeholder(str),
      attention_pad_multiple=placeholder(int),
      # Architecture overrides (None: the registry's value), for small models.
      hidden_size=placeholder(int),
      num_layers=placeholder(int),
      mlp_dim=placeholder(int),
      num_heads=placeholder(int),
      patch_size=placeholder(int),
  ))

  # Data (vit_jax.data): source, split and preprocessing string.
  c.input = ml_collections.ConfigDict(dict(
      data=dict(name='digits', split='train', root=placeholder(str),
                strict=False, check='quick', manual_dir=placeholder(str),
                num_classes=placeholder(int)),
      pp='',
      data_dir=placeholder(str),
      shuffle_buffer_size=50_000,
      prefetch=2,
      threads=0,
  ))

  c.loss = 'softmax_xent'
  c.label_smoothing = 0.0
  c.optim = ml_collections.ConfigDict(dict(
      name='adam', b1=0.9, b2=0.999, eps=1e-8, momentum=0.9, nesterov=False,
      weight_decay=0.0,
      weight_decay_exclude=('.*/bias', '.*/scale', '.*pos_embedding', '.*/cls'),
      grad_clip_norm=placeholder(float),
      mu_dtype=placeholder(str),
      lr_mults=(),
  ))
  c.schedule = ml_collections.ConfigDict(dict(
      base_lr=1e-3, warmup_steps=0, decay_type='cosine', linear_end=0.0))
  c.ema_decay = placeholder(float)

  # Parallelism: mesh axis sizes (-1 = the rest) and sharding rules.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))
  c.sharding = ml_collections.ConfigDict(dict(
      rules=default_sharding_rules(), fsdp_min_size=2**16))

  # Starting point: a released .npz or another run's workdir.
  c.init_from = placeholder(str)
  # False (transfer, paper App. B.1.1): the checkpoint's whole head (head and
  # pre_logits) is replaced by one zero-initialised linear layer. True: keep
  # the head exactly (continuing a run on the same label space); a head that
  # does not fit the model is then an error.
  c.init_keep_head = False

  # Logging, evaluation, checkpoints.
  c.log_every = 50
  c.evals = ml_collections.ConfigDict()
  c.checkpoint_every = 1000
  c.keep_checkpoints = 2
  c.keep_checkpoint_every = placeholder(int)
  c.export_npz = True

  # Compute budget (vit_jax.budget): a cap and an optional plan to compare.
  c.budget = ml_collections.ConfigDict(dict(
      max_core_hours=placeholder(float),
      max_core_days=placeholder(float),
      plan_core_hours=placeholder(float),
  ))
  return c


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses 'model=B/16,dataset=cifar10' against named defaults.

  Unknown names and values that do not convert to the default's type are
  one-line errors that list the known names.
  """
  result = dict(defaults)
  for item in filter(None, (arg or '').split(',')):
    if '=' not in item:
      raise ValueError(f'config argument {item!r} is not NAME=VALUE; known '
                       f'names: {", ".join(sorted(defaults))}.')
    key, value = item.split('=', 1)
    if key not in defaults:
      raise ValueError(f'unknown config argument {key!r}; known names: '
                       f'{", ".join(sorted(defaults))}.')
    default = defaults[key]
    if isinstance(default, bool):
      value = {'true': True, 'false': False}.get(value.lower(), value)
      if not isinstance(value, bool):
        raise ValueError(f'config argument {key}={value!r} must be true or false.')
    elif isinstance(default, (int, float)) and not isinstance(default, bool):
      try:
        value = type(default)(value)
      except ValueError:
        raise ValueError(f'config argument {key}={value!r} must be a '
                         f'{type(default).__name__}.') from None
    result[key] = value
  return ml_collections.ConfigDict(result)
