"""vit_jax.visualize: rollout, attention distance, posemb similarity, filter PCA, the CLI."""

import json
import math

import jax
import numpy as np
from PIL import Image
import pytest
import sklearn.datasets

from vit_jax import checkpoint
from vit_jax.models import get_model, layers_to_scan, param_shapes
from vit_jax.visualize import capture, commands, embeddings, loading, rollout
from vit_jax.visualize.__main__ import main

TINY = dict(hidden_size=32, num_layers=3, mlp_dim=64, num_heads=4,
            patch_size=(4, 4))


def _tiny(num_classes=10, **overrides):
  return get_model('ViT-Ti/16', num_classes, **{**TINY, **overrides})


def _random_params(model, image_size=16, seed=0):
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda s: (0.3 * rng.standard_normal(s.shape)).astype(np.float32),
      param_shapes(model, image_size))


def _blind_attention(params):
  """Zero query and key projections: every attention logit is 0, weights 1/N."""
  params = jax.tree.map(np.array, params)
  for name, block in params['Transformer'].items():
    if name.startswith('encoderblock_'):
      for proj in ('query', 'key'):
        for leaf in block['MultiHeadDotProductAttention_1'][proj].values():
          leaf[...] = 0.
  return params


def _images(n, size=16, seed=1):
  return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)).astype(
      np.float32)


# ---------------------------------------------------------------- rollout


def test_rollout_of_identity_attention_is_the_identity():
  layers, heads, n = 3, 2, 5
  eye = np.broadcast_to(np.eye(n), (layers, heads, n, n))
  np.testing.assert_array_equal(rollout.rollout(eye), np.eye(n))
  # gap: the pooled output draws equally from every token.
  m, share = rollout.output_map(rollout.rollout(eye), num_prefix_tokens=0)
  np.testing.assert_array_equal(m, np.full(n, 1 / n))
  assert share == 0
  # A class token that only ever attends to itself sees no patch.
  with pytest.raises(ValueError, match='attends to no patch'):
    rollout.output_map(rollout.rollout(eye), num_prefix_tokens=1)


def test_rollout_of_two_random_layers_is_the_hand_product():
  rng = np.random.default_rng(0)
  a = rng.uniform(size=(2, 3, 6, 6))  # layers, heads
  a /= a.sum(-1, keepdims=True)
  by_hand = [(a[l].mean(0) + np.eye(6)) / 2 for l in range(2)]
  np.testing.assert_allclose(rollout.rollout(a), by_hand[1] @ by_hand[0],
                             rtol=1e-12)
  assert not np.allclose(by_hand[0] @ by_hand[1], by_hand[1] @ by_hand[0])


def test_rollout_of_a_model_with_uniform_attention_is_the_closed_form():
  model = _tiny()
  params = _blind_attention(_random_params(model))
  (weights, _), = capture.attention_batches(model, params, _images(3), 8)
  layers, n = TINY['num_layers'], 17
  assert weights.shape == (layers, 3, TINY['num_heads'], n, n)
  np.testing.assert_allclose(weights, 1 / n, rtol=1e-6)
  # ((I + J/n) / 2)^L = 2^-L I + (1 - 2^-L) J/n
  closed = 0.5**layers * np.eye(n) + (1 - 0.5**layers) / n
  joint = rollout.rollout(weights)
  np.testing.assert_allclose(joint, np.broadcast_to(closed, joint.shape),
                             atol=1e-6)
  m, share = rollout.output_map(joint, num_prefix_tokens=1)
  np.testing.assert_allclose(m.sum(-1), 1, rtol=1e-12)
  np.testing.assert_allclose(m, 1 / 16, atol=1e-6)
  np.testing.assert_allclose(share, closed[0, 0], atol=1e-6)


def test_capture_leaves_the_function_alone_and_scan_layers_agree():
  model = _tiny()
  params = _random_params(model)
  x = _images(2)
  (weights, logits), = capture.attention_batches(model, params, x, 2)
  np.testing.assert_allclose(logits, model.apply({'params': params}, x),
                             atol=1e-5)
  np.testing.assert_allclose(weights.sum(-1), 1, atol=1e-5)
  scan = model.clone(scan_layers=True)
  (w_scan, l_scan), = capture.attention_batches(
      scan, layers_to_scan(params, TINY['num_layers']), x, 2)
  np.testing.assert_allclose(w_scan, weights, atol=1e-6)
  np.testing.assert_allclose(l_scan, logits, atol=1e-5)
  assert weights[:, 0].std() > 1e-3  # not uniform: real attention was captured


# ------------------------------------------------------- attention distance


def _mean_pairwise_distance(h, w, stride):
  """Brute force: every ordered pair of grid cells, math.hypot, in pixels."""
  cells = [(y, x) for y in range(h) for x in range(w)]
  total = sum(math.hypot(a[0] - b[0], a[1] - b[1]) for a in cells for b in cells)
  return stride * total / len(cells)**2


def test_mean_attention_distance_of_hand_built_patterns():
  n = 1 + 16  # class token and a 4x4 grid
  self_only = np.broadcast_to(np.eye(n), (2, 3, n, n))
  np.testing.assert_array_equal(
      rollout.mean_attention_distance(self_only, (4, 4), 16, 1), 0)
  uniform = np.full((2, 3, n, n), 1 / n)
  np.testing.assert_allclose(
      rollout.mean_attention_distance(uniform, (4, 4), 16, 1),
      _mean_pairwise_distance(4, 4, 16), rtol=1e-12)
  # 2x2 grid: each query is 0, 1, 1 and sqrt(2) tokens from the keys.
  np.testing.assert_allclose(
      rollout.mean_attention_distance(np.full((4, 4), 0.25), (2, 2), 32, 0),
      32 * (2 + math.sqrt(2)) / 4, rtol=1e-12)


def test_distance_command_on_a_model_with_uniform_attention(tmp_path):
  model = _tiny()
  params = _blind_attention(_random_params(model))
  loaded = loading.Loaded(model=model, params=params, name='tiny',
                          image_size=16, grid=(4, 4), stride=4,
                          num_prefix_tokens=1, hybrid=False)
  paths = []
  for i, image in enumerate(_images(3)):
    paths.append(str(tmp_path / f'{i}.png'))
    Image.fromarray(((image + 1) * 127.5).astype(np.uint8)).save(paths[-1])
  numbers = commands.run_distance(loaded, paths, str(tmp_path / 'out'), 2)
  np.testing.assert_allclose(numbers['distance_pixels'],
                             np.full((3, 4), _mean_pairwise_distance(4, 4, 4)),
                             atol=1e-4)


# ------------------------------------------------- position embeddings


def _sincos_by_hand(h, w, d):
  """The 2-D sin-cos table, one position and one frequency at a time."""
  quarter = d // 4
  table = np.zeros((h * w, d))
  for y in range(h):
    for x in range(w):
      for i in range(quarter):
        omega = 1.0 / 10_000**(i / (quarter - 1))
        table[y * w + x, [i, quarter + i, 2 * quarter + i, 3 * quarter + i]] = (
            math.sin(x * omega), math.cos(x * omega), math.sin(y * omega),
            math.cos(y * omega))
  return table.astype(np.float32)


def test_posemb_similarity_of_sincos2d_is_the_numpy_matrix(tmp_path):
  model = _tiny(classifier='gap', posemb='sincos2d')
  checkpoint.save_npz(tmp_path / 'sincos.npz', _random_params(model, 24))
  loaded = loading.load(str(tmp_path / 'sincos.npz'), image_size=24)
  assert loaded.model.posemb == 'sincos2d' and loaded.grid == (6, 6)
  table = _sincos_by_hand(6, 6, 32).astype(np.float64)
  expected = np.array([[np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))
                        for b in table] for a in table])
  got = embeddings.cosine_similarity(commands.position_embeddings(loaded))
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
  numbers = commands.run_posemb(loaded, str(tmp_path / 'out'))
  np.testing.assert_allclose(np.reshape(numbers['similarity'], (36, 36)),
                             expected, atol=1e-6)


def test_learned_posemb_table_is_read_without_the_class_token_in_raster_order(
    tmp_path):
  """A learned table holding the sin-cos grid gives exactly its similarity."""
  model = _tiny()
  params = jax.tree.map(np.array, _random_params(model))
  table = params['Transformer']['posembed_input']['pos_embedding']
  table[0, 1:] = _sincos_by_hand(4, 4, 32)
  table[0, 0] = 5.  # the class token's row must not appear
  checkpoint.save_npz(tmp_path / 'learned.npz', params)
  loaded = loading.load(str(tmp_path / 'learned.npz'))
  numbers = commands.run_posemb(loaded, str(tmp_path / 'out'))
  grid = _sincos_by_hand(4, 4, 32).astype(np.float64)
  grid /= np.linalg.norm(grid, axis=-1, keepdims=True)
  np.testing.assert_allclose(np.reshape(numbers['similarity'], (16, 16)),
                             grid @ grid.T, atol=1e-6)
  # Neighbours (1 token apart) are more alike than far positions (>= 3).
  by_distance = numbers['mean_similarity_by_distance']
  far = [v for k, v in by_distance.items() if float(k) >= 3]
  assert by_distance['1'] > max(far), by_distance


# ------------------------------------------------------------ filters


def test_filter_components_are_orthonormal_and_hold_the_variance():
  rng = np.random.default_rng(0)
  kernel = rng.standard_normal((4, 4, 3, 64)) * np.linspace(0.1, 2, 48).reshape(
      4, 4, 3, 1)
  pca = embeddings.filter_components(kernel, 100)
  k = len(pca.components)
  assert k == 48
  flat = pca.components.reshape(k, -1)
  np.testing.assert_allclose(flat @ flat.T, np.eye(k), atol=1e-12)
  samples = kernel.reshape(48, 64).T
  eigen = np.linalg.eigvalsh(np.cov(samples, rowvar=False))[::-1]
  np.testing.assert_allclose(pca.explained_variance, eigen, rtol=1e-9)
  np.testing.assert_allclose(pca.total_variance,
                             samples.var(axis=0, ddof=1).sum(), rtol=1e-12)
  np.testing.assert_allclose(pca.explained_variance_ratio.sum(), 1, rtol=1e-12)
  centred = samples - samples.mean(0)
  np.testing.assert_allclose(centred @ flat.T @ flat, centred, atol=1e-10)
  first = embeddings.filter_components(kernel, 5)
  np.testing.assert_allclose(first.explained_variance, eigen[:5], rtol=1e-9)


# ---------------------------------------------------------- the CLI


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  """A tiny released-layout ViT, three digit PNGs, and some bad inputs."""
  root = tmp_path_factory.mktemp('visualize')
  checkpoint.save_npz(root / 'tiny.npz', _random_params(_tiny()))
  digits = sklearn.datasets.load_digits()
  for i in range(3):
    Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8)).save(
        root / f'digit{i}.png')
  (root / 'notes.png').write_text('this is text, not a PNG\n')
  np.savez(root / 'not_vit.npz', weights=np.zeros((3, 3), np.float32))
  return root


def _run(capsys, *argv):
  code = main([str(a) for a in argv])
  out, err = capsys.readouterr()
  return code, out, err


def test_cli_writes_the_four_pictures_and_their_numbers(files, tmp_path, capsys):
  digits = [files / f'digit{i}.png' for i in range(3)]
  common = ['--checkpoint', files / 'tiny.npz', '--out', tmp_path]
  for command, extra in (('attention', digits), ('posemb', []),
                         ('filters', []), ('distance', digits)):
    code, out, err = _run(capsys, command, *extra, *common)
    assert code == 0, err
    with Image.open(tmp_path / f'{command}.png') as png:
      assert png.size[0] > 100 and png.size[1] > 100
    assert f'{command}.json' in out
  attention = json.load(open(tmp_path / 'attention.json'))
  assert attention['grid'] == [4, 4] and attention['layers'] == 3
  for image in attention['images']:
    assert np.isclose(np.sum(image['rollout']), 1, atol=1e-4)
    assert np.shape(image['last_layer_heads']) == (4, 4, 4)
    assert 0 <= image['predicted_class'] < 10
  posemb = json.load(open(tmp_path / 'posemb.json'))
  assert np.shape(posemb['similarity']) == (4, 4, 4, 4)
  np.testing.assert_allclose(np.diagonal(np.reshape(posemb['similarity'],
                                                    (16, 16))), 1, atol=1e-6)
  filters = json.load(open(tmp_path / 'filters.json'))
  assert np.shape(filters['components']) == (28, 4, 4, 3)
  distance = json.load(open(tmp_path / 'distance.json'))
  assert np.shape(distance['distance_pixels']) == (3, 4)
  assert distance['num_images'] == 3


def test_cli_resamples_the_position_embeddings(files, tmp_path, capsys):
  code, _, err = _run(capsys, 'posemb', '--checkpoint', files / 'tiny.npz',
                      '--out', tmp_path, '--image_size', 32)
  assert code == 0, err
  numbers = json.load(open(tmp_path / 'posemb.json'))
  assert numbers['grid'] == [8, 8] and numbers['image_size'] == 32


@pytest.mark.parametrize('argv, match', [
    (['attention', '{root}/notes.png', '--checkpoint', '{root}/tiny.npz'],
     'notes.png is not an image'),
    (['posemb', '--checkpoint', '{root}/not_vit.npz'], 'not a ViT checkpoint'),
    (['posemb', '--checkpoint', '{root}/tiny.npz', '--image_size', '18'],
     'does not divide into 4x4-pixel tokens'),
    (['posemb', '--checkpoint', '{root}/missing.npz'], 'not found'),
    (['posemb', '--checkpoint', '{root}'], 'no config.json'),
])
def test_bad_input_is_a_one_line_error(files, tmp_path, capsys, argv, match):
  argv = [a.format(root=files) for a in argv] + ['--out', str(tmp_path)]
  code, _, err = _run(capsys, *argv)
  assert code == 2
  assert err.startswith('error: ') and err.count('\n') == 1, err
  assert match in err, err


def test_hybrid_attention_and_its_filters(tmp_path, capsys):
  full = _random_params(get_model('R+ViT-Ti/16', 10), 64)
  path = tmp_path / 'R+ViT-Ti_16.npz'
  checkpoint.save_npz(path, full)
  image = tmp_path / 'x.png'
  Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(image)
  code, _, err = _run(capsys, 'attention', image, '--checkpoint', path,
                      '--out', tmp_path)
  assert code == 0, err
  numbers = json.load(open(tmp_path / 'attention.json'))
  assert numbers['hybrid'] and numbers['grid'] == [2, 2]
  assert numbers['pixels_per_token'] == 32
  code, _, err = _run(capsys, 'filters', '--checkpoint', path, '--out', tmp_path)
  assert code == 2 and 'is a hybrid' in err and err.count('\n') == 1, err
  code, _, err = _run(capsys, 'filters', '--checkpoint', path, '--out',
                      tmp_path, '--layer', 'conv_root', '--num_components', 8)
  assert code == 0, err
  numbers = json.load(open(tmp_path / 'filters.json'))
  assert np.shape(numbers['components']) == (8, 7, 7, 3)
  assert 'not the patch embedding' in numbers['what']
