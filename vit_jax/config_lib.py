"""The training config's schema and defaults, and the config files' named arguments.

Every key a training run reads is declared here with its type, so
`--config.key=value` with an unknown key or a value of the wrong type fails
before anything is compiled. Config files in configs/ start from
`base_config()` and set what their recipe needs.
"""

from __future__ import annotations

import difflib
import math
from typing import Any

import ml_collections
from ml_collections import config_dict

from vit_jax.sharding_rules import default_sharding_rules  # jax-free

placeholder = config_dict.placeholder


def base_config() -> ml_collections.ConfigDict:
  """All keys of a training run, with neutral defaults."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 1000
  c.batch_size = 512           # Global batch, over all hosts and devices.
  c.accum_steps = 1            # Micro-batches per step (gradient accumulation).
  # Where micro-batch gradients are summed (vit_jax.train_step): 'local' on
  # each batch shard, reduced once per step; 'reduced' after every
  # micro-batch (keeps FSDP's gradient sharded, accum_steps x the traffic).
  c.accumulate = 'local'
  c.image_size = 224
  c.num_classes = placeholder(int)  # None: taken from the training data.

  # Model: a registered name plus any VisionTransformer field to override.
  c.model = ml_collections.ConfigDict(dict(
      name='ViT-B/16',
      dtype=placeholder(str),  # None: the backend's (models/fast_path.py).
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
      # Rules of vit_jax.rules: names (or '/'-bounded suffixes) without decay.
      weight_decay_exclude=('bias|scale|cls|pos_embedding',),
      grad_clip_norm=placeholder(float),
      mu_dtype=placeholder(str),
      lr_mults=(),
  ))
  c.schedule = ml_collections.ConfigDict(dict(
      base_lr=1e-3, warmup_steps=0, decay_type='cosine', linear_end=0.0))
  c.ema_decay = placeholder(float)

  # Parallelism: mesh axis sizes (-1 = the rest) and sharding rules.
  # num_slices > 1: slices joined by the data-centre network (multislice),
  # crossed by dcn_axis (data: one gradient all-reduce per step over DCN).
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1,
                                          num_slices=1, dcn_axis='data'))
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
  # A jax.profiler trace of steps [start_step, start_step + num_steps) into
  # WORKDIR/plugins/profile (vit_jax/profiling.py); start_step None: off.
  c.profile = ml_collections.ConfigDict(dict(start_step=placeholder(int),
                                             num_steps=3))
  # Resume from this kept step instead of the latest; the later ones are
  # moved aside to WORKDIR/checkpoints_aside/ (never deleted).
  c.resume_from_step = placeholder(int)
  # Resume even if the config differs from the workdir's config.json in more
  # than total steps, cadences and budget (vit_jax.resume_check).
  c.allow_config_change = False

  # Compute budget (vit_jax.budget): a cap and an optional plan to compare.
  c.budget = ml_collections.ConfigDict(dict(
      max_core_hours=placeholder(float),
      max_core_days=placeholder(float),
      plan_core_hours=placeholder(float),
  ))

  # Transfer (vit_jax.transfer): what trains on top of this run's result.
  # VTAB-1k of the final parameters when `vtab.mode` is set (modes:
  # vit_jax/transfer/vtab.py; 'paper' is the paper's protocol).
  c.vtab = ml_collections.ConfigDict(dict(
      mode=placeholder(str), tasks='all', skip_missing=False,
      keep_checkpoints=False, data_dir=placeholder(str),
      steps=placeholder(int), image_size=placeholder(int),
      batch_size=placeholder(int), learning_rates=(), decay_types=(),
      warmup_steps=placeholder(int), selection=placeholder(str),
  ))
  # A learning-rate sweep before this run (configs/finetune.py protocol=sweep):
  # each rate trains on `train_split` and is scored on `eval_split` (the dev
  # protocol); this config then trains with the best rate. Empty: no sweep.
  c.sweep = ml_collections.ConfigDict(dict(
      learning_rates=(), train_split='', eval_split=''))
  return c


#: Evaluator types -> their config keys with typed defaults (None: optional,
#: of the type given in EVALUATOR_TYPES). `type` and `every` are common to all.
EVALUATOR_KEYS = {
    'classify': dict(data=dict, split=str, pp=str, batch_size=int,
                     num_classes=int, top_k=int),
    # view: 'resize' (default: the whole image, as classify) or
    # 'central_crop' (shorter side to 8/7, central crop); pp replaces it.
    'real': dict(data=dict, split=str, pp=str, view=str, batch_size=int,
                 real_json=str),
    # skip_missing: run the prepared datasets and list the others (default:
    # a one-line error naming every unprepared dataset before anything runs).
    'fewshot': dict(datasets=dict, batch_size=int, seeds=int, l2_reg=float,
                    tuned_l2=bool, l2_grid=tuple, holdout_per_class=int,
                    seed=int, skip_missing=bool),
}
_COMMON_EVALUATOR_KEYS = dict(type=str, every=int)


def _type_ok(value: Any, kind: type) -> bool:
  if value is None:
    return True
  if kind is dict:
    return isinstance(value, (dict, ml_collections.ConfigDict))
  if kind is tuple:
    return isinstance(value, (tuple, list))
  if kind is float:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if kind is int:
    return isinstance(value, int) and not isinstance(value, bool)
  return isinstance(value, kind)


def _did_you_mean(key: str, known) -> str:
  close = difflib.get_close_matches(key, list(known), n=1)
  return f' (did you mean {close[0]!r}?)' if close else ''


def check_evaluator(name: str, config: Any) -> None:
  """One-line error for an unknown type, an unknown key or a mistyped value."""
  values = dict(config.items()) if hasattr(config, 'items') else dict(config)
  kind = values.get('type') or name
  if kind not in EVALUATOR_KEYS:
    hint = (' VTAB-1k trains, so it is not an evaluator: set vtab.mode '
            "(e.g. --config.vtab.mode=paper) instead." if kind == 'vtab' else '')
    raise ValueError(f'evals.{name}: unknown evaluator type {kind!r}; choose '
                     f'one of {", ".join(EVALUATOR_KEYS)}.{hint}')
  keys = {**_COMMON_EVALUATOR_KEYS, **EVALUATOR_KEYS[kind]}
  for key, value in values.items():
    if key not in keys:
      raise ValueError(f'evals.{name}: unknown key {key!r}'
                       f'{_did_you_mean(key, keys)} for a {kind} evaluator; '
                       f'known keys: {", ".join(sorted(keys))}.')
    if not _type_ok(value, keys[key]):
      raise ValueError(f'evals.{name}.{key}={value!r} must be a '
                       f'{keys[key].__name__}.')


def evaluator_config(kind: str, **values: Any) -> ml_collections.ConfigDict:
  """A checked evaluator section: evaluator_config('classify', split='test')."""
  config = ml_collections.ConfigDict(dict(type=kind, **values))
  check_evaluator(kind, config)
  return config


def check_schema(config: Any, reference: Any = None, prefix: str = '') -> None:
  """Raises when `config` lacks a key of the schema, adds one, or changes a type.

  Config files must update the sections of base_config(), not replace them,
  so that every documented `--config.KEY=VALUE` override exists.
  """
  reference = base_config() if reference is None else reference
  for key in reference.keys():
    if key not in config:
      raise ValueError(f'config lacks {prefix}{key}: a config file replaced '
                       f'its section; update it instead (c.{prefix}{key} '
                       f'is in vit_jax/config_lib.py).')
  for key in config.keys():
    path = f'{prefix}{key}'
    if key not in reference:
      raise ValueError(f'unknown config key {path!r}'
                       f'{_did_you_mean(key, reference.keys())}; the keys and '
                       f'their types are declared in vit_jax/config_lib.py.')
    ref, value = reference[key], config[key]
    if path == 'evals':
      for name, ev in value.items():
        check_evaluator(name, ev)
    elif isinstance(ref, ml_collections.ConfigDict):
      if not isinstance(value, ml_collections.ConfigDict):
        raise ValueError(f'config.{path} must be a section, got {value!r}.')
      check_schema(value, ref, f'{path}.')
  if not prefix:
    check_cadences(config)


def check_cadences(config: Any) -> None:
  """Evaluators run at log steps: an `every` that is not a multiple of
  `log_every` would be skipped until their common multiple."""
  log_every = config.get('log_every')
  if not isinstance(log_every, int) or log_every < 1:
    raise ValueError(f'log_every={log_every!r} must be a positive integer.')
  for name, ev in (config.get('evals') or {}).items():
    every = ev.get('every')
    if every and every % log_every:
      first = every * log_every // math.gcd(every, log_every)
      raise ValueError(
          f'evals.{name}.every={every} is not a multiple of log_every='
          f'{log_every}: evaluators run at log steps, so it would first run '
          f'at step {first}; set evals.{name}.every to a multiple of '
          f'{log_every} (e.g. {max(1, round(every / log_every)) * log_every})'
          f' or log_every to a divisor of {every} (e.g. '
          f'{math.gcd(every, log_every)}).')


def model_name(short: str) -> str:
  """'B/16' -> 'ViT-B/16', 'R50+B/16' -> 'R50+ViT-B/16'; full names pass."""
  if not short or 'ViT' in short:
    return short
  return short.replace('+', '+ViT-') if '+' in short else f'ViT-{short}'


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
