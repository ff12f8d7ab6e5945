"""Released ViT .npz checkpoints: read them, write them, and fit them to a model.

Two layouts are read, both as flat archives whose keys are the parameter path
joined by '/':

- the released vit_jax files (the paper's and AugReg's), whose names equal our
  parameter tree: `Transformer/encoderblock_{i}/{LayerNorm_0,
  MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3}`,
  `Transformer/posembed_input/pos_embedding` (class token included), with an
  optional `opt/target/` prefix;
- big_vision files: linen names inside a block (`LayerNorm_0`,
  `MultiHeadDotProductAttention_0`, `LayerNorm_1`, `MlpBlock_0`), a top-level
  `pos_embedding` added before the class token is prepended, an optional
  `params/` prefix, and optionally the scanned layout `Transformer/encoderblock/`
  with a leading layer axis.

A Hugging Face transformers ViT directory (config.json + model.safetensors)
is read into the released layout too (`vit_jax.hf_interop`).

`save_npz` writes the released vit_jax layout in float32 (what timm's
`_load_weights` reads). `load_pretrained` fits a checkpoint to a model: it
resamples the position-embedding grid; for transfer (the default) it replaces
the whole head by a zero-initialised linear layer (paper App. B.1.1), for
evaluation (`keep_head=True`) it keeps the head exactly; it refuses a
checkpoint that does not fit otherwise, listing what is wrong.

The released R50+ViT files store the ResNet stem's GroupNorm scale and bias as
(1, 1, 1, C), an older flax layout; `load_npz` and `load_pretrained` read them
as (C,), for those parameters only.

Archives are opened with `allow_pickle=False`, always. Paths may be local or
URIs (`gs://...`, through `etils.epath`); TensorFlow is never imported here.
"""

from __future__ import annotations

import io
import math
import os
import re
import uuid
import zipfile
from typing import Any, Mapping, Optional, Sequence, Union

from absl import logging
import numpy as np

from vit_jax import hf_interop, models, rules

PathLike = Union[str, os.PathLike]

_ANCHOR = 'embedding/kernel'  # present in every ViT checkpoint, hybrid or not
_POSEMB = 'Transformer/posembed_input/pos_embedding'
# big_vision (linen, per-type numbering) -> released (pre-linen, global numbering).
_BIG_VISION_BLOCK = {
    'LayerNorm_0': 'LayerNorm_0',
    'MultiHeadDotProductAttention_0': 'MultiHeadDotProductAttention_1',
    'LayerNorm_1': 'LayerNorm_2',
    'MlpBlock_0': 'MlpBlock_3',
}
_SCAN_OURS = 'Transformer/encoderblock/block/'
_SCAN_BIG_VISION = 'Transformer/encoderblock/'
_BLOCK_KEY = re.compile(r'^Transformer/encoderblock_(\d+)/([^/]+)/(.*)$')
_ZIP_MAGIC = b'PK\x03\x04'
# The ResNet stem's GroupNorm parameters (hybrids), which the released R50+ViT
# files store as (1, 1, 1, C).
_STEM_GROUPNORM = re.compile(r'^(gn_root|block\d+/unit\d+/gn[^/]*)/(scale|bias)$')
_LIST_LIMIT = 3  # how many keys of each kind an error message names


# ----------------------------------------------------------------------------
# Trees <-> flat '/'-joined dicts.


def flatten_params(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  """Nested dict -> {'a/b/c': leaf}. A flat dict passes through unchanged."""
  flat = {}
  for key, value in tree.items():
    path = f'{prefix}{key}'
    if isinstance(value, Mapping):
      flat.update(flatten_params(value, f'{path}/'))
    else:
      flat[path] = value
  return flat


def unflatten_params(flat: Mapping[str, Any]) -> dict[str, Any]:
  """{'a/b/c': leaf} -> nested dict."""
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    *parents, leaf = path.split('/')
    node = tree
    for name in parents:
      node = node.setdefault(name, {})
    node[leaf] = value
  return tree


# ----------------------------------------------------------------------------
# Reading.


def _epath(path: PathLike):
  """A local path or URI as an etils.epath.Path (etils comes with orbax).

  epath reaches gs:// through tf.io.gfile or gcsfs, imported only then.
  """
  from etils import epath  # pylint: disable=g-import-not-at-top
  try:
    return epath.Path(path)
  except KeyError:
    raise ValueError(f'{path}: unsupported URI scheme; use a local path or one '
                     f'etils.epath knows (gs://, s3://).') from None


def _read_flat(path: PathLike) -> dict[str, np.ndarray]:
  """Reads every array of an .npz archive (never unpickling) into a dict."""
  path = os.fspath(path)
  try:
    if '://' in path:  # remote files are fetched whole: zip reading seeks
      data = io.BytesIO(_epath(path).read_bytes())
    else:
      data = open(path, 'rb')  # pylint: disable=consider-using-with
  except FileNotFoundError:
    raise FileNotFoundError(f'checkpoint file not found: {path}') from None
  except IsADirectoryError:
    raise ValueError(f'{path} is a directory, not an .npz checkpoint file.'
                     ) from None
  with data:
    if data.read(4) != _ZIP_MAGIC:
      raise ValueError(f'{path} is not an .npz archive (no zip header); pass a '
                       f'file written by np.savez or save_npz.')
    data.seek(0)
    try:
      with np.load(data, allow_pickle=False) as archive:
        return {k: archive[k] for k in archive.files}
    except ValueError as e:
      if 'allow_pickle' in str(e):
        raise ValueError(f'{path} holds pickled (object) arrays, which are '
                         f'never loaded; re-save it with numeric arrays only.'
                         ) from None
      raise ValueError(f'{path} is not a readable .npz checkpoint ({e}).'
                       ) from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
      raise ValueError(f'{path} is not a readable .npz checkpoint ({e}).'
                       ) from None


def _strip_prefix(flat: Mapping[str, Any], source: str) -> dict[str, Any]:
  """Drops the `opt/target/` or `params/` prefix and everything outside it."""
  prefixes = [k[:-len(_ANCHOR)] for k in flat
              if k == _ANCHOR or k.endswith('/' + _ANCHOR)]
  if not prefixes:
    raise ValueError(f'{source} has no "{_ANCHOR}" (under any prefix): it is '
                     f'not a ViT checkpoint. Keys start with: '
                     f'{sorted(flat)[:_LIST_LIMIT]}')
  prefix = min(prefixes, key=len)
  return {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}


def _unstack_scan(flat: Mapping[str, Any]) -> dict[str, Any]:
  """Splits scanned blocks (ours or big_vision's) into `encoderblock_{i}`."""
  if not any(k.startswith(_SCAN_BIG_VISION) for k in flat):
    return dict(flat)
  return flatten_params(models.scan_to_layers(unflatten_params(flat)))


def _rename_big_vision_blocks(flat: Mapping[str, Any]) -> dict[str, Any]:
  """Maps linen block names (MultiHeadDotProductAttention_0 ...) to ours."""
  is_big_vision = any('/MultiHeadDotProductAttention_0/' in k for k in flat
                      if k.startswith('Transformer/encoderblock_'))
  if not is_big_vision:
    return dict(flat)
  out = {}
  for key, value in flat.items():
    m = _BLOCK_KEY.match(key)
    if m and m.group(2) in _BIG_VISION_BLOCK:
      key = (f'Transformer/encoderblock_{m.group(1)}/'
             f'{_BIG_VISION_BLOCK[m.group(2)]}/{m.group(3)}')
    out[key] = value
  return out


def _move_big_vision_posemb(flat: Mapping[str, Any]) -> dict[str, Any]:
  """Moves big_vision's `pos_embedding` to ours, giving the class token a row.

  big_vision adds its top-level `pos_embedding` to the patch tokens before it
  prepends the class token, so that table has no class-token row: a zero row
  computes the same function. The older `Transformer/pos_embedding` was added
  after the class token when it has n*n+1 rows; such a table is kept whole.
  """
  out = dict(flat)
  for key in ('pos_embedding', 'Transformer/pos_embedding'):
    if key not in out:
      continue
    posemb = np.asarray(out.pop(key))
    grid_tokens = posemb.shape[1] - 1
    combined = (key.startswith('Transformer/') and grid_tokens > 0 and
                math.isqrt(grid_tokens)**2 == grid_tokens)
    if 'cls' in out and not combined:
      posemb = np.concatenate([np.zeros_like(posemb[:, :1]), posemb], axis=1)
    out[_POSEMB] = posemb
  return out


def _squeeze_stem_groupnorm(flat: Mapping[str, Any]) -> dict[str, Any]:
  """(1, 1, 1, C) GroupNorm scale/bias of the ResNet stem -> (C,).

  Only the stem's GroupNorm parameters (`gn_root`, `block*/unit*/gn*`) are
  read this way; any other parameter of that shape is left for `_check_fits`
  to report.
  """
  out = dict(flat)
  for key, value in flat.items():
    shape = np.shape(value)
    if (len(shape) == 4 and shape[:3] == (1, 1, 1) and
        _STEM_GROUPNORM.match(key)):
      out[key] = np.reshape(value, shape[3:])
  return out


def _to_released_layout(flat: Mapping[str, Any], source: str) -> dict[str, Any]:
  flat = _strip_prefix(flat, source)
  flat = _unstack_scan(flat)
  flat = _rename_big_vision_blocks(flat)
  flat = _squeeze_stem_groupnorm(flat)
  return _move_big_vision_posemb(flat)


def read_released(path: PathLike) -> dict[str, Any]:
  """Reads any supported checkpoint source into the flat released layout.

  An .npz (released vit_jax or big_vision), or a Hugging Face transformers
  ViT directory (config.json + model.safetensors; `vit_jax.hf_interop`).
  """
  if hf_interop.is_transformers_dir(path):
    return hf_interop.load_released(path)
  return _to_released_layout(_read_flat(path), os.fspath(path))


def load_npz(path: PathLike) -> dict[str, Any]:
  """Reads a released vit_jax or big_vision .npz into our parameter tree.

  Returns a nested dict of numpy arrays with the per-layer layout
  (`Transformer/encoderblock_{i}`). Keys outside the parameters (`opt/...`
  optimizer state of a big_vision checkpoint) are left out. A transformers
  ViT directory is read too (`read_released`).
  """
  return unflatten_params(read_released(path))


# ----------------------------------------------------------------------------
# Writing.


def save_npz(path: PathLike, params: Mapping[str, Any]) -> None:
  """Writes `params` as a released-layout float32 .npz, atomically.

  A scan-over-layers tree is written per layer, so the file reads like a
  released checkpoint (timm's `_load_weights` reads it). `params` must be
  addressable from this process (replicated, or gathered first).
  """
  if set(params) == {'params'}:
    params = params['params']
  flat = _unstack_scan(flatten_params(params))
  arrays = {}
  for key, value in flat.items():
    value = np.asarray(value)
    floating = (np.issubdtype(value.dtype, np.floating) or
                value.dtype.name == 'bfloat16')
    arrays[key] = value.astype(np.float32) if floating else value
  target = _epath(path)
  target.parent.mkdir(parents=True, exist_ok=True)
  tmp = target.parent / f'{target.name}.tmp-{uuid.uuid4().hex[:8]}'
  try:
    with tmp.open('wb') as f:
      np.savez(f, **arrays)
    tmp.replace(target)  # Atomic, and overwrites an older export.
  finally:
    if tmp.exists():  # only when writing failed
      tmp.unlink()


# ----------------------------------------------------------------------------
# Fitting a checkpoint to a model.


def _square_grid(tokens: int, what: str, arg: str) -> tuple[int, int]:
  side = math.isqrt(tokens)
  if side * side != tokens:
    raise ValueError(f'{what} has {tokens} grid tokens, which is not a square; '
                     f'pass {arg}=(height, width).')
  return side, side


def resample_posemb(posemb: np.ndarray, grid_size: Sequence[int], *,
                    num_prefix_tokens: int,
                    old_grid_size: Optional[Sequence[int]] = None) -> np.ndarray:
  """Resamples a [1, prefix + h*w, D] table to `grid_size` (bilinear).

  The prefix rows (the class token's) are kept apart and unchanged; the grid
  is zoomed like the released fine-tuning code (`scipy.ndimage.zoom`,
  order=1). Grids need not be square when `old_grid_size` is given.
  """
  posemb = np.asarray(posemb)
  prefix, grid = posemb[:, :num_prefix_tokens], posemb[0, num_prefix_tokens:]
  if old_grid_size is None:
    old_grid_size = _square_grid(grid.shape[0], 'the checkpoint position '
                                 'embedding', 'checkpoint_grid_size')
  (oh, ow), (nh, nw) = tuple(old_grid_size), tuple(grid_size)
  if oh * ow != grid.shape[0]:
    raise ValueError(f'checkpoint grid {oh}x{ow} does not match its position '
                     f'embedding of {grid.shape[0]} grid tokens.')
  grid = grid.reshape(oh, ow, -1)
  import scipy.ndimage  # pylint: disable=g-import-not-at-top  (0.4 s; rarely needed)
  grid = scipy.ndimage.zoom(grid, (nh / oh, nw / ow, 1), order=1)
  if grid.shape[:2] != (nh, nw):  # zoom rounds the output size
    raise ValueError(f'resampling {oh}x{ow} to {nh}x{nw} gave {grid.shape[:2]}.')
  return np.concatenate([prefix, grid.reshape(1, nh * nw, -1)], axis=1)


def _layer_shapes(init_flat: Mapping[str, Any]) -> tuple[dict, Optional[int]]:
  """Target key -> (shape, dtype) in the per-layer layout, and the scan depth."""
  shapes, depth = {}, None
  for key, leaf in init_flat.items():
    shape, dtype = tuple(leaf.shape), np.dtype(leaf.dtype)
    if key.startswith(_SCAN_OURS):
      depth = shape[0]
      for i in range(depth):
        rest = key[len(_SCAN_OURS):]
        shapes[f'Transformer/encoderblock_{i}/{rest}'] = (shape[1:], dtype)
    else:
      shapes[key] = (shape, dtype)
  return shapes, depth


def _fit_head(restored: dict, target: Mapping[str, tuple], keep_head: bool,
              source: str) -> None:
  """Replaces the checkpoint's head (transfer) or checks that it fits exactly.

  Transfer (`keep_head=False`, paper App. B.1.1): "we remove the whole head
  (two linear layers) and replace it by a single, zero-initialized linear
  layer". The checkpoint's `head` is never reused, whatever its shape; its
  `pre_logits` is dropped unless the model itself has a representation layer
  (then that layer starts from the checkpoint's, and only the last layer is
  new). With `keep_head=True` (evaluation, prediction, or continuing a run on
  the same label space) head and representation layer are kept exactly, and
  a checkpoint whose head does not fit the model is refused.
  """
  if keep_head:
    if 'pre_logits/kernel' in restored and 'pre_logits/kernel' not in target:
      raise ValueError(
          f'checkpoint {source} has a representation layer (pre_logits of '
          f'width {restored["pre_logits/kernel"].shape[-1]}) but the model has '
          f'none; build the model with representation_size='
          f'{restored["pre_logits/kernel"].shape[-1]} to keep the head.')
    old, want = restored.get('head/kernel'), target.get('head/kernel')
    if want is not None and old is not None and old.shape[:-1] == want[0][:-1] \
        and old.shape[-1] != want[0][-1]:  # another class count
      raise ValueError(
          f'checkpoint {source} has a head of shape {tuple(old.shape)} but the '
          f'model {want[0]}; build the model with '
          f'{old.shape[-1]} classes, or pass keep_head=False (init_keep_head='
          f'False) to start a new zero head.')  # other widths: _check_fits
    if 'head/kernel' not in target:
      restored.pop('head/kernel', None)
      restored.pop('head/bias', None)
    return
  if 'pre_logits/kernel' not in target:
    for key in ('pre_logits/kernel', 'pre_logits/bias'):
      if restored.pop(key, None) is not None:
        logging.info('checkpoint: dropped %s (transfer replaces the whole '
                     'head).', key)
  old = restored.pop('head/kernel', None)
  restored.pop('head/bias', None)
  if 'head/kernel' not in target:
    return
  for key in ('head/kernel', 'head/bias'):
    shape, dtype = target[key]
    restored[key] = np.zeros(shape, dtype)
  logging.info('checkpoint: new zero head %s (the checkpoint\'s %s is not '
               'reused; keep_head=True keeps it).', target['head/kernel'][0],
               None if old is None else tuple(old.shape))


def _fit_posemb(restored: dict, target: Mapping[str, tuple],
                grid_size, checkpoint_grid_size) -> None:
  if _POSEMB not in restored or _POSEMB not in target:
    return
  old, (new_shape, _) = restored[_POSEMB], target[_POSEMB]
  if old.shape[-1] != new_shape[-1] or ('cls' in restored) != ('cls' in target):
    return  # a width or classifier mismatch, which _check_fits reports
  if tuple(old.shape) == new_shape and (
      grid_size is None or checkpoint_grid_size is None or
      tuple(grid_size) == tuple(checkpoint_grid_size)):
    return
  prefix = 1 if 'cls' in target else 0
  new_tokens = new_shape[1] - prefix
  if grid_size is None:
    grid_size = _square_grid(new_tokens, 'the model position embedding',
                             'grid_size')
  if grid_size[0] * grid_size[1] != new_tokens:
    raise ValueError(f'grid_size={tuple(grid_size)} does not match the model '
                     f'position embedding of {new_tokens} grid tokens.')
  restored[_POSEMB] = resample_posemb(
      old, grid_size, num_prefix_tokens=prefix,
      old_grid_size=checkpoint_grid_size)
  logging.info('checkpoint: position embedding resampled %s -> %s.',
               tuple(old.shape), new_shape)


def _check_fits(restored: Mapping[str, Any], target: Mapping[str, tuple],
                source: str) -> None:
  differences = rules.describe_differences(
      {k: tuple(v.shape) for k, v in restored.items()},
      {k: tuple(v[0]) for k, v in target.items()}, limit=_LIST_LIMIT)
  if differences:
    raise ValueError(f'checkpoint {source} does not fit the model: '
                     f'{differences}. Pick the model the checkpoint was '
                     f'trained as (hidden size, layers, classifier, '
                     f'representation_size).')


def load_pretrained(checkpoint: Union[PathLike, Mapping[str, Any]],
                    init_params: Mapping[str, Any], *,
                    grid_size: Optional[Sequence[int]] = None,
                    checkpoint_grid_size: Optional[Sequence[int]] = None,
                    name: Optional[str] = None,
                    keep_head: bool = False) -> dict[str, Any]:
  """Fits a checkpoint to a model's parameters, for transfer or evaluation.

  Args:
    checkpoint: an .npz path (local or gs://), a transformers ViT directory,
      or a parameter tree (ours, per-layer or scanned, or big_vision's).
    init_params: the model's parameters, or only their shapes
      (`registry.param_shapes(model, image_size)`); they give the target
      layout (scanned or not), shapes and dtypes.
    grid_size: the model's token grid (h, w); needed only when it is not square.
    checkpoint_grid_size: the checkpoint's grid; needed only when not square.
    name: what error messages call the checkpoint (default: its path).
    keep_head: False (transfer, the paper's protocol): the head is always a
      new zero layer and `pre_logits` is dropped unless the model has one.
      True (evaluation, prediction, continuing a run on the same label
      space): head and `pre_logits` are kept exactly and must fit.

  Returns:
    A nested dict of numpy arrays with exactly the structure of `init_params`.
    The position embedding is resampled to the model's grid and the head is
    replaced or kept as `keep_head` says.

  Raises:
    ValueError: in one line, the missing and unexpected keys and mismatched
      shapes when the checkpoint does not fit otherwise.
  """
  if isinstance(checkpoint, Mapping):
    source = name or '(tree)'
    restored = _to_released_layout(flatten_params(checkpoint), source)
  else:
    source = name or os.fspath(checkpoint)
    restored = flatten_params(load_npz(checkpoint))
  if set(init_params) == {'params'}:
    init_params = init_params['params']
  target, depth = _layer_shapes(flatten_params(init_params))

  _fit_head(restored, target, keep_head, source)
  _fit_posemb(restored, target, grid_size, checkpoint_grid_size)
  _check_fits(restored, target, source)

  fitted = unflatten_params(
      {k: np.asarray(restored[k], dtype=target[k][1]) for k in target})
  return fitted if depth is None else models.layers_to_scan(fitted, depth)
