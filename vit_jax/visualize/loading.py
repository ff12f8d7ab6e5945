"""Builds the model and parameters to look inside, from a released .npz or a run's workdir.

- A `.npz` in the released layout (or big_vision's): the model is `--model`,
  else the registered name found in the file name (`ViT-B_16.npz`,
  `imagenet21k+imagenet2012_R50+ViT-B_16.npz`), else, for a plain ViT, the
  architecture read from the arrays themselves (width, depth, MLP size,
  heads, patch size). Class count, classifier, representation layer and
  position embedding come from the arrays.
- A run directory (or its exported `params.npz`): its `config.json` names
  the model (with its architecture overrides) and the image size; the
  parameters are the set the run evaluated (its Polyak average when it kept
  one) of its latest checkpoint (`checkpoints/`), or its `params.npz`
  (`pretrained.read`).

The head is kept as saved (the predicted classes are the checkpoint's); the
position embedding is resampled to `image_size` (load_pretrained). The
model computes in float32 whatever the run used.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any, Optional

from vit_jax import checkpoint, models, pretrained
from vit_jax import workdir as workdir_lib
from vit_jax.models import (MODELS, VisionTransformer, get_model, get_spec,
                            param_shapes)

# Run-config model keys that only change how a model computes, not what.
_COMPUTE_ONLY = ('dtype', 'remat_policy', 'scan_layers',
                 'attention_implementation', 'attention_pad_multiple')


@dataclasses.dataclass(frozen=True)
class Loaded:
  """A model with its parameters, and what the pictures need to know of it."""
  model: VisionTransformer
  params: Any
  name: str                 # how the outputs call the model
  image_size: int
  grid: tuple[int, int]     # tokens per side
  stride: int               # input pixels per token
  num_prefix_tokens: int    # 1 with a class token, else 0
  hybrid: bool              # a ResNet stem in front of the patch embedding

  @property
  def description(self) -> dict:
    return {'model': self.name, 'image_size': self.image_size,
            'grid': list(self.grid), 'pixels_per_token': self.stride,
            'classifier': self.model.classifier, 'hybrid': self.hybrid,
            'layers': self.model.num_layers, 'heads': self.model.num_heads}


def load(path: str, model_name: Optional[str] = None,
         image_size: Optional[int] = None) -> Loaded:
  """The model of checkpoint `path` (an .npz or a run directory); see module doc."""
  if os.path.isdir(path) or pretrained.run_of_export(path):
    tree, name, overrides, run_size = _from_workdir(path, model_name)
    label = models.describe(name, overrides)
  elif path.endswith('.npz') or '://' in path or os.path.isfile(path):
    tree = checkpoint.load_npz(path)  # refuses files that are not a ViT
    name, overrides = _npz_model(tree, path, model_name)
    label = _arrays_label(overrides) if overrides else name
    run_size = None
  else:
    raise FileNotFoundError(f'checkpoint not found: {path}; pass a released '
                            f'.npz or the workdir of a vit_jax run.')
  overrides.update(_head_overrides(tree))
  overrides.update(dtype='float32', remat_policy='none', scan_layers=True,
                   attention_implementation=None, attention_pad_multiple=None,
                   dropout_rate=0.0, attention_dropout_rate=0.0)
  num_classes = overrides.pop('num_classes')
  model = get_model(name, num_classes, **overrides)
  stride = model.patch_size[0] * (get_spec(name).stride //
                                  get_spec(name).patch_size[0])
  if model.patch_size[0] != model.patch_size[1]:
    raise ValueError(f'non-square patches {model.patch_size} are not supported.')
  image_size = image_size or run_size or _native_image_size(tree, stride)
  if image_size < stride or image_size % stride:
    raise ValueError(f'--image_size {image_size} does not divide into '
                     f'{stride}x{stride}-pixel tokens of {label}; pass a '
                     f'multiple of {stride}, e.g. {max(1, round(image_size / stride)) * stride}.')
  params = checkpoint.load_pretrained(tree, param_shapes(model, image_size),
                                      name=path, keep_head=True)
  side = image_size // stride
  return Loaded(model=model, params=params, name=label,
                image_size=image_size, grid=(side, side), stride=stride,
                num_prefix_tokens=1 if model.classifier in (
                    'token', 'token_unpooled') else 0,
                hybrid=model.resnet is not None)


def _from_workdir(path: str, model_name: Optional[str]):
  """A run directory, or its exported params.npz: the run's config.json."""
  run_dir = path if os.path.isdir(path) else os.path.dirname(path)
  config_path = os.path.join(run_dir, workdir_lib.CONFIG)
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f'{path} has no config.json: it is not the workdir '
                            f'of a vit_jax run; pass such a directory or an .npz.')
  models.check_requested_model(model_name, (pretrained.run_config(run_dir)
                                            or {}).get('model'), run_dir)
  tree, run = pretrained.read(path)
  model_config = dict(run.get('model') or {})
  name = model_name or model_config.get('name')
  if not name:
    raise ValueError(f'{config_path} names no model; pass --model.')
  get_spec(name)
  overrides = {k: v for k, v in models.model_overrides(model_config).items()
               if k not in _COMPUTE_ONLY}
  size = run.get('image_size')
  if isinstance(size, (list, tuple)):
    if size[0] != size[1]:
      raise ValueError(f'the run trained on {size[0]}x{size[1]} images; only '
                       f'square inputs are supported, pass --image_size.')
    size = size[0]
  return tree, name, overrides, size


def _npz_model(tree: dict, path: str, model_name: Optional[str]):
  """(registered name, architecture overrides) for a released-layout tree."""
  if model_name:
    get_spec(model_name)
    return model_name, {}
  found = _name_in_file_name(path)
  if found:
    return found, {}
  if 'conv_root' in tree:
    raise ValueError(f'cannot tell which hybrid {path} holds from its name; '
                     f'pass --model, e.g. --model R50+ViT-B/16.')
  arch = pretrained.fitting_overrides(tree)
  missing = [k for k in ('hidden_size', 'num_layers', 'mlp_dim', 'num_heads',
                         'patch_size') if k not in arch]
  if missing:
    raise ValueError(f'{path} is not a ViT checkpoint: its arrays give no '
                     f'{", ".join(missing)} (no Transformer/encoderblock_0).')
  arch['patch_size'] = (arch['patch_size'],) * 2
  return 'ViT-B/16', arch


def _name_in_file_name(path: str) -> Optional[str]:
  """The longest registered name (file spelling) inside the file name."""
  base = os.path.basename(path)
  stems = [get_spec(m).file_stem for m in MODELS]
  hits = [s for s in stems if re.search(rf'(^|[^A-Za-z0-9+]){re.escape(s)}'
                                        rf'($|[^A-Za-z0-9])', base)]
  return get_spec(max(hits, key=len)).name if hits else None


def _head_overrides(tree: dict) -> dict:
  """Class count, classifier, representation size and posemb of the arrays."""
  head = tree.get('head')
  pre_logits = tree.get('pre_logits')
  return dict(
      num_classes=int(head['bias'].shape[-1]) if head else None,
      classifier='token' if 'cls' in tree else 'gap',
      representation_size=(int(pre_logits['kernel'].shape[-1])
                           if pre_logits else None),
      posemb='learn' if 'posembed_input' in tree.get('Transformer', {})
      else 'sincos2d')


def _native_image_size(tree: dict, stride: int) -> int:
  """The resolution of the checkpoint's position-embedding grid (224 if fixed)."""
  posemb = tree.get('Transformer', {}).get('posembed_input')
  if posemb is None:
    return 224
  tokens = posemb['pos_embedding'].shape[1] - (1 if 'cls' in tree else 0)
  side = math.isqrt(tokens)
  if side * side != tokens:
    raise ValueError(f'the checkpoint has a non-square grid of {tokens} '
                     f'tokens; pass --image_size.')
  return side * stride


def _arrays_label(arch: dict) -> str:
  """How a ViT rebuilt from its arrays is reported."""
  return (f'ViT (width {arch["hidden_size"]}, depth {arch["num_layers"]}, '
          f'mlp {arch["mlp_dim"]}, heads {arch["num_heads"]}, patch '
          f'{arch["patch_size"][0]}; read from the arrays)')
