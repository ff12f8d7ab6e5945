"""Tests of vit_jax.checkpoint: the released .npz layouts and fitting them to models."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from vit_jax import checkpoint
from vit_jax.checkpoint import flatten_params, unflatten_params
from vit_jax.models import get_model, layers_to_scan, param_shapes, scan_to_layers
from vit_jax.models.vit import ResNetStem

TINY = dict(hidden_size=32, num_layers=2, mlp_dim=64, num_heads=2)
POSEMB = 'Transformer/posembed_input/pos_embedding'
# big_vision's linen names inside a block -> the released (and our) names.
BIG_VISION_TO_OURS = {'LayerNorm_0': 'LayerNorm_0',
                      'MultiHeadDotProductAttention_0': 'MultiHeadDotProductAttention_1',
                      'LayerNorm_1': 'LayerNorm_2', 'MlpBlock_0': 'MlpBlock_3'}


def _random_params(model, image_size, seed=0):
  """Random values for every parameter of `model` (numpy, float32)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda s: rng.standard_normal(s.shape).astype(np.float32),
      param_shapes(model, image_size))


def _assert_trees_equal(a, b):
  fa, fb = flatten_params(a), flatten_params(b)
  assert sorted(fa) == sorted(fb)
  for key in fa:
    np.testing.assert_array_equal(np.asarray(fa[key]), np.asarray(fb[key]),
                                  err_msg=key)


def _tiny(num_classes=10, **kwargs):
  return get_model('ViT-Ti/16', num_classes, **dict(TINY, **kwargs))


def test_save_writes_the_released_layout_from_a_scan_tree(tmp_path):
  model = _tiny(scan_layers=True)
  params = _random_params(model, 32)
  path = tmp_path / 'ViT-Ti_16.npz'
  checkpoint.save_npz(path, params)
  assert os.listdir(tmp_path) == ['ViT-Ti_16.npz']  # no temporary left behind
  with np.load(path, allow_pickle=False) as archive:
    files = {k: archive[k] for k in archive.files}
  expected = flatten_params(scan_to_layers(params, 2))
  assert sorted(files) == sorted(expected)
  assert 'Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel' in files
  assert files['Transformer/encoderblock_0/MultiHeadDotProductAttention_1/'
               'query/kernel'].shape == (32, 2, 16)  # [D, heads, head_dim]
  assert files['Transformer/encoderblock_0/MultiHeadDotProductAttention_1/'
               'out/kernel'].shape == (2, 16, 32)
  assert files[POSEMB].shape == (1, 5, 32)
  assert all(v.dtype == np.float32 for v in files.values())
  _assert_trees_equal(checkpoint.load_npz(path), scan_to_layers(params, 2))


def test_save_writes_bfloat16_as_float32_and_accepts_variables(tmp_path):
  params = {'embedding': {'kernel': jnp.full((2, 2, 3, 4), 1.5, jnp.bfloat16),
                          'bias': jnp.arange(4, dtype=jnp.bfloat16) / 3}}
  checkpoint.save_npz(tmp_path / 'x.npz', {'params': params})
  with np.load(tmp_path / 'x.npz') as archive:
    assert sorted(archive.files) == ['embedding/bias', 'embedding/kernel']
    assert archive['embedding/kernel'].dtype == np.float32
    np.testing.assert_array_equal(
        archive['embedding/bias'], np.asarray(params['embedding']['bias'],
                                              np.float32))


def test_a_failed_save_leaves_the_old_file_whole(tmp_path, monkeypatch):
  path = tmp_path / 'model.npz'
  old = {'embedding': {'kernel': np.ones((1, 1, 3, 2), np.float32)}}
  checkpoint.save_npz(path, old)

  def broken_savez(f, **arrays):
    f.write(b'PK\x03\x04 half an archive')
    raise OSError('disk full')

  monkeypatch.setattr(np, 'savez', broken_savez)
  with pytest.raises(OSError, match='disk full'):
    checkpoint.save_npz(path, {'embedding': {'kernel': np.zeros((1, 1, 3, 2))}})
  monkeypatch.undo()
  assert os.listdir(tmp_path) == ['model.npz']
  _assert_trees_equal(checkpoint.load_npz(path), old)


def _to_big_vision(params, *, scanned, num_layers):
  """Our per-layer tree -> a big_vision checkpoint dict (independent mapping)."""
  ours_to_bv = {v: k for k, v in BIG_VISION_TO_OURS.items()}
  flat = {}
  for key, value in flatten_params(params).items():
    parts = key.split('/')
    if key == POSEMB:
      # big_vision adds the table before prepending the class token.
      flat['pos_embedding'] = value[:, 1:] if 'cls' in params else value
      continue
    if parts[0] == 'Transformer' and parts[1].startswith('encoderblock_'):
      parts[2] = ours_to_bv[parts[2]]
    flat['/'.join(parts)] = value
  if scanned:
    for key in [k for k in flat if k.startswith('Transformer/encoderblock_0/')]:
      rest = key[len('Transformer/encoderblock_0/'):]
      flat[f'Transformer/encoderblock/{rest}'] = np.stack(
          [flat.pop(f'Transformer/encoderblock_{i}/{rest}')
           for i in range(num_layers)])
  out = {f'params/{k}': v for k, v in flat.items()}
  out['opt/state/step'] = np.array(7)  # the rest of a training checkpoint
  return out


@pytest.mark.parametrize('classifier,scanned', [
    ('token', False), ('token', True), ('gap', True)])
def test_load_npz_reads_big_vision_files(tmp_path, classifier, scanned):
  params = _random_params(_tiny(classifier=classifier), 32)
  if classifier == 'token':  # big_vision's class token has no position row
    params['Transformer']['posembed_input']['pos_embedding'][:, 0] = 0.
  np.savez(tmp_path / 'bv.npz',
           **_to_big_vision(params, scanned=scanned, num_layers=2))
  _assert_trees_equal(checkpoint.load_npz(tmp_path / 'bv.npz'), params)
  # The same conversion applies to trees handed to load_pretrained.
  tree = unflatten_params(_to_big_vision(params, scanned=scanned, num_layers=2))
  _assert_trees_equal(checkpoint.load_pretrained(tree, params, keep_head=True), params)


def test_load_npz_strips_the_opt_target_prefix(tmp_path):
  params = _random_params(_tiny(), 32)
  np.savez(tmp_path / 'old.npz', **{f'opt/target/{k}': v
                                    for k, v in flatten_params(params).items()},
           **{'opt/state/step': np.array(3)})
  _assert_trees_equal(checkpoint.load_npz(tmp_path / 'old.npz'), params)


def test_unreadable_files_give_one_line_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='checkpoint file not found: .*nope.npz'):
    checkpoint.load_npz(tmp_path / 'nope.npz')
  (tmp_path / 'text.npz').write_text('not a zip\n')
  with pytest.raises(ValueError, match='not an .npz archive'):
    checkpoint.load_npz(tmp_path / 'text.npz')
  with pytest.raises(ValueError, match='is a directory'):
    checkpoint.load_npz(tmp_path)
  np.savez(tmp_path / 'pickled.npz', embedding=np.array([{'a': 1}], object))
  with pytest.raises(ValueError, match='pickled'):
    checkpoint.load_npz(tmp_path / 'pickled.npz')
  np.savez(tmp_path / 'other.npz', weights=np.zeros(3))
  with pytest.raises(ValueError, match='not a ViT checkpoint'):
    checkpoint.load_npz(tmp_path / 'other.npz')


def test_importing_checkpoint_imports_neither_tensorflow_nor_torch():
  code = ('import sys, vit_jax.checkpoint; '
          'print(sorted(m for m in ("tensorflow", "torch") if m in sys.modules))')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                       text=True, check=True)
  assert out.stdout.strip() == '[]'


def test_uri_paths_go_through_etils_epath(tmp_path, monkeypatch):
  from etils import epath
  real_path = epath.Path

  def fake_path(uri):
    """gs://bucket/... served from tmp_path; other schemes are unknown."""
    if str(uri).startswith('gs://'):
      return real_path(str(uri).replace('gs://bucket', str(tmp_path)))
    if '://' in str(uri):
      raise KeyError(str(uri).split('://')[0] + '://')
    return real_path(uri)

  monkeypatch.setattr(epath, 'Path', fake_path)
  params = _random_params(_tiny(), 32)
  checkpoint.save_npz('gs://bucket/vit.npz', params)
  assert os.listdir(tmp_path) == ['vit.npz']
  _assert_trees_equal(checkpoint.load_npz('gs://bucket/vit.npz'), params)
  with pytest.raises(ValueError, match='unsupported URI scheme'):
    checkpoint.load_npz('ftp://host/vit.npz')


def test_load_pretrained_resamples_224_to_384_like_scipy_zoom(tmp_path):
  """A released-layout file at 224 px fits a 384 px model: 197 -> 577 tokens."""
  params = _random_params(_tiny(), 224)
  checkpoint.save_npz(tmp_path / 'at224.npz', params)
  target = param_shapes(_tiny(), 384)
  fitted = checkpoint.load_pretrained(tmp_path / 'at224.npz', target,
                                      keep_head=True)
  assert jax.tree.map(np.shape, fitted) == jax.tree.map(np.shape, target)
  old = params['Transformer']['posembed_input']['pos_embedding']
  new = fitted['Transformer']['posembed_input']['pos_embedding']
  assert old.shape == (1, 197, 32) and new.shape == (1, 577, 32)
  np.testing.assert_array_equal(new[:, 0], old[:, 0])  # the class token's row
  zoomed = scipy.ndimage.zoom(old[0, 1:].reshape(14, 14, 32),
                              (24 / 14, 24 / 14, 1), order=1)
  np.testing.assert_allclose(new[0, 1:].reshape(24, 24, 32), zoomed, atol=1e-6)
  # Everything else is copied as it is.
  for key, value in flatten_params(params).items():
    if key != POSEMB:
      np.testing.assert_array_equal(flatten_params(fitted)[key], value)


def test_resampling_is_bilinear_with_aligned_corners_on_non_square_grids():
  # A table linear in (y, x) stays linear: corners map to corners.
  y, x = np.mgrid[:14, :14].astype(np.float32)
  ramp = np.stack([3. * y + 2. * x, y - x], axis=-1).reshape(1, 196, 2)
  posemb = np.concatenate([np.full((1, 1, 2), 9., np.float32), ramp], axis=1)
  out = checkpoint.resample_posemb(posemb, (12, 20), num_prefix_tokens=1)
  ny, nx = np.mgrid[:12, :20]
  ny, nx = ny * 13 / 11, nx * 13 / 19
  expected = np.stack([3. * ny + 2. * nx, ny - nx], axis=-1).reshape(1, 240, 2)
  np.testing.assert_allclose(out[:, 1:], expected, atol=1e-4)
  np.testing.assert_array_equal(out[:, :1], posemb[:, :1])
  back = checkpoint.resample_posemb(out[:, 1:], (14, 14), num_prefix_tokens=0,
                                    old_grid_size=(12, 20))
  np.testing.assert_allclose(back, ramp, atol=1e-4)


def test_load_pretrained_to_a_non_square_grid_needs_grid_size():
  params = _random_params(_tiny(), 224)
  target = param_shapes(_tiny(), (192, 320))  # a 12x20 grid
  with pytest.raises(ValueError, match=r'not a square; pass grid_size='):
    checkpoint.load_pretrained(params, target)
  fitted = checkpoint.load_pretrained(params, target, grid_size=(12, 20))
  old = params['Transformer']['posembed_input']['pos_embedding']
  zoomed = scipy.ndimage.zoom(old[0, 1:].reshape(14, 14, 32),
                              (12 / 14, 20 / 14, 1), order=1)
  np.testing.assert_allclose(
      fitted['Transformer']['posembed_input']['pos_embedding'][0, 1:],
      zoomed.reshape(240, 32), atol=1e-6)


def test_transfer_always_starts_from_a_zero_head():
  params = _random_params(_tiny(10), 32)
  same = checkpoint.load_pretrained(params, param_shapes(_tiny(10), 32),
                                    keep_head=True)
  _assert_trees_equal(same, params)
  for classes in (10, 5):  # the same class count too: the paper's protocol
    fitted = checkpoint.load_pretrained(params, param_shapes(_tiny(classes), 32))
    assert fitted['head']['kernel'].shape == (32, classes)
    assert not fitted['head']['kernel'].any() and not fitted['head']['bias'].any()
    np.testing.assert_array_equal(fitted['embedding']['kernel'],
                                  params['embedding']['kernel'])
  # A headless model (features only) takes the rest and leaves the head.
  headless = checkpoint.load_pretrained(params, param_shapes(_tiny(None), 32))
  assert 'head' not in headless and 'cls' in headless


def test_transfer_from_pre_logits_1000_classes_to_1000_without_gives_a_zero_head():
  """The head trained on pre-logits features is never applied to raw ones."""
  pretrained = _random_params(_tiny(1000, representation_size=16), 32)
  # Same width as the model: the old head would fit by shape after dropping
  # pre_logits, which is exactly what must not happen.
  pretrained['head']['kernel'] = np.random.default_rng(1).standard_normal(
      (32, 1000)).astype(np.float32)
  fitted = checkpoint.load_pretrained(pretrained, param_shapes(_tiny(1000), 32))
  assert 'pre_logits' not in fitted
  assert fitted['head']['kernel'].shape == (32, 1000)
  assert not fitted['head']['kernel'].any() and not fitted['head']['bias'].any()
  with pytest.raises(ValueError, match='representation_size=16') as error:
    checkpoint.load_pretrained(pretrained, param_shapes(_tiny(1000), 32),
                               keep_head=True)
  assert '\n' not in str(error.value)


def test_keep_head_keeps_it_exactly_and_refuses_one_that_does_not_fit():
  pretrained = _random_params(_tiny(21, representation_size=16), 32)
  kept = checkpoint.load_pretrained(
      pretrained, param_shapes(_tiny(21, representation_size=16), 32),
      keep_head=True)
  _assert_trees_equal(kept, pretrained)
  with pytest.raises(ValueError, match=r'head of shape \(16, 21\) but the '
                     r'model \(16, 10\); build the model with 21 classes'):
    checkpoint.load_pretrained(
        pretrained, param_shapes(_tiny(10, representation_size=16), 32),
        keep_head=True)


def test_load_pretrained_drops_an_unused_representation_layer():
  pretrained = _random_params(_tiny(21, representation_size=16), 32)
  fitted = checkpoint.load_pretrained(pretrained, param_shapes(_tiny(10), 32))
  assert 'pre_logits' not in fitted
  assert fitted['head']['kernel'].shape == (32, 10) and not fitted['head']['kernel'].any()
  kept = checkpoint.load_pretrained(
      pretrained, param_shapes(_tiny(10, representation_size=16), 32))
  np.testing.assert_array_equal(kept['pre_logits']['kernel'],
                                pretrained['pre_logits']['kernel'])
  assert not kept['head']['kernel'].any()
  with pytest.raises(ValueError, match=r'2 missing keys \(pre_logits/bias, pre_logits/kernel\)'):
    checkpoint.load_pretrained(
        _random_params(_tiny(10), 32),
        param_shapes(_tiny(10, representation_size=16), 32))


def test_load_pretrained_fills_scan_targets_and_casts_dtypes():
  params = _random_params(_tiny(), 32)
  model = _tiny(scan_layers=True)
  target = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.bfloat16),
                        param_shapes(model, 32))
  fitted = checkpoint.load_pretrained(params, target, keep_head=True)
  assert jax.tree.map(np.shape, fitted) == jax.tree.map(np.shape, target)
  assert {a.dtype for a in jax.tree.leaves(fitted)} == {np.dtype(jnp.bfloat16)}
  expected = layers_to_scan(params, 2)
  np.testing.assert_array_equal(
      fitted['Transformer']['encoderblock']['block']['MlpBlock_3']['Dense_1']['kernel'],
      expected['Transformer']['encoderblock']['block']['MlpBlock_3']['Dense_1'][
          'kernel'].astype(jnp.bfloat16))
  # A scanned checkpoint fits a per-layer model.
  back = checkpoint.load_pretrained(
      layers_to_scan(params, 2), param_shapes(_tiny(), 32), keep_head=True)
  _assert_trees_equal(back, params)


def test_hybrid_checkpoints_fit_with_their_resnet_stem(tmp_path):
  hybrid = lambda k: get_model('R+ViT-Ti/16', k, **dict(TINY, num_layers=1))
  params = _random_params(hybrid(10), 64)
  checkpoint.save_npz(tmp_path / 'r.npz', params)
  fitted = checkpoint.load_pretrained(tmp_path / 'r.npz', param_shapes(hybrid(3), 128))
  np.testing.assert_array_equal(fitted['conv_root']['kernel'],
                                params['conv_root']['kernel'])
  assert fitted['Transformer']['posembed_input']['pos_embedding'].shape == (1, 17, 32)


def test_released_hybrid_layout_groupnorm_1_1_1_c_loads_unchanged(tmp_path):
  """R50+ViT files store the stem's GroupNorm scale/bias as (1, 1, 1, C)."""
  # The R50 stem's layout with one unit in each of two stages (for speed).
  model = get_model('R50+ViT-B/16', 10, resnet=ResNetStem((1, 1)),
                    **dict(TINY, num_layers=1))
  params = _random_params(model, 32)
  flat = flatten_params(params)
  released, reshaped = {}, []
  for key, value in flat.items():
    parts = key.split('/')
    if len(parts) > 1 and parts[-2].startswith('gn'):
      value = value.reshape(1, 1, 1, -1)
      reshaped.append(key)
    released[key] = value
  # gn_root, and gn1..gn3 and gn_proj of each stage's unit.
  assert 'gn_root/scale' in reshaped and 'block2/unit1/gn_proj/bias' in reshaped
  assert len(reshaped) == 2 * (1 + 2 * 4)
  np.savez(tmp_path / 'R50+ViT-B_16.npz', **released)
  with np.load(tmp_path / 'R50+ViT-B_16.npz') as f:
    assert f['gn_root/scale'].shape == (1, 1, 1, 64)
  _assert_trees_equal(checkpoint.load_npz(tmp_path / 'R50+ViT-B_16.npz'), params)
  fitted = checkpoint.load_pretrained(tmp_path / 'R50+ViT-B_16.npz',
                                      param_shapes(model, 32), keep_head=True)
  _assert_trees_equal(fitted, params)  # every weight unchanged
  # The layout is accepted for the stem's GroupNorm only.
  bad = dict(released)
  bad['Transformer/encoder_norm/scale'] = flat[
      'Transformer/encoder_norm/scale'].reshape(1, 1, 1, -1)
  with pytest.raises(ValueError, match='Transformer/encoder_norm/scale: '
                     r'checkpoint \(1, 1, 1, 32\) vs model \(32,\)'):
    checkpoint.load_pretrained(bad, param_shapes(model, 32), keep_head=True)


def test_a_checkpoint_that_does_not_fit_is_refused_in_one_line():
  params = _random_params(_tiny(), 32)
  target = param_shapes(get_model('ViT-Ti/16', 10, **dict(
      TINY, num_layers=3, mlp_dim=48, classifier='gap')), 32)
  with pytest.raises(ValueError) as error:
    checkpoint.load_pretrained(params, target)
  message = str(error.value)
  assert '\n' not in message
  assert message.startswith('checkpoint (tree) does not fit the model: ')
  assert '16 missing keys (Transformer/encoderblock_2/' in message
  assert '1 unexpected keys (cls)' in message
  assert ('Transformer/encoderblock_0/MlpBlock_3/Dense_0/bias: checkpoint '
          '(64,) vs model (48,)') in message
  assert 'shape mismatches' in message and 'more)' in message
