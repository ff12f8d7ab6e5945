"""Model registry: the paper's names (and the released file stems) -> hyper-parameters.

`get_model("ViT-B/16", num_classes=1000)` and `get_model("ViT-B_16", ...)` build
the same module. Table 1 of the paper: Base 12 layers, width 768, MLP 3072, 12
heads; Large 24/1024/4096/16; Huge 32/1280/5120/16. Ti and S are from the
AugReg study. Hybrids put a BiT ResNet stem in front of the patch embedding;
their stage layouts are those of the released hybrid checkpoints.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models.fast_path import backend_defaults
from vit_jax.models.resnet import stem_stride
from vit_jax.models.vit import ResNetStem, VisionTransformer

_WIDTHS = {
    # name: (hidden_size, num_layers, mlp_dim, num_heads)
    'Ti': (192, 12, 768, 3),
    'S': (384, 12, 1536, 6),
    'B': (768, 12, 3072, 12),
    'L': (1024, 24, 4096, 16),
    'H': (1280, 32, 5120, 16),
}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """Hyper-parameters of one registered ViT (everything but the class count)."""
  name: str
  hidden_size: int
  num_layers: int
  mlp_dim: int
  num_heads: int
  patch_size: tuple[int, int]
  resnet: Optional[ResNetStem] = None
  dropout_rate: float = 0.0
  #: Total downsampling from pixels to tokens (patch size x the stem's stride).
  stride: int = 0

  @property
  def file_stem(self) -> str:
    """The released checkpoint's file name stem, e.g. 'R50+ViT-B_16'."""
    return self.name.replace('/', '_')

  def kwargs(self) -> dict[str, Any]:
    return dict(hidden_size=self.hidden_size, num_layers=self.num_layers,
                mlp_dim=self.mlp_dim, num_heads=self.num_heads,
                patch_size=self.patch_size, resnet=self.resnet,
                dropout_rate=self.dropout_rate)


def _vit(size: str, patch: int, dropout: float = 0.0) -> ModelSpec:
  d, l, m, h = _WIDTHS[size]
  return ModelSpec(f'ViT-{size}/{patch}', d, l, m, h, (patch, patch),
                   dropout_rate=dropout, stride=patch)


def _hybrid(name: str, size: str, stages: tuple[int, ...], patch: int,
            dropout: float = 0.0) -> ModelSpec:
  d, l, m, h = _WIDTHS[size]
  return ModelSpec(name, d, l, m, h, (patch, patch), ResNetStem(stages),
                   dropout_rate=dropout, stride=stem_stride(stages) * patch)


# Dropout rates as in the released configs (the pretraining recipes of the
# paper: 0.1 for L/16, H/14 and R50+ViT-B/16; fine-tuning overrides them).
_SPECS = [
    _vit('Ti', 16), _vit('S', 16), _vit('S', 32), _vit('B', 8),
    _vit('B', 16), _vit('B', 32), _vit('L', 16, 0.1), _vit('L', 32),
    _vit('H', 14, 0.1),
    # R+ViT-Ti/16 is named for its 8x8 patches on a stem said to halve the
    # resolution; the BiT root block downsamples 4x, so tokens are 32x32 pixels.
    _hybrid('R+ViT-Ti/16', 'Ti', (), 8),
    _hybrid('R26+ViT-S/32', 'S', (2, 2, 2, 2), 1),
    _hybrid('R26+ViT-B/32', 'B', (2, 2, 2, 2), 1),
    # The paper's R50 hybrids (sec. 4.1, "Model Variants"): ViT on the ResNet's
    # feature map "with patch size of one 'pixel'", either (i) "the output of
    # stage 4 of a regular ResNet50" (3, 4, 6, 3 units: 32 pixels per token,
    # the /32 models) or (ii) stage 4 removed and its units placed in stage 3
    # (3, 4, 9: 16 pixels per token, the /16 models). So do timm's
    # vit_base_r50_s16_* and vit_large_r50_s32_* and the paper's Table 6 rows
    # R50x1+ViT-{B,L}/{16,32} (the planner's Table 6). R50+ViT-B/32 and
    # R50+ViT-L/16 (Table 3's JFT rows) have no released checkpoint; their
    # dropout follows their ViT counterparts (B/32: 0, L/16: 0.1).
    _hybrid('R50+ViT-B/32', 'B', (3, 4, 6, 3), 1),
    _hybrid('R50+ViT-B/16', 'B', (3, 4, 9), 1, 0.1),
    _hybrid('R50+ViT-L/32', 'L', (3, 4, 6, 3), 1, 0.1),
    _hybrid('R50+ViT-L/16', 'L', (3, 4, 9), 1, 0.1),
]

#: Registered model names (the paper's spelling), in size order.
MODELS: tuple[str, ...] = tuple(s.name for s in _SPECS)
_BY_NAME = {s.name: s for s in _SPECS}
_BY_NAME.update({s.file_stem: s for s in _SPECS})


def get_spec(name: str) -> ModelSpec:
  """Looks up 'ViT-B/16' or 'ViT-B_16'; unknown names list close matches."""
  if name in _BY_NAME:
    return _BY_NAME[name]
  close = difflib.get_close_matches(name, list(_BY_NAME), n=3)
  hint = f' Did you mean {", ".join(close)}?' if close else ''
  raise ValueError(f'unknown model {name!r}.{hint} Known models: '
                   f'{", ".join(MODELS)}.')


def get_model(name: str, num_classes: Optional[int], **overrides
              ) -> VisionTransformer:
  """Builds the registered ViT `name` with `num_classes` outputs.

  `overrides` replace any VisionTransformer field (dtype, classifier,
  representation_size, remat_policy, scan_layers, dropout_rate, ...).
  """
  spec = get_spec(name)
  kwargs = spec.kwargs()
  fields = {f.name for f in dataclasses.fields(VisionTransformer)}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f'unknown model option(s) {unknown}; valid options: '
                     f'{sorted(fields - {"parent", "name"})}.')
  if 'dtype' in overrides:
    overrides['dtype'] = compute_dtype(overrides['dtype'])
  kwargs.update(overrides)
  return VisionTransformer(num_classes=num_classes, **kwargs)


COMPUTE_DTYPES = ('float32', 'bfloat16', 'float16')


def compute_dtype(dtype: Any) -> jnp.dtype:
  """'bfloat16' (or a jnp dtype) -> dtype; anything else is a clear error."""
  try:
    value = jnp.dtype(dtype)
  except TypeError:
    value = None
  if value is None or value.name not in COMPUTE_DTYPES:
    raise ValueError(f'model dtype {dtype!r} is not one of {COMPUTE_DTYPES}.')
  return value


def pixels_per_token(model: VisionTransformer) -> tuple[int, int]:
  """(h, w) pixels per token: the patch size times a hybrid stem's stride."""
  stem = stem_stride(model.resnet.num_layers) if model.resnet else 1
  ph, pw = ((model.patch_size, model.patch_size)
            if isinstance(model.patch_size, int) else model.patch_size)
  return ph * stem, pw * stem


def param_shapes(model: VisionTransformer, image_size: int | tuple[int, int] = 224
                 ) -> Any:
  """Parameter tree of ShapeDtypeStructs, computed without allocating.

  Traced once per model and size (the planner asks for the same tree for
  every layout it counts: 0.36 s a time for ViT-H/14); each call returns
  its own dicts.
  """
  h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
  size = (int(h), int(w))
  try:
    hash(model)
  except TypeError:  # A field holds a list: nothing to key the cache on.
    return _param_shapes.__wrapped__(model, size)
  return jax.tree.map(lambda x: x, _param_shapes(model, size))


@functools.lru_cache(maxsize=64)
def _param_shapes(model: VisionTransformer, size: tuple[int, int]) -> Any:
  x = jax.ShapeDtypeStruct((1, *size, 3), jnp.float32)
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros(x.shape, x.dtype)))
  return variables['params']


def count_params(tree: Any) -> int:
  """Number of scalars in a parameter tree (arrays or shape structs)."""
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


#: Overrides that change the architecture, with the short names `describe` uses.
_ARCH_FIELDS = (('hidden_size', 'width'), ('num_layers', 'depth'),
                ('mlp_dim', 'mlp'), ('num_heads', 'heads'),
                ('patch_size', 'patch'))


def describe(name: str, overrides: Optional[dict] = None) -> str:
  """The name a model is reported under: the registry's, unless overridden.

  A model whose width, depth, MLP, heads or patch differ from the registered
  ones is not that model: 'ViT-Ti/16' with width 64 and 4 blocks is reported
  as 'custom ViT (width 64, depth 4, ...; from ViT-Ti/16)'.
  """
  spec = get_spec(name)
  changed = []
  for field, short in _ARCH_FIELDS:
    value = (overrides or {}).get(field)
    if value is None:
      continue
    if field == 'patch_size' and isinstance(value, int):
      value = (value, value)
    value = tuple(value) if isinstance(value, list) else value
    if value != getattr(spec, field):
      shown = value[0] if field == 'patch_size' and len(set(value)) == 1 else value
      changed.append(f'{short} {shown}')
  if not changed:
    return spec.name
  return f'custom ViT ({", ".join(changed)}; from {spec.name})'


def model_overrides(model_config: Any) -> dict:
  """VisionTransformer fields of a config's `model` section (None: the registry's)."""
  overrides = {k: v for k, v in model_config.items() if k != 'name'}
  if overrides.get('patch_size') is not None:
    p = overrides['patch_size']
    overrides['patch_size'] = (p, p) if isinstance(p, int) else tuple(p)
  return {k: v for k, v in overrides.items() if v is not None}


#: The fields that make an architecture (a model with other values is
#: another model); what a fine-tuning run takes from the run it starts from.
ARCHITECTURE_KEYS = ('hidden_size', 'num_layers', 'mlp_dim', 'num_heads',
                     'patch_size')


def with_architecture(spec: ModelSpec, overrides: Mapping[str, Any]
                      ) -> ModelSpec:
  """`spec` with the architecture fields of `overrides` (patch as a pair;
  a hybrid's stem keeps its downsampling, the patch changes)."""
  arch = {k: overrides[k] for k in ARCHITECTURE_KEYS
          if overrides.get(k) is not None}
  if 'patch_size' in arch:
    p = arch['patch_size']
    arch['patch_size'] = (p, p) if isinstance(p, int) else tuple(p)
    arch['stride'] = spec.stride // spec.patch_size[0] * arch['patch_size'][0]
  return dataclasses.replace(spec, **arch)


def build(model_config: Any, num_classes: Optional[int],
          backend: Optional[str] = None
          ) -> tuple[VisionTransformer, ModelSpec]:
  """The module of a config's `model` section and its ModelSpec (with the
  architecture overrides, for FLOP counts and the token stride). `backend`
  ('cpu', 'gpu', 'tpu'; default jax's) picks the fast-path options that the
  config leaves unset."""
  overrides = backend_defaults(model_overrides(model_config),
                               backend or jax.default_backend())
  model = get_model(model_config['name'], num_classes, **overrides)
  return model, with_architecture(get_spec(model_config['name']), overrides)


def _token_pixels(model: Any) -> tuple[tuple[int, int], str, bool]:
  """((h, w) pixels per token, the model's name, a hybrid?) of a spec,
  module or size."""
  if isinstance(model, ModelSpec):
    ph, pw = model.patch_size
    stem = model.stride // ph if model.stride else 1
    label = describe(model.name, {f: getattr(model, f)
                                  for f, _ in _ARCH_FIELDS})
    return (ph * stem, pw * stem), label, model.resnet is not None
  if isinstance(model, VisionTransformer):
    return pixels_per_token(model), 'the model', model.resnet is not None
  if isinstance(model, int):
    return (model, model), 'the model', False
  return tuple(int(p) for p in model), 'the model', False


def check_image_size(model: Any, image_size: Any, name: str = 'image_size',
                     label: Optional[str] = None) -> None:
  """A resolution that does not divide into the model's tokens is an error.

  The patch embedding is a VALID convolution: 18 px on 4x4 patches would
  silently drop the last 2 pixels of each side (and a plan would cost
  230 px as 224). `model` is a ModelSpec (from `build`: overrides
  included), a module, or the pixels per token (int or (h, w)); `name` is
  how the caller's user writes the size ('--image_size', 'image_size');
  `label` the model's reported name (default: the spec's).
  """
  (ph, pw), default_label, hybrid = _token_pixels(model)
  label = label or default_label
  sizes = ((image_size, image_size) if isinstance(image_size, int)
           else tuple(image_size))
  shown = (image_size if isinstance(image_size, int)
           else 'x'.join(str(s) for s in sizes))
  given = f'{name} {shown}' if name.startswith('-') else f'{name}={shown}'
  for side, size, pixels in zip(('height', 'width'), sizes, (ph, pw)):
    if size >= pixels and size % pixels == 0:
      continue
    lower = size // pixels * pixels
    nearest = ' or '.join(str(s) for s in (lower, lower + pixels) if s > 0)
    where = 'each side' if sizes[0] == sizes[1] else f'the {side}'
    why = ('it is smaller than one token' if not lower else
           f'the stem would pad the last {size - lower} pixels of {where}'
           if hybrid else
           f'the last {size - lower} pixels of {where} would be dropped')
    raise ValueError(f'{given} does not divide into the {ph}x{pw}-pixel '
                     f'tokens of {label}: {why}; use a multiple of {pixels} '
                     f'(e.g. {nearest}).')


def _architecture(model_section: Any) -> tuple:
  """What makes a model that model: sizes, patch and the hybrid's stem."""
  spec = get_spec(model_section['name'])
  overrides = model_overrides(model_section)
  fields = []
  for field, _ in _ARCH_FIELDS:
    value = overrides.get(field, getattr(spec, field))
    if field == 'patch_size' and isinstance(value, int):
      value = (value, value)
    fields.append(tuple(value) if isinstance(value, list) else value)
  return (*fields, spec.resnet)


def check_requested_model(requested: Any, run_model: Optional[dict],
                          source: str) -> None:
  """A model name given beside a checkpoint must be the checkpoint's model.

  `run_model` is the `model` section of the checkpoint's config.json (a
  run's, or a transformers directory's): the run says what it is, and a
  name that disagrees would otherwise build the run's architecture under
  another label (`--model ViT-B/16` on a width-64 run).
  """
  if requested is not None and not isinstance(requested, str):
    requested = requested.get('name')  # A `model` section.
  if not requested or not run_model or not run_model.get('name'):
    return
  spec = get_spec(requested)
  if (spec.name == get_spec(run_model['name']).name or
      _architecture({'name': spec.name}) == _architecture(run_model)):
    return  # The run's own name (its overrides apply), or the same model.
  run_label = describe(run_model['name'], model_overrides(run_model))
  raise ValueError(f'the model {spec.name} given is not the model of '
                   f'{source}, whose config.json says {run_label}: leave the '
                   f'model out (the run names it), or pass a checkpoint of '
                   f'{spec.name}.')
