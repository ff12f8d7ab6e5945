"""RandAugment transforms against hand-computed values and PIL (vit_jax.data.randaugment)."""

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from vit_jax.data import randaugment as ra
from vit_jax.data import registry
from vit_jax.data.tf_runtime import tf as get_tf

tf = get_tf()
RNG = np.random.default_rng(0)
IMAGE = RNG.integers(0, 256, (12, 10, 3), dtype=np.uint8)


def np_(x):
  return np.asarray(x.numpy() if hasattr(x, 'numpy') else x)


def test_pointwise_transforms_by_hand():
  x = tf.constant(np.array([0, 100, 120, 127, 128, 200, 255], np.uint8).reshape(1, 7, 1))
  np.testing.assert_array_equal(np_(ra.posterize(x, 2)).ravel(), [0, 64, 64, 64, 128, 192, 192])
  np.testing.assert_array_equal(np_(ra.solarize(x, 128)).ravel(), [0, 100, 120, 127, 127, 55, 0])
  np.testing.assert_array_equal(np_(ra.solarize_add(x, 50)).ravel(), [50, 150, 170, 177, 128, 200, 255])
  np.testing.assert_array_equal(np_(ra.invert(x)).ravel(), [255, 155, 135, 128, 127, 55, 0])


def test_autocontrast_stretches_each_channel():
  image = np.stack([np.array([[50, 75], [100, 60]]), np.full((2, 2), 9),
                    np.array([[0, 255], [10, 20]])], -1).astype(np.uint8)
  out = np_(ra.autocontrast(tf.constant(image)))
  np.testing.assert_array_equal(out[..., 0], [[0, 127], [255, 51]])  # (x-50)*5.1, floored
  np.testing.assert_array_equal(out[..., 1], 9)  # a flat channel stays
  np.testing.assert_array_equal(out[..., 2], image[..., 2])


@pytest.mark.parametrize('name', ['equalize', 'autocontrast', 'posterize', 'solarize', 'invert'])
def test_matches_pil_imageops(name):
  pil = Image.fromarray(IMAGE)
  expected = {'equalize': lambda: ImageOps.equalize(pil),
              'autocontrast': lambda: ImageOps.autocontrast(pil),
              'posterize': lambda: ImageOps.posterize(pil, 3),
              'solarize': lambda: ImageOps.solarize(pil, 100),
              'invert': lambda: ImageOps.invert(pil)}[name]()
  ours = {'equalize': lambda x: ra.equalize(x), 'autocontrast': lambda x: ra.autocontrast(x),
          'posterize': lambda x: ra.posterize(x, 3), 'solarize': lambda x: ra.solarize(x, 100),
          'invert': lambda x: ra.invert(x)}[name](tf.constant(IMAGE))
  np.testing.assert_array_equal(np_(ours), np.asarray(expected))


@pytest.mark.parametrize('name,factor', [('Color', 1.9), ('Color', 0.3), ('Contrast', 1.9),
                                         ('Brightness', 2.8), ('Sharpness', 1.9)])
def test_enhancements_match_pil_within_rounding(name, factor):
  expected = np.asarray(getattr(ImageEnhance, name)(Image.fromarray(IMAGE)).enhance(factor))
  ours = np_(getattr(ra, name.lower())(tf.constant(IMAGE), factor))
  assert np.abs(ours.astype(int) - expected).max() <= 2, name


def test_geometry_rotate_translate_shear_cutout():
  square = RNG.integers(0, 256, (5, 5, 3), dtype=np.uint8)
  np.testing.assert_array_equal(np_(ra.rotate(tf.constant(square), 90.0)), np.rot90(square))
  moved = np_(ra.translate_x(tf.constant(IMAGE), 2.0))
  np.testing.assert_array_equal(moved[:, 2:], IMAGE[:, :-2])
  np.testing.assert_array_equal(moved[:, :2], 128)
  moved = np_(ra.translate_y(tf.constant(IMAGE), -3.0))
  np.testing.assert_array_equal(moved[:-3], IMAGE[3:])
  sheared = np_(ra.shear_x(tf.constant(IMAGE), 1.0))  # row y reads x + y
  np.testing.assert_array_equal(sheared[2, :8], IMAGE[2, 2:])
  cut = np_(ra.cutout(tf.constant(IMAGE), 2, tf.constant([5, 5])))
  assert np.all(cut[3:7, 3:7] == 128) and np.array_equal(cut[:3], IMAGE[:3])


def test_randaug_op_is_deterministic_random_and_shape_preserving():
  aug = registry.build_op('randaug(2, 15)').tf_fn
  outputs = [np_(aug({'image': tf.constant(IMAGE)}, tf.constant([i, 0], tf.int64))['image'])
             for i in range(40)]
  again = np_(aug({'image': tf.constant(IMAGE)}, tf.constant([0, 0], tf.int64))['image'])
  np.testing.assert_array_equal(outputs[0], again)
  assert all(o.shape == IMAGE.shape and o.dtype == np.uint8 for o in outputs)
  assert len({o.tobytes() for o in outputs}) > 25  # 16 transforms x 2 layers x signs
  as_float = aug({'image': tf.constant(IMAGE, tf.float32)}, tf.constant([0, 0], tf.int64))['image']
  assert as_float.dtype == tf.float32
  np.testing.assert_array_equal(np_(as_float), outputs[0])
