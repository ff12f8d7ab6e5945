"""transformers' ViT config.json <-> our registered models, and the image processor settings.

`architecture(config)` names the registered model and the `get_model`
overrides that build the config's model; `transformers_config` writes the
config.json of our parameters (`vit_jax.hf_interop` lists what maps to what).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from vit_jax.hf_interop import weights
from vit_jax.models import registry

PathLike = Union[str, os.PathLike]

CONFIG = 'config.json'
PREPROCESSOR_CONFIG = 'preprocessor_config.json'
OUR_LAYER_NORM_EPS = 1e-6  # flax.linen.LayerNorm's default, used by every block
# hidden_act -> gelu_approximate.
_GELU = {'gelu': False, 'gelu_pytorch_tanh': True, 'gelu_new': True}


@dataclasses.dataclass(frozen=True)
class Architecture:
  """What config.json says about the model, in vit_jax's terms."""
  #: The registered model nearest to the config (`get_model(name, ...)`).
  name: str
  #: `get_model` overrides: the encoder shape where it differs from `name`'s
  #: registered one, and `gelu_approximate` from `hidden_act`.
  overrides: dict[str, Any]
  #: Classifier outputs (None: a `ViTModel`, which has no classifier).
  num_classes: Optional[int]
  #: The pooler's width when the model has one (our `representation_size`).
  representation_size: Optional[int]
  #: The resolution the position embeddings were made for, (height, width).
  image_size: tuple[int, int]
  #: Class names in index order (config.json's id2label), if any.
  labels: Optional[tuple[str, ...]]
  #: transformers' layer-norm epsilon (ours is OUR_LAYER_NORM_EPS).
  layer_norm_eps: float

  def model_kwargs(self) -> dict[str, Any]:
    """`get_model(self.name, self.num_classes, **self.model_kwargs())`."""
    return dict(self.overrides, classifier='token', posemb='learn',
                representation_size=self.representation_size)


def is_transformers_dir(path: PathLike) -> bool:
  """True for a local directory whose config.json names a `model_type`.

  A vit_jax run's workdir also holds a config.json (the run's config), which
  has no `model_type`.
  """
  file = os.path.join(os.fspath(path), CONFIG)
  if '://' in file or not os.path.isfile(file):
    return False
  try:
    with open(file, encoding='utf-8') as f:
      config = json.load(f)
  except (OSError, ValueError):
    return False
  return isinstance(config, dict) and 'model_type' in config


def read_config(path: PathLike) -> dict[str, Any]:
  """Reads and checks DIR/config.json of a transformers ViT."""
  file = os.path.join(os.fspath(path), CONFIG)
  try:
    with open(file, encoding='utf-8') as f:
      config = json.load(f)
  except FileNotFoundError:
    raise FileNotFoundError(f'{file} not found: a transformers checkpoint '
                            f'directory holds config.json.') from None
  except json.JSONDecodeError as e:
    raise ValueError(f'{file} is not valid JSON ({e}).') from None
  if not isinstance(config, dict) or config.get('model_type') != 'vit':
    kind = config.get('model_type') if isinstance(config, dict) else None
    raise ValueError(f'{file} has model_type {kind!r}; only transformers ViT '
                     f"checkpoints (model_type 'vit') are read.")
  return config


def pair(value, what: str) -> tuple[int, int]:
  if isinstance(value, int):
    return value, value
  if isinstance(value, (list, tuple)) and len(value) == 2:
    return int(value[0]), int(value[1])
  raise ValueError(f'config.json {what}={value!r} is neither an int nor a '
                   f'(height, width) pair.')


def gelu_approximate(hidden_act: str) -> bool:
  """transformers' `hidden_act` -> our `gelu_approximate` (other activations fail)."""
  if hidden_act not in _GELU:
    raise ValueError(f'config.json hidden_act={hidden_act!r} has no vit_jax '
                     f'equivalent; vit_jax reads {sorted(_GELU)}.')
  return _GELU[hidden_act]


def _labels(config: Mapping[str, Any]) -> Optional[tuple[str, ...]]:
  id2label = config.get('id2label')
  if not id2label:
    return None
  return tuple(str(id2label.get(str(i), id2label.get(i, f'LABEL_{i}')))
               for i in range(len(id2label)))


def architecture(config: Mapping[str, Any],
                 has_pooler: Optional[bool] = None) -> Architecture:
  """Our registered model name and overrides for a transformers ViT config.json.

  The name is the registered plain ViT whose hyper-parameters differ least
  from the config (ties: registry order); `overrides` holds the differences,
  so `get_model` builds exactly the config's model. `has_pooler` says
  whether the weights hold a pooler (default: `ViTModel` has one,
  `ViTForImageClassification` does not).
  """
  if config.get('num_channels', 3) != 3:
    raise ValueError(f'config.json num_channels={config["num_channels"]}; '
                     f'vit_jax models read RGB images (3 channels).')
  hidden = int(config.get('hidden_size', 768))
  wanted = dict(hidden_size=hidden,
                num_layers=int(config.get('num_hidden_layers', 12)),
                mlp_dim=int(config.get('intermediate_size', 3072)),
                num_heads=int(config.get('num_attention_heads', 12)),
                patch_size=pair(config.get('patch_size', 16), 'patch_size'))
  specs = [registry.get_spec(n) for n in registry.MODELS]
  specs = [s for s in specs if s.resnet is None]
  def differences(spec):
    return {k: v for k, v in wanted.items() if getattr(spec, k) != v}
  best = min(specs, key=lambda s: len(differences(s)))
  overrides = differences(best)
  overrides['gelu_approximate'] = gelu_approximate(config.get('hidden_act',
                                                              'gelu'))
  archs = config.get('architectures') or ['ViTModel']
  classifies = any('ImageClassification' in a for a in archs)
  if has_pooler is None:
    has_pooler = not classifies
  if has_pooler and config.get('pooler_act', 'tanh') != 'tanh':
    raise ValueError(f'config.json pooler_act={config["pooler_act"]!r}; our '
                     f"pre-logits layer is tanh: only 'tanh' maps to it.")
  labels = _labels(config)
  num_classes = None
  if classifies:
    num_classes = int(config.get('num_labels') or len(labels or ()) or 2)
  return Architecture(
      name=best.name, overrides=overrides, num_classes=num_classes,
      representation_size=(int(config.get('pooler_output_size') or hidden)
                           if has_pooler else None),
      image_size=pair(config.get('image_size', 224), 'image_size'),
      labels=labels, layer_norm_eps=float(config.get('layer_norm_eps', 1e-12)))


def transformers_config(flat: Mapping[str, np.ndarray], *,
                        gelu_approximate: bool,
                        labels: Optional[Sequence[str]] = None,
                        grid: Optional[Sequence[int]] = None) -> dict[str, Any]:
  """The config.json of `from_released(flat)`."""
  shape = weights.shape_of(flat, grid)
  classify = shape.classes is not None and shape.representation is None
  image = (shape.grid[0] * shape.patch[0], shape.grid[1] * shape.patch[1])
  config = {
      'architectures': ['ViTForImageClassification' if classify else 'ViTModel'],
      'model_type': 'vit',
      'hidden_size': shape.hidden,
      'num_hidden_layers': shape.layers,
      'num_attention_heads': shape.heads,
      'intermediate_size': shape.mlp,
      'hidden_act': 'gelu_pytorch_tanh' if gelu_approximate else 'gelu',
      'hidden_dropout_prob': 0.0,
      'attention_probs_dropout_prob': 0.0,
      'initializer_range': 0.02,
      'layer_norm_eps': OUR_LAYER_NORM_EPS,
      'image_size': image[0] if image[0] == image[1] else list(image),
      'patch_size': (shape.patch[0] if shape.patch[0] == shape.patch[1]
                     else list(shape.patch)),
      'num_channels': 3,
      'qkv_bias': True,
      'encoder_stride': shape.patch[0],
      'pooler_output_size': shape.representation or shape.hidden,
      'pooler_act': 'tanh',
      'dtype': 'float32',
  }
  if classify:
    if labels is None:
      labels = [f'LABEL_{i}' for i in range(shape.classes)]
    if len(labels) != shape.classes:
      raise ValueError(f'{len(labels)} label names for a head of '
                       f'{shape.classes} classes; pass one name per class.')
    config['id2label'] = {str(i): name for i, name in enumerate(labels)}
    config['label2id'] = {name: i for i, name in enumerate(labels)}
  return config


def preprocessor_config(image_size: Sequence[int]) -> dict[str, Any]:
  """ViTImageProcessor settings equal to our preprocessing.

  Resize to the model's size (bilinear, PIL's resample code 2), then
  x / 255 scaled to [-1, 1]: (x / 255 - 0.5) / 0.5 = x / 127.5 - 1.
  """
  return {
      'image_processor_type': 'ViTImageProcessor',
      'do_resize': True,
      'size': {'height': int(image_size[0]), 'width': int(image_size[1])},
      'resample': 2,
      'do_rescale': True,
      'rescale_factor': 1 / 255,
      'do_normalize': True,
      'image_mean': [0.5, 0.5, 0.5],
      'image_std': [0.5, 0.5, 0.5],
  }



def as_run_config(config: Mapping[str, Any]) -> dict[str, Any]:
  """config.json as the parts of a vit_jax run's config that describe a model.

  `{'model': {name, overrides, classifier, posemb}, 'image_size',
  'class_names'}` (class names only when id2label holds more than
  transformers' LABEL_i defaults). The representation size and the class
  count are left to the weights.
  """
  arch = architecture(config, has_pooler=False)
  height, width = arch.image_size
  labels = arch.labels
  if labels and all(name == f'LABEL_{i}' for i, name in enumerate(labels)):
    labels = None
  return {'model': dict(arch.overrides, name=arch.name, classifier='token',
                        posemb='learn'),
          'image_size': height if height == width else [height, width],
          'class_names': list(labels) if labels else None}
