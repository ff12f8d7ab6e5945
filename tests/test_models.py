"""Tests of vit_jax.models: sizes, shapes, layouts and numerics of the ViTs."""

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.models import (MODELS, count_params, get_model, get_spec,
                            layers_to_scan, param_shapes, scan_to_layers)
from vit_jax.models import vit

# Facts (1,000 classes, no representation layer): the released checkpoints'
# sizes, as timm and the paper count them.
PARAMS = {
    'ViT-Ti/16': 5_717_416, 'ViT-S/16': 22_050_664, 'ViT-S/32': 22_878_952,
    'ViT-B/8': 86_576_872, 'ViT-B/16': 86_567_656, 'ViT-B/32': 88_224_232,
    'ViT-L/16': 304_326_632, 'ViT-L/32': 306_535_400,
    'ViT-H/14': 632_045_800, 'R+ViT-Ti/16': 6_337_704,
    'R26+ViT-S/32': 36_431_912, 'R26+ViT-B/32': 101_383_976,
    'R50+ViT-B/16': 98_659_112, 'R50+ViT-L/32': 328_994_856,
    # Table 3's hybrids without a released file: counted from the paper's
    # architecture in tests/test_models_hybrid_params.py.
    'R50+ViT-B/32': 110_945_832, 'R50+ViT-L/16': 316_483_624,
}
TOKENS_AT_224 = {
    'ViT-Ti/16': 196, 'ViT-S/16': 196, 'ViT-S/32': 49, 'ViT-B/8': 784,
    'ViT-B/16': 196, 'ViT-B/32': 49, 'ViT-L/16': 196, 'ViT-L/32': 49,
    'ViT-H/14': 256, 'R+ViT-Ti/16': 49, 'R26+ViT-S/32': 49,
    'R26+ViT-B/32': 49, 'R50+ViT-B/16': 196, 'R50+ViT-L/32': 49,
    'R50+ViT-B/32': 49, 'R50+ViT-L/16': 196,
}
TINY = dict(hidden_size=32, num_layers=2, mlp_dim=64, num_heads=2)
ARCHITECTURE_MD = pathlib.Path(__file__).parents[1] / 'docs' / 'architecture.md'


def _images(shape=(2, 32, 48, 3), seed=0):
  return jax.random.uniform(jax.random.key(seed), shape, jnp.float32, -1., 1.)


def _random_head(params, seed=1):
  """The head is zero-initialised; random values make the logits informative."""
  params = dict(params)
  kernel = params['head']['kernel']
  params['head'] = {
      'kernel': jax.random.normal(jax.random.key(seed), kernel.shape) *
                kernel.shape[0]**-0.5,
      'bias': jax.random.normal(jax.random.key(seed + 1), kernel.shape[-1:])}
  return params


def _init(model, images, seed=0):
  params = model.init(jax.random.key(seed), images)['params']
  return _random_head(params, seed + 1) if 'head' in params else params


def _apply(model, params, images, **kwargs):
  # Eager: after the first test every primitive is compiled, and tiny models
  # run faster op by op than through a fresh jit compilation.
  return model.apply({'params': params}, images, **kwargs)


@pytest.mark.parametrize('name', MODELS)
def test_parameter_count_and_tokens(name):
  shapes = param_shapes(get_model(name, 1000), 224)
  assert count_params(shapes) == PARAMS[name]
  posemb = shapes['Transformer']['posembed_input']['pos_embedding']
  assert posemb.shape == (1, TOKENS_AT_224[name] + 1, get_spec(name).hidden_size)


def test_every_model_is_counted_and_the_docs_table_agrees():
  assert set(MODELS) == set(PARAMS)
  rows = re.findall(r'^\| (\S+) \| ([\d,]+) \| (\d+)\+1 \|$',
                    ARCHITECTURE_MD.read_text(), flags=re.M)
  table = {name: (int(count.replace(',', '')), int(tokens))
           for name, count, tokens in rows}
  assert table == {n: (PARAMS[n], TOKENS_AT_224[n]) for n in MODELS}


def test_file_stem_names_the_same_model():
  assert get_spec('ViT-B_16') is get_spec('ViT-B/16')
  assert get_spec('R50+ViT-B_16').resnet.num_layers == (3, 4, 9)
  assert get_model('ViT-L_32', 10).num_layers == 24


@pytest.mark.parametrize('classifier,shape', [
    ('token', (2, 10)), ('gap', (2, 10)),
    ('unpooled', (2, 6, 32)), ('token_unpooled', (2, 7, 32))])
def test_forward_shapes_per_classifier(classifier, shape):
  model = get_model('ViT-Ti/16', 10, classifier=classifier, **TINY)
  images = jax.ShapeDtypeStruct((2, 32, 48, 3), jnp.float32)  # a 2x3 grid
  variables = jax.eval_shape(model.init, jax.random.key(0), images)
  out = jax.eval_shape(model.apply, variables, images)
  assert out.shape == shape and out.dtype == jnp.float32
  params = variables['params']
  assert ('cls' in params) == classifier.startswith('token')
  assert ('head' in params) == (classifier in ('token', 'gap'))


def test_representation_layer_and_prelogits():
  images = _images()
  model = get_model('ViT-Ti/16', 10, representation_size=16, **TINY)
  params = _init(model, images)
  pre = _apply(model, params, images, return_prelogits=True)
  assert pre.shape == (2, 16) and float(jnp.max(jnp.abs(pre))) < 1.  # tanh
  logits = _apply(model, params, images)
  np.testing.assert_allclose(
      logits, pre @ params['head']['kernel'] + params['head']['bias'],
      rtol=1e-5, atol=1e-5)
  headless = get_model('ViT-Ti/16', None, dtype='bfloat16', **TINY)
  images = jax.ShapeDtypeStruct(images.shape, jnp.float32)
  variables = jax.eval_shape(headless.init, jax.random.key(0), images)
  assert 'head' not in variables['params']
  features = jax.eval_shape(headless.apply, variables, images)
  assert features.shape == (2, 32) and features.dtype == jnp.float32


def test_hybrid_forward_shapes():
  images = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  model = get_model('R+ViT-Ti/16', 10, **dict(TINY, num_layers=1))
  variables = jax.eval_shape(model.init, jax.random.key(0), images)
  params = variables['params']
  # The BiT root downsamples 4x, then 8x8 patches: 64 px -> a 2x2 grid.
  assert params['Transformer']['posembed_input']['pos_embedding'].shape == (1, 5, 32)
  assert {'conv_root', 'gn_root'} <= set(params)
  assert jax.eval_shape(model.apply, variables, images).shape == (1, 10)


def test_scan_and_layers_convert_both_ways_with_equal_outputs():
  images = _images()
  scanned = get_model('ViT-Ti/16', 10, scan_layers=True, **TINY)
  layered = get_model('ViT-Ti/16', 10, **TINY)
  params = _init(scanned, images)
  per_layer = scan_to_layers(params, 2)
  assert set(per_layer['Transformer']) == {
      'encoderblock_0', 'encoderblock_1', 'encoder_norm', 'posembed_input'}
  expected = jax.tree.map(lambda a: a.shape, jax.eval_shape(
      layered.init, jax.random.key(0), images)['params'])
  assert jax.tree.map(lambda a: a.shape, per_layer) == expected
  out_scan = _apply(scanned, params, images)
  out_layers = _apply(layered, per_layer, images)
  assert float(jnp.std(out_scan)) > 0.1
  np.testing.assert_allclose(out_layers, out_scan, rtol=1e-5, atol=1e-5)
  back = layers_to_scan(per_layer, 2)
  assert jax.tree.all(jax.tree.map(
      lambda a, b: bool(jnp.array_equal(a, b)), back, params))
  with pytest.raises(ValueError, match='encoderblock_2'):
    layers_to_scan(per_layer, 3)
  with pytest.raises(ValueError, match='not in the scan layout'):
    scan_to_layers(per_layer, 2)


def test_remat_policies_give_the_same_outputs_and_gradients():
  images = _images()
  params = _init(get_model('ViT-Ti/16', 10, **TINY), images)

  def loss_and_grads(policy, scan):
    model = get_model('ViT-Ti/16', 10, remat_policy=policy, scan_layers=scan,
                      **TINY)
    loss = lambda p: jnp.sum(model.apply({'params': p}, images)**2)
    p = layers_to_scan(params, 2) if scan else params
    loss, grads = jax.jit(jax.value_and_grad(loss))(p)
    return loss, scan_to_layers(grads, 2) if scan else grads

  loss, grads = loss_and_grads('none', False)
  for policy, scan in (('full', False), ('dots_no_batch', True)):
    loss_r, grads_r = loss_and_grads(policy, scan)
    np.testing.assert_allclose(loss_r, loss, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(
        a, b, rtol=1e-4, atol=1e-5), grads_r, grads)
  with pytest.raises(ValueError, match='remat_policy'):
    loss_and_grads('bogus', False)


def test_bfloat16_is_close_to_float32_with_float32_params():
  images = _images()
  f32 = get_model('ViT-Ti/16', 10, **TINY)
  bf16 = get_model('ViT-Ti/16', 10, dtype='bfloat16', **TINY)
  params = _init(f32, images)
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(
      jax.eval_shape(bf16.init, jax.random.key(0), images)['params']))
  out32 = _apply(f32, params, images)
  out16 = _apply(bf16, params, images)
  assert out16.dtype == jnp.float32
  diff = float(jnp.max(jnp.abs(out16 - out32)))
  scale = float(jnp.max(jnp.abs(out32)))
  assert 0. < diff < 0.03 * scale + 0.02, (diff, scale)


def test_sincos2d_table_values():
  h, w, d = 3, 4, 16
  pe = vit.sincos_2d_posemb(h, w, d)
  assert pe.shape == (1, h * w, d) and pe.dtype == np.float32
  q = d // 4
  for y in range(h):
    for x in range(w):
      for k in range(q):
        omega = 10_000.**(-k / (q - 1))
        row = pe[0, y * w + x]
        np.testing.assert_allclose(
            [row[k], row[q + k], row[2 * q + k], row[3 * q + k]],
            [np.sin(x * omega), np.cos(x * omega), np.sin(y * omega),
             np.cos(y * omega)], atol=1e-6)
  with pytest.raises(ValueError, match='multiple of 4'):
    vit.sincos_2d_posemb(2, 2, 30)


@pytest.mark.parametrize('classifier', ['token', 'gap'])
def test_sincos2d_model_adds_the_fixed_table(classifier):
  images = _images()
  fixed = get_model('ViT-Ti/16', 10, posemb='sincos2d', classifier=classifier,
                    **TINY)
  learned = get_model('ViT-Ti/16', 10, classifier=classifier, **TINY)
  params = _init(fixed, images)
  assert 'posembed_input' not in params['Transformer']
  table = vit.sincos_2d_posemb(2, 3, 32)
  if classifier == 'token':  # the class token gets no position embedding
    table = np.concatenate([np.zeros((1, 1, 32), np.float32), table], axis=1)
  with_table = dict(params, Transformer=dict(
      params['Transformer'], posembed_input={'pos_embedding': table}))
  np.testing.assert_allclose(
      _apply(fixed, params, images),
      _apply(learned, with_table, images), rtol=1e-5, atol=1e-6)
  zero_table = dict(params, Transformer=dict(
      params['Transformer'],
      posembed_input={'pos_embedding': np.zeros_like(table)}))
  assert not np.allclose(_apply(fixed, params, images),
                         _apply(learned, zero_table, images),
                         atol=1e-3)


@pytest.mark.parametrize('classifier,scan', [('token', False), ('gap', True)])
def test_attention_padding_gives_the_same_outputs(classifier, scan):
  images = _images()  # 6 patches (+1 class token), padded to 16
  kwargs = dict(TINY, classifier=classifier, scan_layers=scan)
  plain = get_model('ViT-Ti/16', 10, **kwargs)
  padded = get_model('ViT-Ti/16', 10, attention_pad_multiple=16, **kwargs)
  params = _init(plain, images)
  out = _apply(plain, params, images)
  out_padded = _apply(padded, params, images)
  assert out_padded.shape == out.shape
  assert float(jnp.std(out)) > 0.1
  np.testing.assert_allclose(out_padded, out, rtol=1e-5, atol=2e-5)


def test_attention_padding_masks_the_padded_keys():
  """Padding without the length mask would change the outputs."""
  block = vit.MultiHeadDotProductAttention(num_heads=2)
  x = jax.random.normal(jax.random.key(3), (1, 65, 32))
  params = block.init(jax.random.key(0), x, deterministic=True)
  y = block.apply(params, x, deterministic=True)
  x_pad = jnp.pad(x, ((0, 0), (0, 31), (0, 0)))
  masked = block.apply(params, x_pad, deterministic=True, kv_length=65)
  unmasked = block.apply(params, x_pad, deterministic=True)
  np.testing.assert_allclose(masked[:, :65], y, rtol=1e-5, atol=1e-5)
  assert not np.allclose(unmasked[:, :65], y, atol=1e-3)


def _padding_case(dtype, monkeypatch=None):
  """Logits and gradients of a 2-block ViT, unpadded and padded 17 -> 32 tokens.

  Both use the XLA attention with the true key length masked (the cuDNN
  kernel takes the same `key_value_seq_lengths` on a GPU). With a
  `monkeypatch`, the padded model forgets the mask: the control case.
  """
  images = _images((3, 64, 64, 3), seed=5)  # 16 patches + class token
  kwargs = dict(TINY, dtype=dtype, attention_implementation='xla')
  plain = get_model('ViT-Ti/16', 10, **kwargs)
  padded = get_model('ViT-Ti/16', 10, attention_pad_multiple=32, **kwargs)
  params = _init(plain, images)
  labels = jax.nn.one_hot(jnp.arange(3) % 10, 10)

  def logits_and_grads(model):
    def loss(p):
      logits = model.apply({'params': p}, images)
      return -jnp.mean(jnp.sum(labels * jax.nn.log_softmax(logits), -1)), logits
    (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(
        params)
    return logits, jnp.concatenate([g.ravel() for g in jax.tree.leaves(grads)])

  ref = logits_and_grads(plain)
  if monkeypatch is not None:
    attention = jax.nn.dot_product_attention
    monkeypatch.setattr(jax.nn, 'dot_product_attention', lambda *a, **k: (
        attention(*a, **dict(k, key_value_seq_lengths=None))))
  return ref, logits_and_grads(padded)


# Worst logit / gradient error allowed, relative to the largest value: float32
# rounding, and bfloat16 rounding (8 bits of mantissa: 2^-8 = 0.4% per op).
_PADDING_TOLERANCE = {'float32': 1e-5, 'bfloat16': 2e-2}


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_padded_attention_gives_the_same_logits_and_gradients(dtype):
  (logits, grads), (logits_pad, grads_pad) = _padding_case(dtype)
  tol = _PADDING_TOLERANCE[dtype]
  scale = float(jnp.max(jnp.abs(logits)))
  assert scale > 0.5 and float(jnp.std(logits)) > 0.1
  assert float(jnp.max(jnp.abs(logits_pad - logits))) <= tol * scale
  gscale = float(jnp.max(jnp.abs(grads)))
  assert float(jnp.max(jnp.abs(grads_pad - grads))) <= tol * gscale


def test_padded_attention_without_the_mask_would_fail_that_tolerance(
    monkeypatch):
  (logits, _), (logits_pad, _) = _padding_case('bfloat16', monkeypatch)
  scale = float(jnp.max(jnp.abs(logits)))
  assert float(jnp.max(jnp.abs(logits_pad - logits))) > (
      5 * _PADDING_TOLERANCE['bfloat16'] * scale)


def test_unknown_names_and_options_say_what_is_valid():
  with pytest.raises(ValueError, match=r'Did you mean .*ViT-B/16'):
    get_model('ViT-B/61', 10)
  with pytest.raises(ValueError, match=r'Known models: ViT-Ti/16'):
    get_spec('ResNet50')
  with pytest.raises(ValueError, match=r"unknown model option\(s\) \['hiden_size'\]"):
    get_model('ViT-Ti/16', 10, hiden_size=32)
  model = get_model('ViT-Ti/16', 10, classifier='cls', **TINY)
  with pytest.raises(ValueError, match=r"unknown classifier 'cls'"):
    model.init(jax.random.key(0), _images())


def test_an_image_size_that_does_not_divide_into_tokens_is_refused():
  """The patch embedding is a VALID convolution: 230 px on 16 px patches
  would train (and be costed) on 224 px, silently."""
  from vit_jax import models  # pylint: disable=g-import-not-at-top
  models.check_image_size(get_spec('ViT-B/16'), 224)
  models.check_image_size(get_spec('ViT-B/16'), (224, 384))
  models.check_image_size(get_spec('R50+ViT-B/16'), 384)  # stem 16 x patch 1
  cases = [
      (get_spec('ViT-B/16'), 230, '--image-size',
       '--image-size 230 does not divide into the 16x16-pixel tokens of '
       'ViT-B/16: the last 6 pixels of each side would be dropped; use a '
       'multiple of 16 (e.g. 224 or 240).'),
      (get_spec('R50+ViT-B/16'), 390, 'image_size',
       'image_size=390 does not divide into the 16x16-pixel tokens of '
       'R50+ViT-B/16: the stem would pad the last 6 pixels of each side; use '
       'a multiple of 16 (e.g. 384 or 400).'),
      (get_spec('ViT-L/32'), 24, 'image_size',
       'image_size=24 does not divide into the 32x32-pixel tokens of '
       'ViT-L/32: it is smaller than one token; use a multiple of 32 '
       '(e.g. 32).'),
      (4, (16, 18), 'image_size',
       'image_size=16x18 does not divide into the 4x4-pixel tokens of the '
       'model: the last 2 pixels of the width would be dropped; use a '
       'multiple of 4 (e.g. 16 or 20).'),
  ]
  for model, size, name, message in cases:
    with pytest.raises(ValueError) as e:
      models.check_image_size(model, size, name=name)
    assert str(e.value) == message
  # A spec with overrides (models.build) is named as `describe` names it.
  _, spec = models.build({'name': 'ViT-Ti/16', 'patch_size': 4,
                          'hidden_size': 64}, 10)
  with pytest.raises(ValueError, match=r'^image_size=18 does not divide into '
                     r'the 4x4-pixel tokens of custom ViT \(width 64, patch 4;'
                     r' from ViT-Ti/16\): the last 2 pixels'):
    models.check_image_size(spec, 18)


def test_param_shapes_traces_a_model_once_and_each_call_gets_its_own_tree():
  """The planner asks for the same tree per layout: traced once per model
  and size, equal to a fresh trace, and a caller's edit stays its own."""
  from vit_jax.models import registry
  model = get_model('ViT-Ti/16', 10, hidden_size=32, num_layers=2, mlp_dim=64,
                    num_heads=2)
  fresh = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 48, 32, 3))))['params']
  traced = registry._param_shapes.cache_info().misses
  first = param_shapes(model, (48, 32))
  del first['head']
  again = param_shapes(get_model('ViT-Ti/16', 10, hidden_size=32, num_layers=2,
                                 mlp_dim=64, num_heads=2), (48, 32))
  assert registry._param_shapes.cache_info().misses == traced + 1
  assert jax.tree.structure(again) == jax.tree.structure(fresh)
  assert jax.tree.leaves(again) == jax.tree.leaves(fresh)
  assert param_shapes(model, 48)['head']['kernel'].shape == (32, 10)
