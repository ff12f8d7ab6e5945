"""Hugging Face transformers ViT checkpoints <-> the released vit_jax layout.

A transformers checkpoint directory holds `config.json` (`model_type: vit`)
and the weights: `model.safetensors` (or shards listed in
`model.safetensors.index.json`), or the older `pytorch_model.bin`, which is
read only through `torch.load(weights_only=True)` (no arbitrary objects are
unpickled; without torch it is refused). Both the key names transformers 4
writes (and 5 still writes on save: `encoder.layer.{i}.attention.attention.
query`, ...) and 5's module names (`layers.{i}.attention.q_proj`, `mlp.fc1`,
...) are read, as are fused `qkv` projections.

The mapping, key by key (transformers' Linear weights are [out, in], ours
[in, out]; our attention kernels keep the heads as an axis):

  embeddings.patch_embeddings.projection  [D,3,p,p] <-> embedding [p,p,3,D]
  embeddings.cls_token                              <-> cls
  embeddings.position_embeddings                    <-> Transformer/posembed_input/pos_embedding
  encoder.layer.{i}.layernorm_before                <-> encoderblock_{i}/LayerNorm_0
  encoder.layer.{i}.attention.attention.{query,key,value} [H*d, D]
                                                    <-> MultiHeadDotProductAttention_1/{query,key,value} [D, H, d]
  encoder.layer.{i}.attention.output.dense [D, H*d] <-> MultiHeadDotProductAttention_1/out [H, d, D]
  encoder.layer.{i}.layernorm_after                 <-> encoderblock_{i}/LayerNorm_2
  encoder.layer.{i}.intermediate.dense / output.dense <-> MlpBlock_3/Dense_0 / Dense_1
  layernorm                                         <-> Transformer/encoder_norm
  pooler.dense (+ tanh)                             <-> pre_logits (+ tanh)
  classifier                                        <-> head

with a `vit.` prefix in `ViTForImageClassification` files. Where the two
models differ:

- GELU: transformers' `gelu` is the exact (erf) GELU, `gelu_pytorch_tanh` and
  `gelu_new` the tanh approximation, which is our default (the released
  weights were trained with it). Import sets `gelu_approximate` from
  `hidden_act`; export writes `gelu_pytorch_tanh` or `gelu` to match.
- Layer-norm epsilon: ours is flax's 1e-6 and not configurable; transformers
  reads `layer_norm_eps` (1e-12 in the Hub's converted ViTs). Import keeps our
  1e-6 (a relative change of about eps / (2 variance) in each normalised
  activation; the tests measure it), export writes 1e-6, which is exact.
- Pooler: `ViTModel`'s pooler is our pre-logits layer (Dense + tanh on the
  class token), but `ViTForImageClassification` has no pooler: its classifier
  reads the class token directly. So a model with a head and no pre-logits
  exports as `ViTForImageClassification` (same logits), and a model with
  pre-logits exports as `ViTModel` whose `pooler_output` is our pre-logits
  representation; no transformers ViT class applies a head after the pooler,
  so that head is left out (as the released ImageNet-21k models on the Hub
  are: the paper's fine-tuning replaces it anyway).
- `qkv_bias=False` imports as zero biases (the same function).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from typing import Any, Mapping, Optional, Sequence, Union

from absl import logging
import ml_dtypes  # noqa: F401  (registers 'bfloat16' for safetensors' numpy reader)
import numpy as np

from vit_jax.models import registry

PathLike = Union[str, os.PathLike]

CONFIG = 'config.json'
PREPROCESSOR_CONFIG = 'preprocessor_config.json'
SAFETENSORS = 'model.safetensors'
SAFETENSORS_INDEX = 'model.safetensors.index.json'
TORCH_BIN = 'pytorch_model.bin'
TORCH_BIN_INDEX = 'pytorch_model.bin.index.json'
OUR_LAYER_NORM_EPS = 1e-6  # flax.linen.LayerNorm's default, used by every block
_INSTALL = "pip install 'vit_jax[hf]'"

# hidden_act -> gelu_approximate.
_GELU = {'gelu': False, 'gelu_pytorch_tanh': True, 'gelu_new': True}
# transformers 5 module names -> the names on disk (transformers 4's).
_QKV_5 = {'q': 'query', 'k': 'key', 'v': 'value'}
_RENAMES = [
    (re.compile(r'^layers\.(\d+)\.'), r'encoder.layer.\1.'),
    (re.compile(r'\.attention\.(q|k|v)_proj\.'),
     lambda m: f'.attention.attention.{_QKV_5[m.group(1)]}.'),
    (re.compile(r'\.attention\.o_proj\.'), '.attention.output.dense.'),
    (re.compile(r'\.mlp\.fc1\.'), '.intermediate.dense.'),
    (re.compile(r'\.mlp\.fc2\.'), '.output.dense.'),
]
_FUSED_QKV = re.compile(r'^(encoder\.layer\.\d+\.attention)\.(?:attention\.)?qkv\.'
                        r'(weight|bias)$')
_DROPPED = re.compile(r'^(embeddings\.mask_token|decoder\.)')  # masked modelling
_BLOCK = 'Transformer/encoderblock_{}/'
_LAYER = 'encoder.layer.{}.'


# ----------------------------------------------------------------------------
# config.json -> our model.


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


def _pair(value, what: str) -> tuple[int, int]:
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
                patch_size=_pair(config.get('patch_size', 16), 'patch_size'))
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
      image_size=_pair(config.get('image_size', 224), 'image_size'),
      labels=labels, layer_norm_eps=float(config.get('layer_norm_eps', 1e-12)))


# ----------------------------------------------------------------------------
# Reading the weights.


def _safetensors_numpy():
  try:
    from safetensors import numpy as st_numpy  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError(f'transformers checkpoints need the safetensors package: '
                      f'{_INSTALL}.') from None
  return st_numpy


def _read_safetensors(file: str) -> dict[str, np.ndarray]:
  st_numpy = _safetensors_numpy()
  try:
    return dict(st_numpy.load_file(file))
  except Exception as e:  # safetensors raises its own error types
    raise ValueError(f'{file} is not a readable safetensors file '
                     f'({type(e).__name__}: {e}).') from None


def _read_torch_bin(file: str) -> dict[str, np.ndarray]:
  """A pytorch_model.bin through torch's weights-only unpickler, or a refusal."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ValueError(f'{file} is a pickled PyTorch file, which is read only '
                     f'with torch.load(weights_only=True) and torch is not '
                     f'installed; install torch or convert it to '
                     f'model.safetensors.') from None
  try:
    state = torch.load(file, map_location='cpu', weights_only=True)
  except Exception as e:  # the weights-only unpickler refuses other objects
    raise ValueError(f'{file} cannot be read safely (torch.load with '
                     f'weights_only=True refused it: {type(e).__name__}); '
                     f'convert it to model.safetensors.') from None
  if not isinstance(state, Mapping):
    raise ValueError(f'{file} holds a {type(state).__name__}, not a state '
                     f'dict of tensors.')
  out = {}
  for key, tensor in state.items():
    if tensor.dtype == torch.bfloat16:
      tensor = tensor.float()  # exact; numpy has no bfloat16 of torch's
    out[key] = tensor.detach().cpu().numpy()
  return out


def _read_sharded(path: str, index: str, read) -> dict[str, np.ndarray]:
  with open(os.path.join(path, index), encoding='utf-8') as f:
    weight_map = json.load(f).get('weight_map', {})
  out = {}
  for shard in sorted(set(weight_map.values())):
    out.update(read(os.path.join(path, shard)))
  return out


def read_state_dict(path: PathLike) -> dict[str, np.ndarray]:
  """The weights of a transformers checkpoint directory as numpy arrays."""
  path = os.fspath(path)
  if os.path.isfile(os.path.join(path, SAFETENSORS)):
    return _read_safetensors(os.path.join(path, SAFETENSORS))
  if os.path.isfile(os.path.join(path, SAFETENSORS_INDEX)):
    return _read_sharded(path, SAFETENSORS_INDEX, _read_safetensors)
  if os.path.isfile(os.path.join(path, TORCH_BIN)):
    return _read_torch_bin(os.path.join(path, TORCH_BIN))
  if os.path.isfile(os.path.join(path, TORCH_BIN_INDEX)):
    return _read_sharded(path, TORCH_BIN_INDEX, _read_torch_bin)
  raise FileNotFoundError(f'{path} has config.json but no weights: expected '
                          f'{SAFETENSORS} (or {TORCH_BIN}).')


def _disk_names(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Strips `vit.`, maps transformers 5 module names and fused qkv to 4's."""
  out = {}
  for key, value in state.items():
    key = key[len('vit.'):] if key.startswith('vit.') else key
    for pattern, repl in _RENAMES:
      key = pattern.sub(repl, key)
    fused = _FUSED_QKV.match(key)
    if fused:
      for name, part in zip(('query', 'key', 'value'),
                            np.split(np.asarray(value), 3, axis=0)):
        out[f'{fused.group(1)}.attention.{name}.{fused.group(2)}'] = part
    else:
      out[key] = value
  return out


def to_released(state: Mapping[str, np.ndarray], config: Mapping[str, Any],
                source: str = 'the checkpoint') -> dict[str, np.ndarray]:
  """A transformers ViT state dict -> our flat released layout ('a/b' keys)."""
  state = _disk_names(state)
  heads = int(config.get('num_attention_heads', 12))
  for key in [k for k in state if _DROPPED.match(k)]:
    logging.info('%s: left out %s (masked image modelling only).', source, key)
    del state[key]
  out, used = {}, set()

  def take(key):
    if key not in state:
      raise ValueError(f'{source} lacks {key}; it is not a complete '
                       f'transformers ViT checkpoint.')
    used.add(key)
    return np.asarray(state[key])

  def linear(ours, theirs, kernel_shape=None, bias_shape=None):
    kernel = take(f'{theirs}.weight').T
    bias = (take(f'{theirs}.bias') if f'{theirs}.bias' in state else
            np.zeros(kernel.shape[-1], kernel.dtype))  # qkv_bias=False
    out[f'{ours}/kernel'] = kernel.reshape(kernel_shape or kernel.shape)
    out[f'{ours}/bias'] = bias.reshape(bias_shape or bias.shape)

  def norm(ours, theirs):
    out[f'{ours}/scale'] = take(f'{theirs}.weight')
    out[f'{ours}/bias'] = take(f'{theirs}.bias')

  prefix = 'embeddings.patch_embeddings.projection'
  out['embedding/kernel'] = take(f'{prefix}.weight').transpose(2, 3, 1, 0)
  out['embedding/bias'] = take(f'{prefix}.bias')
  out['cls'] = take('embeddings.cls_token')
  out['Transformer/posembed_input/pos_embedding'] = take(
      'embeddings.position_embeddings')
  hidden = out['cls'].shape[-1]
  if hidden % heads:
    raise ValueError(f'{source}: hidden size {hidden} is not divisible by '
                     f'num_attention_heads={heads} (config.json).')
  head_dim = hidden // heads
  layers = sorted({int(m.group(1)) for k in state
                   for m in [re.match(r'^encoder\.layer\.(\d+)\.', k)] if m})
  if layers != list(range(len(layers))):
    raise ValueError(f'{source}: encoder layers {layers} are not numbered '
                     f'0..{len(layers) - 1}.')
  for i in layers:
    ours, theirs = _BLOCK.format(i), _LAYER.format(i)
    attention = f'{ours}MultiHeadDotProductAttention_1/'
    norm(f'{ours}LayerNorm_0', f'{theirs}layernorm_before')
    for name in ('query', 'key', 'value'):
      linear(attention + name, f'{theirs}attention.attention.{name}',
             (hidden, heads, head_dim), (heads, head_dim))
    linear(attention + 'out', f'{theirs}attention.output.dense',
           (heads, head_dim, hidden))
    norm(f'{ours}LayerNorm_2', f'{theirs}layernorm_after')
    linear(f'{ours}MlpBlock_3/Dense_0', f'{theirs}intermediate.dense')
    linear(f'{ours}MlpBlock_3/Dense_1', f'{theirs}output.dense')
  norm('Transformer/encoder_norm', 'layernorm')
  if 'pooler.dense.weight' in state:
    linear('pre_logits', 'pooler.dense')
  if 'classifier.weight' in state:
    linear('head', 'classifier')
  unused = sorted(set(state) - used)
  if unused:
    raise ValueError(f'{source} has {len(unused)} weights vit_jax does not '
                     f'know ({", ".join(unused[:3])}); only transformers ViT '
                     f'checkpoints are read.')
  return out


def load_released(path: PathLike) -> dict[str, np.ndarray]:
  """Reads a transformers ViT directory into our flat released layout."""
  config = read_config(path)
  eps = config.get('layer_norm_eps', 1e-12)
  if eps != OUR_LAYER_NORM_EPS:
    logging.info('%s: layer_norm_eps=%g; vit_jax layer norms use %g.', path,
                 eps, OUR_LAYER_NORM_EPS)
  return to_released(read_state_dict(path), config, os.fspath(path))


def model_for_checkpoint(path: PathLike) -> Architecture:
  """The architecture of a transformers ViT directory (config.json + weights)."""
  config = read_config(path)
  state = _disk_names(read_state_dict(path))
  arch = architecture(config, has_pooler='pooler.dense.weight' in state)
  if 'classifier.weight' in state:
    arch = dataclasses.replace(
        arch, num_classes=int(np.shape(state['classifier.weight'])[0]))
  return arch


# ----------------------------------------------------------------------------
# Writing.


@dataclasses.dataclass(frozen=True)
class _Shape:
  hidden: int
  layers: int
  mlp: int
  heads: int
  patch: tuple[int, int]
  grid: tuple[int, int]
  representation: Optional[int]
  classes: Optional[int]


def _shape_of(flat: Mapping[str, np.ndarray],
              grid: Optional[Sequence[int]]) -> _Shape:
  for key in ('embedding/kernel', 'cls', 'Transformer/posembed_input/pos_embedding'):
    if key not in flat:
      why = ('class token' if key == 'cls' else
             'learned position embedding' if 'posembed' in key else key)
      raise ValueError(f'the checkpoint has no {why}, which a transformers ViT '
                       f'needs (models with classifier=token, posemb=learn).')
  if any(k.startswith(('conv_root', 'block1/')) for k in flat):
    raise ValueError('hybrid (ResNet + ViT) checkpoints have no transformers '
                     'ViT equivalent; export them with --format=npz.')
  kernel = flat['embedding/kernel']
  query = flat[f'{_BLOCK.format(0)}MultiHeadDotProductAttention_1/query/kernel']
  tokens = flat['Transformer/posembed_input/pos_embedding'].shape[1] - 1
  if grid is None:
    side = math.isqrt(tokens)
    if side * side != tokens:
      raise ValueError(f'the position embedding has {tokens} grid tokens, not '
                       f'a square; pass the grid (height, width).')
    grid = (side, side)
  layers = len({k.split('/')[1] for k in flat
                if k.startswith('Transformer/encoderblock_')})
  pre = flat.get('pre_logits/kernel')
  head = flat.get('head/kernel')
  return _Shape(
      hidden=int(kernel.shape[-1]), layers=layers,
      mlp=int(flat[f'{_BLOCK.format(0)}MlpBlock_3/Dense_0/kernel'].shape[-1]),
      heads=int(query.shape[1]), patch=(int(kernel.shape[0]), int(kernel.shape[1])),
      grid=tuple(grid), representation=None if pre is None else int(pre.shape[-1]),
      classes=None if head is None else int(head.shape[-1]))


def from_released(flat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Our flat released layout -> a transformers state dict (names on disk).

  `ViTForImageClassification` names (`vit.` prefix, `classifier`) when the
  model has a head and no pre-logits; otherwise `ViTModel` names, with the
  pre-logits layer as the pooler and the head left out (module docstring).
  """
  flat = {k: np.asarray(v) for k, v in flat.items()}
  shape = _shape_of(flat, None)
  classify = shape.classes is not None and shape.representation is None
  prefix = 'vit.' if classify else ''
  out = {}

  def linear(theirs, ours, name_prefix=prefix):
    kernel = flat[f'{ours}/kernel']
    if ours.endswith('/out'):  # [H, d, D]: the heads are input axes
      kernel = kernel.reshape(-1, kernel.shape[-1])
    else:  # [D, out] or [D, H, d]: the heads are output axes
      kernel = kernel.reshape(kernel.shape[0], -1)
    out[f'{name_prefix}{theirs}.weight'] = kernel.T
    out[f'{name_prefix}{theirs}.bias'] = flat[f'{ours}/bias'].reshape(-1)

  def norm(theirs, ours):
    out[f'{prefix}{theirs}.weight'] = flat[f'{ours}/scale']
    out[f'{prefix}{theirs}.bias'] = flat[f'{ours}/bias']

  out[f'{prefix}embeddings.patch_embeddings.projection.weight'] = (
      flat['embedding/kernel'].transpose(3, 2, 0, 1))
  out[f'{prefix}embeddings.patch_embeddings.projection.bias'] = flat[
      'embedding/bias']
  out[f'{prefix}embeddings.cls_token'] = flat['cls']
  out[f'{prefix}embeddings.position_embeddings'] = flat[
      'Transformer/posembed_input/pos_embedding']
  for i in range(shape.layers):
    ours, theirs = _BLOCK.format(i), _LAYER.format(i)
    attention = f'{ours}MultiHeadDotProductAttention_1/'
    norm(f'{theirs}layernorm_before', f'{ours}LayerNorm_0')
    for name in ('query', 'key', 'value'):
      linear(f'{theirs}attention.attention.{name}', attention + name)
    linear(f'{theirs}attention.output.dense', attention + 'out')
    norm(f'{theirs}layernorm_after', f'{ours}LayerNorm_2')
    linear(f'{theirs}intermediate.dense', f'{ours}MlpBlock_3/Dense_0')
    linear(f'{theirs}output.dense', f'{ours}MlpBlock_3/Dense_1')
  norm('layernorm', 'Transformer/encoder_norm')
  if shape.representation is not None:
    linear('pooler.dense', 'pre_logits')
  if classify:
    linear('classifier', 'head', name_prefix='')
  elif shape.classes is None and shape.representation is None:
    logging.info('transformers export: no head and no pre-logits layer; load '
                 'it with ViTModel.from_pretrained(DIR, add_pooling_layer=False).')
  elif shape.classes is not None:
    logging.info('transformers export: the head (%d classes) after the '
                 'pre-logits layer is left out; ViTModel has no classifier.',
                 shape.classes)
  return {k: np.ascontiguousarray(v) for k, v in out.items()}


def transformers_config(flat: Mapping[str, np.ndarray], *,
                        gelu_approximate: bool,
                        labels: Optional[Sequence[str]] = None,
                        grid: Optional[Sequence[int]] = None) -> dict[str, Any]:
  """The config.json of `from_released(flat)`."""
  shape = _shape_of(flat, grid)
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


def _write_json(file: str, obj: Any) -> None:
  tmp = f'{file}.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write('\n')
  os.replace(tmp, file)


def save_transformers(out_dir: PathLike, flat: Mapping[str, np.ndarray], *,
                      gelu_approximate: bool,
                      labels: Optional[Sequence[str]] = None) -> dict[str, Any]:
  """Writes config.json, model.safetensors (float32) and preprocessor_config.json.

  Returns the config written. `flat` is our released layout (per layer).
  """
  st_numpy = _safetensors_numpy()
  out_dir = os.fspath(out_dir)
  config = transformers_config(flat, gelu_approximate=gelu_approximate,
                               labels=labels)
  state = {k: v.astype(np.float32) if v.dtype != np.float32 else v
           for k, v in from_released(flat).items()}
  os.makedirs(out_dir, exist_ok=True)
  tmp = os.path.join(out_dir, f'{SAFETENSORS}.tmp')
  st_numpy.save_file(state, tmp, metadata={'format': 'pt'})
  os.replace(tmp, os.path.join(out_dir, SAFETENSORS))
  _write_json(os.path.join(out_dir, CONFIG), config)
  image = config['image_size']
  _write_json(os.path.join(out_dir, PREPROCESSOR_CONFIG),
              preprocessor_config(_pair(image, 'image_size')))
  return config
