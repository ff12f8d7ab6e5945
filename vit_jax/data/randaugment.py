"""RandAugment (Cubuk et al., 2020) in TensorFlow, as the AugReg study applied it.

`randaug(num_layers, magnitude)` applies `num_layers` transforms, each chosen
uniformly from the 16 below, at a magnitude on the usual 0..10 scale (AugReg
used 10, 15 and 20; values above 10 extrapolate). Geometric transforms get a
random sign; uncovered pixels are filled with grey (128). The image is uint8
while transformed (float input is rounded and clipped, and cast back).

Magnitude m maps to: rotate 30 m/10 degrees; shear 0.3 m/10; translate
`translate_const` m/10 pixels; posterize to int(4 m/10) bits (as in the
reference TPU implementation, higher m keeps more bits); solarize threshold
int(256 m/10); solarize_add int(110 m/10); colour/contrast/brightness/
sharpness factor 0.1 + 1.8 m/10; cutout half-side int(`cutout_const` m/10).
Randomness is stateless, drawn from the example's seed.
"""

from __future__ import annotations

import math

from vit_jax.data.registry import Op, register
from vit_jax.data.tf_runtime import tf as _tf

FILL = 128
_MAX_LEVEL = 10.0


def _blend(degenerate, image, factor):
  """degenerate + factor (image - degenerate), clipped to uint8 (PIL's ImageEnhance)."""
  tf = _tf()
  d, x = tf.cast(degenerate, tf.float32), tf.cast(image, tf.float32)
  return tf.saturate_cast(tf.round(d + factor * (x - d)), tf.uint8)


def _grey(image):
  tf = _tf()
  return tf.image.rgb_to_grayscale(image)  # ITU-R 601 weights, like PIL's L.


def autocontrast(image):
  """Stretches each channel to 0..255 (channels of one value stay as they are)."""
  tf = _tf()
  x = tf.cast(image, tf.float32)
  lo = tf.reduce_min(x, axis=[0, 1], keepdims=True)
  hi = tf.reduce_max(x, axis=[0, 1], keepdims=True)
  scale = tf.where(hi > lo, 255.0 / tf.maximum(hi - lo, 1.0), 1.0)
  offset = tf.where(hi > lo, lo, 0.0)
  return tf.saturate_cast(tf.floor((x - offset) * scale), tf.uint8)


def _equalize_channel(channel):
  tf = _tf()
  hist = tf.math.bincount(tf.reshape(tf.cast(channel, tf.int32), [-1]),
                          minlength=256, maxlength=256)
  nonzero = tf.boolean_mask(hist, hist > 0)
  step = (tf.reduce_sum(nonzero) - nonzero[-1]) // 255
  def equalized():
    lut = (tf.cumsum(hist) + step // 2) // tf.maximum(step, 1)
    lut = tf.clip_by_value(tf.concat([[0], lut[:-1]], 0), 0, 255)
    return tf.cast(tf.gather(lut, tf.cast(channel, tf.int32)), tf.uint8)
  return tf.cond(step > 0, equalized, lambda: channel)


def equalize(image):
  """Histogram equalisation per channel (PIL's ImageOps.equalize)."""
  tf = _tf()
  return tf.stack([_equalize_channel(image[..., c]) for c in range(3)], axis=-1)


def invert(image):
  return 255 - image


def posterize(image, bits: int):
  tf = _tf()
  shift = 8 - bits
  return tf.bitwise.left_shift(tf.bitwise.right_shift(image, shift), shift)


def solarize(image, threshold):
  tf = _tf()
  return tf.where(tf.cast(image, tf.int32) < threshold, image, 255 - image)


def solarize_add(image, addition, threshold=128):
  tf = _tf()
  added = tf.saturate_cast(tf.cast(image, tf.int32) + addition, tf.uint8)
  return tf.where(image < threshold, added, image)


def color(image, factor):
  tf = _tf()
  return _blend(tf.image.grayscale_to_rgb(_grey(image)), image, factor)


def contrast(image, factor):
  tf = _tf()
  mean = tf.reduce_mean(tf.cast(_grey(image), tf.float32))
  return _blend(tf.fill(tf.shape(image), mean), image, factor)


def brightness(image, factor):
  tf = _tf()
  return _blend(tf.zeros_like(image), image, factor)


def sharpness(image, factor):
  """Blends with a 3x3-smoothed image (centre weight 5/13), borders untouched."""
  tf = _tf()
  x = tf.cast(image, tf.float32)[None]
  kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
  smooth = tf.round(tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], 'VALID'))[0]
  inner = tf.pad(tf.ones_like(smooth), [[1, 1], [1, 1], [0, 0]])
  smooth = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
  degenerate = tf.where(inner > 0, smooth, x[0])
  return _blend(degenerate, image, factor)


def affine(image, matrix):
  """Output pixel (x, y) takes input (a0 x + a1 y + a2, b0 x + b1 y + b2), nearest."""
  tf = _tf()
  matrix = tf.cast(tf.concat([tf.reshape(matrix, [6]), [0.0, 0.0]], 0), tf.float32)
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=image[None], transforms=matrix[None], output_shape=tf.shape(image)[:2],
      fill_value=float(FILL), interpolation='NEAREST', fill_mode='CONSTANT')
  return out[0]


def rotate(image, degrees):
  """Rotates about the centre, counter-clockwise on screen for positive degrees (as PIL)."""
  tf = _tf()
  theta = tf.cast(degrees, tf.float32) * math.pi / 180.0
  h, w = tf.cast(tf.shape(image)[0], tf.float32), tf.cast(tf.shape(image)[1], tf.float32)
  cx, cy = (w - 1) / 2, (h - 1) / 2
  c, s = tf.cos(theta), tf.sin(theta)
  return affine(image, tf.stack([c, -s, cx - c * cx + s * cy,
                                 s, c, cy - s * cx - c * cy]))


def shear_x(image, level):
  return affine(image, [1.0, level, 0.0, 0.0, 1.0, 0.0])


def shear_y(image, level):
  return affine(image, [1.0, 0.0, 0.0, level, 1.0, 0.0])


def translate_x(image, pixels):
  return affine(image, [1.0, 0.0, -pixels, 0.0, 1.0, 0.0])


def translate_y(image, pixels):
  return affine(image, [1.0, 0.0, 0.0, 0.0, 1.0, -pixels])


def cutout(image, half_side, center):
  """Fills the square of side 2 half_side around `center` (y, x) with grey."""
  tf = _tf()
  shape = tf.shape(image)
  ys = tf.range(shape[0])[:, None]
  xs = tf.range(shape[1])[None, :]
  inside = ((ys >= center[0] - half_side) & (ys < center[0] + half_side) &
            (xs >= center[1] - half_side) & (xs < center[1] + half_side))
  return tf.where(inside[..., None], tf.cast(FILL, image.dtype), image)


def _transforms(magnitude, translate_const, cutout_const):
  """The 16 transforms as functions (image, seed) -> image at this magnitude."""
  tf = _tf()
  level = magnitude / _MAX_LEVEL
  enhance = level * 1.8 + 0.1

  def signed(value, seed):
    sign = tf.where(tf.random.stateless_uniform([], seed) < 0.5, -1.0, 1.0)
    return sign * value

  def cutout_random(image, seed):
    shape = tf.shape(image)
    center = tf.random.stateless_uniform([2], seed, maxval=2**30, dtype=tf.int32) % shape[:2]
    return cutout(image, int(level * cutout_const), center)

  return [
      lambda im, s: autocontrast(im),
      lambda im, s: equalize(im),
      lambda im, s: invert(im),
      lambda im, s: rotate(im, signed(30.0 * level, s)),
      lambda im, s: posterize(im, min(8, int(level * 4))),
      lambda im, s: solarize(im, int(level * 256)),
      lambda im, s: color(im, enhance),
      lambda im, s: contrast(im, enhance),
      lambda im, s: brightness(im, enhance),
      lambda im, s: sharpness(im, enhance),
      lambda im, s: shear_x(im, signed(0.3 * level, s)),
      lambda im, s: shear_y(im, signed(0.3 * level, s)),
      lambda im, s: translate_x(im, signed(translate_const * level, s)),
      lambda im, s: translate_y(im, signed(translate_const * level, s)),
      cutout_random,
      lambda im, s: solarize_add(im, int(level * 110)),
  ]


NUM_TRANSFORMS = 16


@register('randaug')
def randaug(num_layers: int = 2, magnitude: float = 10, translate_const: float = 100,
            cutout_const: float = 40, key: str = 'image') -> Op:
  """RandAugment with `num_layers` random transforms at `magnitude` (0..10 scale)."""
  if num_layers < 0 or magnitude < 0:
    raise ValueError(f'randaug needs num_layers >= 0 and magnitude >= 0, got '
                     f'{num_layers}, {magnitude}.')
  def tf_fn(ex, seed):
    tf = _tf()
    transforms = _transforms(magnitude, translate_const, cutout_const)
    image = ex[key]
    dtype = image.dtype
    x = image if dtype == tf.uint8 else tf.saturate_cast(tf.round(image), tf.uint8)
    seeds = tf.random.experimental.stateless_split(seed, 2 * max(num_layers, 1))
    for layer in range(num_layers):
      choice = tf.random.stateless_uniform([], seeds[2 * layer], maxval=NUM_TRANSFORMS,
                                           dtype=tf.int32)
      branch_seed = seeds[2 * layer + 1]
      x = tf.switch_case(choice, [
          (lambda t=t: tf.ensure_shape(t(x, branch_seed), [None, None, 3]))
          for t in transforms])
    return {**ex, key: x if dtype == tf.uint8 else tf.cast(x, dtype)}
  return Op('randaug', tf_fn=tf_fn)
