"""The standard preprocessing ops: decode, crops, resizes, flips, value range.

Every op has a TensorFlow kernel (one example inside tf.data); the ones cheap
to vectorise also have a NumPy kernel (a batch of same-shape examples from an
in-memory source). The two kernels agree numerically (tests/test_data_ops.py):
bilinear resizing is TensorFlow's (half-pixel centres, no antialiasing).
Label ops live in label_ops.py, RandAugment in randaugment.py, Mixup in mixup.py.
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import numpy as np

from vit_jax.data import sampler
from vit_jax.data.registry import Op, register
from vit_jax.data.tf_runtime import tf as _tf

Size = Union[int, Sequence[int]]


def _hw(size: Size) -> tuple[int, int]:
  if isinstance(size, int):
    size = (size, size)
  size = tuple(int(s) for s in size)
  if len(size) != 2 or min(size) < 1:
    raise ValueError(f'Image size {size!r} must be a positive int or (height, width).')
  return size


# ---------------------------------------------------------------- decode


def _tf_decode(image, channels=3):
  tf = _tf()
  if image.dtype != tf.string:
    return image
  image = tf.io.decode_image(image, channels=channels, expand_animations=False)
  image.set_shape([None, None, channels])
  return image


@register('decode')
def decode(channels: int = 3, key: str = 'image') -> Op:
  """Decodes JPEG/PNG/GIF/BMP bytes to uint8 [H, W, 3]; leaves decoded images as is."""
  def tf_fn(ex, seed):
    return {**ex, key: _tf_decode(ex[key], channels)}
  def np_fn(batch, keys):
    if batch[key].ndim != 4 or batch[key].shape[-1] != channels:
      raise ValueError(f'In-memory images must be [N, H, W, {channels}], got '
                       f'shape {batch[key].shape[1:]} per example.')
    return batch
  return Op('decode', tf_fn=tf_fn, np_fn=np_fn)


# ------------------------------------------------------ inception crop


def _crop_window(shape, seed, area_min, area_max, aspect):
  tf = _tf()
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, bounding_boxes=tf.zeros([0, 0, 4], tf.float32), seed=seed,
      min_object_covered=0.0, aspect_ratio_range=aspect,
      area_range=(area_min, area_max), max_attempts=10,
      use_image_if_no_bounding_boxes=True)
  return begin, size


def _check_area(area_min, area_max):
  if not 0 < area_min <= area_max <= 1:
    raise ValueError(f'inception_crop needs 0 < area_min <= area_max <= 1, got '
                     f'{area_min}, {area_max} (the paper uses 0.05 and 1).')


@register('inception_crop')
def inception_crop(size: Size = None, area_min: float = 0.05,
                   area_max: float = 1.0, aspect=(3 / 4, 4 / 3),
                   method: str = 'bilinear', key: str = 'image') -> Op:
  """Random crop of area_min..area_max of the image (Szegedy et al.), then resize."""
  _check_area(area_min, area_max)
  hw = _hw(size) if size is not None else None
  def tf_fn(ex, seed):
    tf = _tf()
    image = ex[key]
    begin, crop = _crop_window(tf.shape(image), seed, area_min, area_max, aspect)
    image = tf.slice(image, begin, crop)
    if hw:
      image = tf.image.resize(image, hw, method=method)
    return {**ex, key: image}
  return Op('inception_crop', tf_fn=tf_fn)


@register('decode_jpeg_and_inception_crop')
def decode_jpeg_and_inception_crop(size: Size = None, area_min: float = 0.05,
                                   area_max: float = 1.0, aspect=(3 / 4, 4 / 3),
                                   method: str = 'bilinear',
                                   key: str = 'image') -> Op:
  """`decode|inception_crop`, decoding only the crop window of a JPEG.

  Other formats are decoded whole, then cropped: the crop is the same window
  in both cases (the seed decides it from the image shape alone).
  `decode` followed by `inception_crop` in a pp string becomes this op.
  """
  _check_area(area_min, area_max)
  hw = _hw(size) if size is not None else None
  def tf_fn(ex, seed):
    tf = _tf()
    data = ex[key]
    if data.dtype != tf.string:  # Already decoded (in-memory source).
      return inception_crop(size, area_min, area_max, aspect, method, key).tf_fn(ex, seed)
    def jpeg():
      begin, crop = _crop_window(tf.image.extract_jpeg_shape(data), seed,
                                 area_min, area_max, aspect)
      window = tf.stack([begin[0], begin[1], crop[0], crop[1]])
      return tf.image.decode_and_crop_jpeg(data, window, channels=3)
    def other():
      image = _tf_decode(data, 3)
      begin, crop = _crop_window(tf.shape(image), seed, area_min, area_max, aspect)
      return tf.slice(image, begin, crop)
    image = tf.cond(tf.io.is_jpeg(data), jpeg, other)
    image.set_shape([None, None, 3])
    if hw:
      image = tf.image.resize(image, hw, method=method)
    return {**ex, key: image}
  return Op('decode_jpeg_and_inception_crop', tf_fn=tf_fn)


# ------------------------------------------------------------- resize


def _np_resize_weights(in_size: int, out_size: int):
  """TensorFlow's bilinear sampling (half-pixel centres) along one axis."""
  scale = np.float32(in_size) / np.float32(out_size)
  x = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
  x_floor = np.floor(x)
  lo = np.maximum(x_floor, 0).astype(np.int64)
  hi = np.minimum(np.ceil(x), in_size - 1).astype(np.int64)
  return lo, hi, (x - x_floor).astype(np.float32)


def np_resize(images: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  """Bilinear resize of a [N, H, W, C] batch to float32 [N, h, w, C]."""
  images = np.asarray(images, np.float32)
  ylo, yhi, ylerp = _np_resize_weights(images.shape[1], hw[0])
  xlo, xhi, xlerp = _np_resize_weights(images.shape[2], hw[1])
  xlerp = xlerp[None, None, :, None]
  top_l, top_r = images[:, ylo][:, :, xlo], images[:, ylo][:, :, xhi]
  bot_l, bot_r = images[:, yhi][:, :, xlo], images[:, yhi][:, :, xhi]
  top = top_l + (top_r - top_l) * xlerp
  bottom = bot_l + (bot_r - bot_l) * xlerp
  return top + (bottom - top) * ylerp[None, :, None, None]


@register('resize')
def resize(size: Size, method: str = 'bilinear', key: str = 'image') -> Op:
  """Resizes to `size` (int or (height, width)); the result is float32."""
  hw = _hw(size)
  def tf_fn(ex, seed):
    return {**ex, key: _tf().image.resize(ex[key], hw, method=method)}
  def np_fn(batch, keys):
    return {**batch, key: np_resize(batch[key], hw)}
  return Op('resize', tf_fn=tf_fn, np_fn=np_fn if method == 'bilinear' else None)


def _cast_like(image, dtype):
  """Casts a float image back to `dtype` (rounded and saturated for integers)."""
  tf = _tf()
  if dtype.is_integer:
    image = tf.round(image)
  return tf.saturate_cast(image, dtype) if dtype != image.dtype else image


def _small_hw(h, w, smaller):
  """Shape with the shorter side `smaller`, aspect ratio kept (rounded)."""
  ratio = smaller / min(h, w)
  return max(1, int(round(h * ratio))), max(1, int(round(w * ratio)))


def _tf_resize_small(image, smaller, method):
  tf = _tf()
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  ratio = float(smaller) / tf.reduce_min(shape)
  hw = tf.maximum(tf.cast(tf.round(shape * ratio), tf.int32), 1)
  return tf.image.resize(image, hw, method=method)


@register('resize_small')
def resize_small(smaller_size: int, method: str = 'bilinear', key: str = 'image') -> Op:
  """Resizes so that the shorter side is `smaller_size`, keeping the aspect ratio."""
  def tf_fn(ex, seed):
    return {**ex, key: _tf_resize_small(ex[key], smaller_size, method)}
  def np_fn(batch, keys):
    h, w = batch[key].shape[1:3]
    return {**batch, key: np_resize(batch[key], _small_hw(h, w, smaller_size))}
  return Op('resize_small', tf_fn=tf_fn, np_fn=np_fn if method == 'bilinear' else None)


@register('central_crop')
def central_crop(size: Size, key: str = 'image') -> Op:
  """Central crop of `size`; an image smaller than that is first enlarged to cover it."""
  ch, cw = _hw(size)
  def tf_fn(ex, seed):
    tf = _tf()
    image = ex[key]
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = tf.reduce_max(tf.constant([ch, cw], tf.float32) / shape)
    def enlarge():
      new_hw = tf.cast(tf.math.ceil(shape * scale), tf.int32)
      return _cast_like(tf.image.resize(image, new_hw), image.dtype)
    image = tf.cond(scale > 1.0, enlarge, lambda: image)
    top = (tf.shape(image)[0] - ch) // 2
    left = (tf.shape(image)[1] - cw) // 2
    return {**ex, key: image[top:top + ch, left:left + cw]}
  def np_fn(batch, keys):
    images = batch[key]
    h, w = images.shape[1:3]
    scale = max(1.0, ch / h, cw / w)
    if scale > 1:
      dtype = images.dtype
      images = np_resize(images, (math.ceil(h * scale), math.ceil(w * scale)))
      if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        images = np.clip(np.round(images), info.min, info.max).astype(dtype)
    top, left = (images.shape[1] - ch) // 2, (images.shape[2] - cw) // 2
    return {**batch, key: images[:, top:top + ch, left:left + cw]}
  return Op('central_crop', tf_fn=tf_fn, np_fn=np_fn)


@register('random_crop')
def random_crop(size: Size, key: str = 'image') -> Op:
  """A crop of `size` at a uniformly random position (BiT's VTAB training crop).

  The image must be at least `size` in both dimensions (resize first).
  """
  ch, cw = _hw(size)
  def tf_fn(ex, seed):
    tf = _tf()
    image = ex[key]
    channels = tf.shape(image)[2]
    crop = tf.image.stateless_random_crop(image, [ch, cw, channels], seed)
    return {**ex, key: crop}
  def np_fn(batch, keys):
    images = batch[key]
    h, w = images.shape[1:3]
    if h < ch or w < cw:
      raise ValueError(f'random_crop({ch}, {cw}) of {h}x{w} images: resize '
                       f'them to at least {ch}x{cw} first.')
    tops = np.floor(sampler.uniform(keys, 0) * (h - ch + 1)).astype(int)
    lefts = np.floor(sampler.uniform(keys, 1) * (w - cw + 1)).astype(int)
    return {**batch, key: np.stack([im[t:t + ch, l:l + cw] for im, t, l in
                                    zip(images, tops, lefts)])}
  return Op('random_crop', tf_fn=tf_fn, np_fn=np_fn)


# ------------------------------------------------------ flip and range


@register('flip_lr')
def flip_lr(key: str = 'image') -> Op:
  """Mirrors the image left-right with probability 1/2."""
  def tf_fn(ex, seed):
    tf = _tf()
    flip = tf.random.stateless_uniform([], seed) < 0.5
    image = ex[key]
    return {**ex, key: tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)}
  def np_fn(batch, keys):
    flip = sampler.uniform(keys, 0) < 0.5
    images = batch[key].copy()
    images[flip] = images[flip, :, ::-1]
    return {**batch, key: images}
  return Op('flip_lr', tf_fn=tf_fn, np_fn=np_fn)


@register('value_range')
def value_range(vmin: float = -1, vmax: float = 1, in_min: float = 0,
                in_max: float = 255, clip_values: bool = False,
                key: str = 'image') -> Op:
  """Maps [in_min, in_max] (default 0..255) linearly to [vmin, vmax], float32."""
  if in_max <= in_min:
    raise ValueError(f'value_range needs in_min < in_max, got {in_min}, {in_max}.')
  scale = (vmax - vmin) / (in_max - in_min)
  def tf_fn(ex, seed):
    tf = _tf()
    image = (tf.cast(ex[key], tf.float32) - in_min) * scale + vmin
    if clip_values:
      image = tf.clip_by_value(image, min(vmin, vmax), max(vmin, vmax))
    return {**ex, key: image}
  def np_fn(batch, keys):
    image = (np.asarray(batch[key], np.float32) - np.float32(in_min)) * np.float32(scale)
    image = image + np.float32(vmin)
    if clip_values:
      image = np.clip(image, min(vmin, vmax), max(vmin, vmax))
    return {**batch, key: image}
  return Op('value_range', tf_fn=tf_fn, np_fn=np_fn)
