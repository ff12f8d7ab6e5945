"""Numerics of the preprocessing ops (vit_jax.data ops, label_ops, mixup, registry)."""

import io

import numpy as np
import pytest
from PIL import Image

from vit_jax.data import mixup as mixup_lib
from vit_jax.data import pp as pp_lib
from vit_jax.data import presets, registry
from vit_jax.data.tf_runtime import tf as get_tf

tf = get_tf()
SEED = tf.constant([3, 4], tf.int64)


def op(text):
  return registry.build_op(text)


def run_tf(text, image, label=0, seed=SEED):
  out = op(text).tf_fn({'image': tf.constant(image), 'label': tf.constant(label)}, seed)
  return {k: v.numpy() for k, v in out.items()}


def run_np(text, images, labels=None):
  images = np.asarray(images)
  labels = np.zeros(len(images), np.int64) if labels is None else np.asarray(labels)
  keys = np.arange(len(images), dtype=np.uint64)
  return op(text).np_fn({'image': images, 'label': labels}, keys)


def encode(array, fmt):
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format=fmt, quality=95)
  return buf.getvalue()


def test_resize_matches_hand_computed_bilinear():
  # 1-D [0, 4] -> 4 samples at -0.25, 0.25, 0.75, 1.25 (half-pixel, clamped): 0, 1, 3, 4.
  image = np.array([[0, 4], [8, 12]], np.float32)[..., None].repeat(3, -1)
  expected = np.array([[0, 1, 3, 4], [2, 3, 5, 6], [6, 7, 9, 10], [8, 9, 11, 12]], np.float32)
  np.testing.assert_allclose(run_np('resize(4)', image[None])['image'][0, ..., 1], expected)
  np.testing.assert_allclose(run_tf('resize(4)', image)['image'][..., 1], expected)


@pytest.mark.parametrize('shape,size', [((7, 5), (16, 11)), ((37, 23), (8, 9)), ((8, 8), 8)])
def test_numpy_kernels_match_tensorflow(shape, size):
  image = np.random.default_rng(0).integers(0, 256, shape + (3,), dtype=np.uint8)
  for text in (f'resize({size})', 'resize_small(6)', 'central_crop((4, 3))',
               'central_crop(40)', 'value_range(-1, 1)', 'decode'):
    np.testing.assert_allclose(run_np(text, image[None])['image'][0],
                               run_tf(text, image)['image'], atol=1e-4, err_msg=text)


def test_value_range_maps_ends_exactly():
  image = np.array([0, 127.5, 255, 8, 16], np.float32).reshape(1, 5, 1)
  np.testing.assert_allclose(run_np('value_range(-1, 1)', image[None])['image'][0, 0, :, 0],
                             [-1, 0, 1, 8 / 127.5 - 1, 16 / 127.5 - 1], rtol=1e-6)
  out = run_tf('value_range(0, 1, in_min=0, in_max=16)', image)['image']
  np.testing.assert_allclose(out[0, 3:, 0], [0.5, 1.0])


def test_central_crop_offsets_and_small_images_enlarged():
  image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
  np.testing.assert_array_equal(run_tf('central_crop(2)', image)['image'], image[1:3, 2:4])
  np.testing.assert_array_equal(run_np('central_crop(2)', image[None])['image'][0], image[1:3, 2:4])
  small = np.full((3, 5, 3), 77, np.uint8)
  out = run_tf('central_crop(4)', small)['image']  # 3x5 -> 4x7 then 4x4
  assert out.shape == (4, 4, 3) and out.dtype == np.uint8 and np.all(out == 77)


def test_resize_small_keeps_aspect():
  image = np.zeros((300, 200, 3), np.uint8)
  assert run_tf('resize_small(100)', image)['image'].shape == (150, 100, 3)
  assert run_np('resize_small(100)', image[None])['image'].shape == (1, 150, 100, 3)


def test_flip_lr_mirrors_about_half_of_the_images():
  images = np.random.default_rng(1).integers(0, 256, (400, 3, 4, 3), dtype=np.uint8)
  out = run_np('flip_lr', images)['image']
  flipped = np.all(out == images[:, :, ::-1], axis=(1, 2, 3))
  kept = np.all(out == images, axis=(1, 2, 3))
  assert np.all(flipped | kept) and 160 < flipped.sum() < 240
  tf_flips = [np.array_equal(run_tf('flip_lr', images[0], seed=tf.constant([0, i]))['image'],
                             images[0, :, ::-1]) for i in range(60)]
  assert 15 < sum(tf_flips) < 45


def test_onehot_and_multihot():
  np.testing.assert_array_equal(run_np('onehot(5)', np.zeros((2, 1, 1, 3)), [3, 0])['labels'],
                                [[0, 0, 0, 1, 0], [1, 0, 0, 0, 0]])
  np.testing.assert_array_equal(run_tf('onehot(4, on=0.9, off=0.1)', np.zeros((1, 1, 3)), 2)['labels'],
                                np.float32([0.1, 0.1, 0.9, 0.1]))
  multi = op('multihot(5)').tf_fn
  np.testing.assert_array_equal(multi({'label': tf.constant([1, 3, 3])}, SEED)['labels'], [0, 1, 0, 1, 0])
  np.testing.assert_array_equal(multi({'label': tf.constant([], tf.int64)}, SEED)['labels'], np.zeros(5))


def test_decode_png_exact_and_jpeg_close():
  image = np.random.default_rng(2).integers(0, 256, (9, 13, 3), dtype=np.uint8)
  np.testing.assert_array_equal(run_tf('decode', encode(image, 'PNG'))['image'], image)
  smooth = np.tile(np.linspace(0, 255, 13, dtype=np.uint8)[None, :, None], (9, 1, 3))
  out = run_tf('decode', encode(smooth, 'JPEG'))['image']
  assert out.shape == (9, 13, 3) and np.abs(out.astype(int) - smooth).max() < 8
  grey = run_tf('decode', encode(image[..., 0], 'PNG'))['image']
  np.testing.assert_array_equal(grey, image[..., :1].repeat(3, -1))


def test_inception_crop_area_and_aspect_ranges():
  h, w = 60, 80
  rows, cols = np.mgrid[:h, :w]
  coords = np.stack([rows, cols, np.zeros_like(rows)], -1).astype(np.uint8)
  areas, aspects = [], []
  for i in range(200):
    crop = run_tf('inception_crop', coords, seed=tf.constant([i, 1]))['image']
    ch, cw = crop.shape[:2]
    assert crop[0, 0, 0] + ch <= h and crop[0, 0, 1] + cw <= w  # a window of the image
    areas.append(ch * cw / (h * w))
    aspects.append(cw / ch)
  areas = np.array(areas)
  assert areas.min() >= 0.05 - 0.02 and areas.max() <= 1.0 and areas.min() < 0.2
  assert np.mean(areas > 0.5) > 0.2
  assert run_tf('inception_crop(24)', coords)['image'].shape == (24, 24, 3)


def test_fused_jpeg_decode_and_crop_equals_decode_then_crop():
  image = np.tile(np.linspace(0, 255, 64, dtype=np.uint8)[:, None, None], (1, 48, 3))
  jpeg, png = encode(image, 'JPEG'), encode(image, 'PNG')
  fused = pp_lib.parse_pp('decode|inception_crop(32)')[0]
  assert [o.name for o in fused] == ['decode_jpeg_and_inception_crop']
  for seed in range(5):
    s = tf.constant([seed, 9])
    a = fused[0].tf_fn({'image': tf.constant(jpeg)}, s)['image'].numpy()
    b = op('inception_crop(32)').tf_fn({'image': op('decode').tf_fn(
        {'image': tf.constant(jpeg)}, s)['image']}, s)['image'].numpy()
    np.testing.assert_allclose(a, b, atol=3)
    c = fused[0].tf_fn({'image': tf.constant(png)}, s)['image'].numpy()
    d = op('inception_crop(32)').tf_fn({'image': tf.constant(image)}, s)['image'].numpy()
    np.testing.assert_allclose(c, d, atol=1e-4)


def test_mixup_by_hand():
  batch = {'image': np.float32([[1.0], [3.0], [5.0]]), 'labels': np.float32([[1, 0], [0, 1], [0, 1]])}
  out = mixup_lib.mix(batch, 0.75)
  np.testing.assert_allclose(out['image'], [[0.75 + 1.25], [2.25 + 0.25], [3.75 + 0.75]])
  np.testing.assert_allclose(out['labels'], [[0.75, 0.25], [0.25, 0.75], [0, 1]])
  weights = [mixup_lib.draw_weight(0.2, k) for k in range(300)]
  assert min(weights) >= 0.5 and max(weights) <= 1 and np.mean(np.array(weights) > 0.9) > 0.4
  assert mixup_lib.draw_weight(0.2, 17) == mixup_lib.draw_weight(0.2, 17)


def test_presets_expand_to_the_paper_pipelines():
  assert presets.expand('vit_train(224, 1000)') == [
      'decode', 'inception_crop(224, area_min=0.05, area_max=1.0)', 'flip_lr',
      'value_range(-1, 1)', 'onehot(1000)', "keep('image', 'labels')"]
  ops, batch_ops = pp_lib.parse_pp(['augreg_train(224, 10, 2, 15, 0.5)'])
  assert [o.name for o in ops] == ['decode_jpeg_and_inception_crop', 'flip_lr', 'randaug',
                                   'value_range', 'onehot', 'keep']
  assert [o.name for o in batch_ops] == ['mixup']
  assert 'central_crop(224)' in presets.expand('imagenet_eval(224, 1000)')
  assert 'resize_small(256)' in presets.expand('imagenet_eval(224, 1000)')


@pytest.mark.parametrize('pp,message', [
    ('resise(224)', "Unknown preprocessing op 'resise'.*Did you mean resize"),
    ('resize(224', 'Cannot parse preprocessing op'),
    ('resize(size=x)', 'must be Python literals'),
    ('onehot()', 'Bad arguments for preprocessing op'),
    ('resize(16)||onehot(10)', 'Empty op'),
    ('inception_crop(10, area_min=0)', 'area_min'),
    ('vit_train(224)', 'Bad arguments for preset'),
])
def test_pp_errors_are_clear(pp, message):
  with pytest.raises(ValueError, match=message):
    pp_lib.parse_pp(pp)
