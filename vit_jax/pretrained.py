"""A checkpoint's model and parameters: a released .npz, or a run's workdir described by its config.json.

    info = pretrained.describe('runs/quickstart')        # model, classes, size
    model, params, info = pretrained.load('runs/quickstart')
    model, params, info = pretrained.load('ViT-B_16.npz', model='ViT-B/16')

A run's workdir holds `config.json` (written by the training loop), so its
model (registry name and every override), class count and resolution are
read from it, and its class names from `class_names.json` beside it
(`vit_jax.class_names`): predicting, evaluating and fine-tuning from a run
need no copied flags. Its parameters are the set it evaluated: the
Polyak-averaged ones when it kept an average (`read`). Its exported
`params.npz` is described by the same files. For a released `.npz` alone, the
model name comes from `model=` or the file name (`ViT-B_16.npz`), and the
classifier, representation layer, class count and resolution from the
arrays themselves; when the architecture does not fit, the error prints the
overrides that would (read off the file's shapes).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Any, Optional

import numpy as np

from vit_jax import checkpoint, files, hf_interop, models, train_checkpoint
from vit_jax import class_names as class_names_lib
from vit_jax import workdir as workdir_lib

_log = logging.getLogger(__name__)


@dataclasses.dataclass
class Described:
  """What a checkpoint says about its model."""
  source: str
  model: dict                      # a config `model` section: name + overrides
  num_classes: Optional[int]       # the head's width (None: no head)
  image_size: int                  # the resolution of its position embeddings
  class_names: Optional[list] = None
  run_config: Optional[dict] = None
  #: The resolution the checkpoint's position embeddings were made for (what
  #: `image_size` says before `load` is given another one).
  checkpoint_image_size: Optional[Any] = None

  @property
  def label(self) -> str:
    """The name it is reported under (not a registered name if overridden)."""
    return models.describe(self.model['name'], models.model_overrides(
        self.model))


def is_run(path: str) -> bool:
  """A vit_jax run's workdir: a directory with config.json (not transformers')."""
  return (os.path.isdir(path)
          and os.path.exists(os.path.join(path, workdir_lib.CONFIG))
          and not hf_interop.is_transformers_dir(path))


def run_config(path: str) -> Optional[dict]:
  """The config a run's (or a transformers) directory describes itself with."""
  if hf_interop.is_transformers_dir(path):
    return hf_interop.as_run_config(hf_interop.read_config(path))
  if is_run(path):
    return files.read_json(os.path.join(path, workdir_lib.CONFIG))
  return None


def read(path: str) -> tuple[dict, Optional[dict]]:
  """(parameter tree, the run's config as a dict, or None) of `path`.

  A run's workdir gives the parameters its evaluators scored and its
  `params.npz` holds: the Polyak-averaged (EMA) set when the run kept one
  (`ema_decay`), else the trained parameters, of its newest good checkpoint
  (or of `params.npz` when it has no checkpoints/). Fine-tuning from a run
  (`init_from`) starts from the same set, as the paper fine-tunes from the
  averaged weights when averaging was used, and a run directory and its
  `params.npz` give the same start. One INFO line says which set was read.
  A run's `params.npz` is described by the run's config.json beside it. A
  transformers ViT directory's config.json is read as the run config's
  `model`, `image_size` and `class_names` (`hf_interop.as_run_config`).
  """
  if hf_interop.is_transformers_dir(path):
    return checkpoint.load_npz(path), hf_interop.as_run_config(
        hf_interop.read_config(path))
  if path.endswith('.npz'):
    tree = checkpoint.load_npz(path)  # Says when the file is missing.
    run = run_of_export(path)
    if run is None:
      return tree, None
    config = files.read_json(os.path.join(run, workdir_lib.CONFIG))
    _log_read(config, config.get('total_steps'), path,
              config.get('ema_decay') is not None)
    return tree, config
  if not os.path.isdir(path):
    raise FileNotFoundError(f'checkpoint {path} is neither an .npz file nor '
                            f'a run directory.')
  config = files.read_json(os.path.join(path, workdir_lib.CONFIG))
  if os.path.isdir(os.path.join(path, workdir_lib.CHECKPOINTS)):
    restored = train_checkpoint.read_params(path)
    _log_read(config, restored.step, path, restored.averaged)
    return restored.params, config
  exported = os.path.join(path, workdir_lib.PARAMS)
  if os.path.exists(exported):
    _log_read(config, (config or {}).get('total_steps'), exported,
              (config or {}).get('ema_decay') is not None)
    return checkpoint.load_npz(exported), config
  raise FileNotFoundError(f'{path} holds neither checkpoints/ nor '
                          f'{workdir_lib.PARAMS}; pass a run directory or an '
                          f'.npz file.')


def run_of_export(path: str) -> Optional[str]:
  """The run directory whose exported params.npz `path` is, or None."""
  if os.path.basename(path) != workdir_lib.PARAMS:
    return None
  directory = os.path.dirname(os.path.abspath(path))
  return directory if is_run(directory) else None


def _log_read(config: Optional[dict], step: Optional[int], source: str,
              averaged: bool) -> None:
  """One line: which parameters of the run were read (averaged or not)."""
  decay = (config or {}).get('ema_decay')
  which = (f'the Polyak-averaged (EMA {decay}) parameters' if averaged
           else 'the parameters')
  of_step = f' of step {step}' if step is not None else ''
  plain = '' if averaged else ' (the run keeps no Polyak average)'
  _log.info('read %s%s from %s%s', which, of_step, source, plain)


def show_what_is_read() -> None:
  """For command lines without absl's logging: the line of `read` on stderr."""
  if not logging.getLogger().handlers:
    logging.basicConfig()
  _log.setLevel(logging.INFO)


def _name_from_file(path: str) -> Optional[str]:
  stem = os.path.basename(path.rstrip('/')).rsplit('.', 1)[0]
  for candidate in (stem, stem.split('_', 1)[-1] if stem.count('_') > 1
                    else stem):
    try:
      return models.get_spec(candidate).name
    except ValueError:
      continue
  return None


def _arrays_model(tree: dict) -> dict:
  """The model options the arrays themselves decide."""
  out = {'classifier': 'token' if 'cls' in tree else 'gap',
         'posemb': 'learn' if 'posembed_input' in tree.get('Transformer', {})
         else 'sincos2d'}
  pre_logits = tree.get('pre_logits')
  out['representation_size'] = (int(pre_logits['kernel'].shape[-1])
                                if pre_logits else None)
  return out


def fitting_overrides(tree: dict) -> dict:
  """Architecture overrides read off the arrays' shapes (for error messages)."""
  flat = checkpoint.flatten_params(tree)
  kernel = np.shape(flat.get('embedding/kernel'))
  blocks = {k.split('/')[1] for k in flat if k.startswith('Transformer/encoderblock_')}
  mlp = np.shape(flat.get('Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel'))
  query = np.shape(flat.get(
      'Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel'))
  out = {}
  if len(kernel) == 4:
    out.update(patch_size=int(kernel[0]), hidden_size=int(kernel[-1]))
  if blocks:
    out['num_layers'] = len(blocks)
  if len(mlp) == 2:
    out['mlp_dim'] = int(mlp[1])
  if len(query) == 3:
    out['num_heads'] = int(query[1])
  return out


def native_image_size(tree: dict, model: dict) -> int:
  """The resolution the position-embedding grid was made for.

  The grid times the model's pixels per token (the patch size, overrides
  included, times the ResNet stem's stride for hybrids).
  """
  posemb = tree.get('Transformer', {}).get('posembed_input', {}).get(
      'pos_embedding')
  module, _ = models.build(model, 1)
  if posemb is None:
    return 224  # Fixed sin-cos embeddings fit any size.
  grid = posemb.shape[1] - (1 if 'cls' in tree else 0)
  side = math.isqrt(grid)
  if side * side != grid:
    raise ValueError(f'the checkpoint has a non-square grid of {grid} tokens; '
                     f'give the image size explicitly.')
  ph, pw = models.pixels_per_token(module)
  if ph != pw:
    raise ValueError(f'the model has non-square {ph}x{pw}-pixel tokens; give '
                     f'the image size explicitly.')
  return side * ph


def describe(path: str, tree: Optional[dict] = None,
             run_config: Optional[dict] = None, model: Optional[Any] = None,
             ) -> Described:
  """The model of a checkpoint: the run's config, `model`, the file, the arrays.

  `model` (a registry name or a `model` section) overrides the run's.
  """
  if tree is None:
    tree, run_config = read(path)
  models.check_requested_model(model, (run_config or {}).get('model'), path)
  section = dict((run_config or {}).get('model') or {})
  if isinstance(model, str):
    model = {'name': model} if model else {}
  for key, value in dict(model or {}).items():
    if value not in (None, ''):
      section[key] = value
  if not section.get('name'):
    section['name'] = _name_from_file(path)
  if not section.get('name'):
    raise ValueError(f'cannot tell the model of {path}: pass the model '
                     f'(e.g. ViT-B/16), or a run directory with '
                     f'{workdir_lib.CONFIG}.')
  for key, value in _arrays_model(tree).items():
    section.setdefault(key, value)
    if section.get(key) is None:
      section[key] = value
  head = tree.get('head', {}).get('kernel')
  num_classes = int(head.shape[-1]) if head is not None else None
  image_size = (run_config or {}).get('image_size')
  if not image_size or not isinstance(image_size, int):
    image_size = native_image_size(tree, section)
  class_names = _class_names(run_config, path)
  return Described(source=path, model=section, num_classes=num_classes,
                   image_size=image_size, class_names=class_names,
                   run_config=run_config, checkpoint_image_size=image_size)


def _class_names(run_config: Optional[dict], path: str) -> Optional[list]:
  """The class names a run kept (class_names.json), or a transformers
  directory's (id2label), or, for a run on an image folder from before runs
  kept them, its class sub-directories."""
  if (run_config or {}).get('class_names'):  # a transformers config's id2label
    return list(run_config['class_names'])
  run = path if is_run(path) else run_of_export(path)
  kept = class_names_lib.read_class_names(run) if run else None
  if kept:
    return kept
  data = ((run_config or {}).get('input') or {}).get('data') or {}
  root = data.get('root')
  if data.get('name') != 'folder' or not root:
    return None
  split = str(data.get('split') or 'train').split('[')[0].split('+')[0]
  directory = os.path.join(root, split)
  if not os.path.isdir(directory):
    return None
  return sorted(d for d in os.listdir(directory)
                if os.path.isdir(os.path.join(directory, d)))


def load(path: str, model: Optional[Any] = None,
         image_size: Optional[int] = None, **build_overrides):
  """(module, parameters as numpy, Described) for inference, head kept.

  `image_size` other than the checkpoint's resamples the position
  embeddings; `build_overrides` are VisionTransformer fields (e.g.
  scan_layers=True) that do not change the parameters' values.
  """
  tree, run_config = read(path)
  info = describe(path, tree, run_config, model)
  if info.num_classes is None:
    raise ValueError(f'{path} has no classification head; it gives features, '
                     f'not classes.')
  size = image_size or info.image_size
  section = {**info.model, **build_overrides}
  module, _ = models.build(section, info.num_classes)
  try:
    params = checkpoint.load_pretrained(
        tree, models.param_shapes(module, size), name=path, keep_head=True)
  except ValueError as e:
    fits = fitting_overrides(tree)
    hint = ', '.join(f'{k}={v}' for k, v in sorted(fits.items()))
    raise ValueError(f'{e} The arrays fit the overrides: {hint}.') from None
  return module, params, dataclasses.replace(info, image_size=size)
