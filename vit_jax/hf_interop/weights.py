"""transformers ViT weights: read them (safetensors, or a .bin only without unpickling objects) and map them to and from our released layout.

Both the names on disk (transformers 4's, which 5 still writes:
`encoder.layer.{i}.attention.attention.query`, ...) and transformers 5's
module names (`layers.{i}.attention.q_proj`, `mlp.fc1`, ...) are read, and a
fused `qkv` projection is split. Keys in our layout are '/'-joined paths.
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

PathLike = Union[str, os.PathLike]

SAFETENSORS = 'model.safetensors'
SAFETENSORS_INDEX = 'model.safetensors.index.json'
TORCH_BIN = 'pytorch_model.bin'
TORCH_BIN_INDEX = 'pytorch_model.bin.index.json'
_INSTALL = "pip install 'vit_jax[hf]'"
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


def safetensors_numpy():
  try:
    from safetensors import numpy as st_numpy  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError(f'transformers checkpoints need the safetensors package: '
                      f'{_INSTALL}.') from None
  return st_numpy


def _read_safetensors(file: str) -> dict[str, np.ndarray]:
  st_numpy = safetensors_numpy()
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


def disk_names(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
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
  state = disk_names(state)
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


def shape_of(flat: Mapping[str, np.ndarray],
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
  shape = shape_of(flat, None)
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

