"""Training and evaluation pipelines: source -> host slice -> ops -> host batches.

`build_train` and `build_eval` are the package's entry points (see __init__.py
for the config keys). Three executors produce the same contract:

* NumPy, for in-memory sources whose ops all have NumPy kernels: batch k is
  computed directly from its stream positions (no TensorFlow at all).
* tf.data over a random-access source (folders, or arrays with TF-only ops):
  each batch's example indices come from sampler.TrainOrder, so resuming
  costs one permutation.
* tf.data over a stream source (TFDS): each epoch reshuffles the host's slice
  with a buffer seeded by (seed, host, epoch); resuming skips the consumed part
  of the current epoch before any decoding.

Random-access sources (digits, arrays, folder) train on one global stream: a
permutation of the whole split per epoch, seeded by (seed, epoch) and the
same on every host; global batch s is stream positions [s B, (s+1) B) and
host i reads and preprocesses only its rows [i B/P, (i+1) B/P) of it. Random
ops draw from (seed, global position), so row r of global batch s is the
same bits for any process count P, and a checkpoint moves between process
counts without changing the data. TFDS is read as per-host file shards (one
host cannot read another's records without reading every file), so there the
batches depend on (seed, P) and random ops on (seed, host, host position).
Either way `iterator(k)` is exactly a fresh iterator advanced by k batches.
"""

from __future__ import annotations

import itertools
import math
from typing import Iterator, Optional

import numpy as np

from vit_jax.data import pp as pp_lib
from vit_jax.data import sampler, sources
from vit_jax.data.tf_runtime import tf as _tf

_FOREVER = 2**62
_BATCH_SALT = 0xBA7C4
DEFAULT_SHUFFLE_BUFFER = 50_000


def _cfg(config, key, default=None):
  return sources.config_value(config, key, default)


class _Pipeline:
  """What training and evaluation share: source, ops, host slice, finalising."""

  def __init__(self, input_config, split, global_batch_size, process_index,
               process_count, seed):
    self.host_batch_size = sampler.host_batch_size(global_batch_size, process_count)
    self.process_index, self.process_count = process_index, process_count
    self.seed = int(seed)
    # Stream of the random draws. Training on TFDS: the host's own; evaluation and
    # training on random-access sources set GLOBAL_STREAM (draws ignore the host).
    self.key_host = process_index
    data = _cfg(input_config, 'data')
    self.source = sources.open_source(data, _cfg(input_config, 'data_dir'), split)
    pp = _cfg(input_config, 'pp')
    if not pp:
      raise ValueError("input.pp is empty: give the preprocessing ops, e.g. "
                       "'vit_train(224, 1000)' or 'resize(16)|value_range(-1,1)|onehot(10)'.")
    self.pp = pp if isinstance(pp, str) else '|'.join(pp)
    self.ops, self.batch_ops = pp_lib.parse_pp(pp)
    #: (H, W, C) of the images the preprocessing makes (None: unknown sizes);
    #: set with the labels' width, from the first example or the element_spec.
    self.image_shape = None
    _check_decode_first(self.source, self.ops)
    self._explicit_keep = any(op.name == 'keep' for op in self.ops)
    self.num_examples = self.source.size
    self.skipped_files = list(getattr(self.source, 'skipped', []))  # (path, why)
    self.host_start, self.host_stop = sampler.host_range(
        self.num_examples, process_index, process_count)
    self.shuffle_buffer = int(_cfg(input_config, 'shuffle_buffer_size', DEFAULT_SHUFFLE_BUFFER))
    self.tf_prefetch = int(_cfg(input_config, 'prefetch', 2))
    self.threads = int(_cfg(input_config, 'threads', 0))
    self._preprocess = None
    self.uses_numpy = (getattr(self.source, 'in_memory', False) and
                       all(op.np_fn is not None for op in self.ops))

  # ------------------------------------------------------------ finalise
  def _select(self, ex: dict) -> dict:
    if not self._explicit_keep:
      ex = {k: v for k, v in ex.items() if k in ('image', 'labels')}
    for k in ('image', 'labels'):
      if k not in ex:
        raise ValueError(f'The preprocessing {_describe(self.ops)} leaves no {k!r} '
                         f'(it leaves {sorted(ex)}); end it with e.g. onehot(K) '
                         "and keep('image', 'labels').")
    return ex

  def _finalize_np(self, batch: dict) -> dict:
    batch = self._select(batch)
    for k in ('image', 'labels'):
      batch[k] = np.asarray(batch[k], np.float32)
    return batch

  def _finalize_tf(self, ex: dict) -> dict:
    tf = _tf()
    ex = self._select(ex)
    return {**ex, 'image': tf.cast(ex['image'], tf.float32),
            'labels': tf.cast(ex['labels'], tf.float32)}

  # ------------------------------------------------------------ kernels
  def _np_apply(self, batch: dict, positions: np.ndarray) -> dict:
    keys = sampler.example_keys(self.seed, self.key_host, positions)
    for i, op in enumerate(self.ops):
      batch = op.np_fn(batch, sampler.fold_in(keys, i))
    return self._finalize_np(batch)

  def _tf_preprocess(self):
    """(position, example or index) -> preprocessed example, seeded by the position.

    Traced once per pipeline (a tf.function), however many datasets use it;
    random-access sources pass an index, which is looked up in the same map.
    """
    if self._preprocess is None:
      tf = _tf()
      base = int(sampler.fold_in(np.uint64(self.seed % 2**64), self.key_host) >> np.uint64(1))
      lookup = self.source.tf_lookup() if hasattr(self.source, 'tf_lookup') else None
      def fn(position, ex):
        if lookup is not None:
          ex = lookup(ex)
        seed = tf.stack([tf.constant(base, tf.int64), tf.cast(position, tf.int64)])
        for i, op in enumerate(self.ops):
          ex = op.tf_fn(ex, tf.random.experimental.stateless_fold_in(seed, i))
        return self._finalize_tf(ex)
      self._preprocess = tf.function(fn, autograph=False)
    return self._preprocess

  def _tf_options(self, ds):
    tf = _tf()
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_optimization.map_parallelization = True
    if self.threads:
      options.threading.private_threadpool_size = self.threads
      options.threading.max_intra_op_parallelism = 1
    return ds.with_options(options)

  def _tf_numpy_iterator(self, ds) -> Iterator[dict]:
    tf = _tf()
    iterator = iter(ds.as_numpy_iterator())
    while True:
      try:
        batch = next(iterator)
      except StopIteration:
        return
      except tf.errors.OpError as e:
        raise RuntimeError(f'The input pipeline of {self.source.description} failed: '
                           f'{e.message.splitlines()[0]}{self._culprit()}') from None
      yield dict(batch)

  def _culprit(self) -> str:
    """For image folders: names the file that does not decode, and the remedy."""
    find = getattr(self.source, 'find_undecodable', None)
    found = find() if find else None
    if not found:
      return ''
    return (f'; {found[0]} is corrupt ({found[1]}): delete it, or set '
            "input.data.check='decode' to find and skip every such file.")


# Ops that never read pixels (label and key ops) may come before `decode`.
_PIXEL_FREE_OPS = ('onehot', 'multihot', 'keep', 'drop', 'copy')
_DECODE_OPS = ('decode', 'decode_jpeg_and_inception_crop')


def _check_decode_first(source, ops) -> None:
  """Encoded images (TFDS, folders) must meet `decode` before any op that reads pixels."""
  if not getattr(source, 'encoded_images', False):
    return
  first = next((op for op in ops if op.name not in _PIXEL_FREE_OPS), None)
  if first is not None and first.name in _DECODE_OPS:
    return
  where = f'starts with {first.spec!r}' if first else 'never decodes them'
  raise ValueError(f'{source.description} holds encoded images (JPEG/PNG bytes) but the pp '
                   f"{where}: put 'decode' first, e.g. 'decode|{_describe(ops)}'.")


def _describe(ops) -> str:
  return '|'.join(op.spec for op in ops) or '(no ops)'


class TrainPipeline(_Pipeline):
  """Endless, shuffled, augmented host batches; `iterator(k)` resumes at batch k."""

  def __init__(self, input_config, *, global_batch_size: int, seed: int,
               process_index: int = 0, process_count: int = 1):
    super().__init__(input_config, None, global_batch_size, process_index,
                     process_count, seed)
    self._dataset_at_0 = None
    self.global_batch_size = int(global_batch_size)
    self.random_access = hasattr(self.source, 'tf_lookup')
    if self.random_access:  # One global stream, the same on every host.
      self.key_host = sampler.GLOBAL_STREAM
      self.order = sampler.TrainOrder(self.num_examples, self.seed)
    else:  # This host's share of the split, shuffled by its own buffer.
      self.order = sampler.TrainOrder(self.host_stop - self.host_start, self.seed,
                                      process_index)
    self.num_classes = self._labels_width()

  def _labels_width(self) -> int:
    if self.uses_numpy:
      first = self._np_batch(0, np.arange(1))
      self.image_shape = tuple(first['image'].shape[1:])
      return int(first['labels'].shape[-1])
    self._dataset_at_0 = self._tf_dataset(0)  # Reused by iterator(0).
    self.image_shape = _static_shape(self._dataset_at_0.element_spec['image'])
    spec = self._dataset_at_0.element_spec['labels']
    if spec.shape.rank != 2 or spec.shape[-1] is None:
      raise ValueError(f'Labels must be [batch, K] after {_describe(self.ops)}, got '
                       f'shape {spec.shape}.')
    return int(spec.shape[-1])

  def iterator(self, start_batch: int = 0) -> Iterator[dict]:
    """Host batches from batch `start_batch` on (the number already consumed)."""
    if start_batch < 0:
      raise ValueError(f'start_batch must be >= 0, got {start_batch}.')
    if self.uses_numpy:
      batches = (self._np_batch(k) for k in itertools.count(start_batch))
    else:
      ds = self._dataset_at_0 if start_batch == 0 else self._tf_dataset(start_batch)
      batches = self._tf_numpy_iterator(ds)
    for k, batch in enumerate(batches, start_batch):
      yield self._apply_batch_ops(batch, k)

  def _apply_batch_ops(self, batch: dict, k: int) -> dict:
    """Batch ops (mixup) draw from (seed, k): the same draw on every host."""
    key = sampler.fold_in(sampler.example_keys(self.seed, sampler.GLOBAL_STREAM, k),
                          _BATCH_SALT)
    for i, op in enumerate(self.batch_ops):
      batch = op.batch_fn(batch, int(sampler.fold_in(key, i)))
    return batch

  def _host_positions(self, k: int) -> np.ndarray:
    """Global stream positions of this host's rows of global batch k."""
    return sampler.host_positions(k, self.global_batch_size, self.process_index,
                                  self.process_count)

  def _np_batch(self, k: int, offsets: Optional[np.ndarray] = None) -> dict:
    positions = self._host_positions(k)
    if offsets is not None:
      positions = positions[offsets]
    return self._np_apply(self.source.take(self.order.indices(positions)), positions)

  def _tf_dataset(self, start_batch: int):
    tf = _tf()
    if self.random_access:
      ds = self._global_rows(start_batch)
    else:
      ds = self._host_stream(start_batch)
    ds = ds.map(self._tf_preprocess(), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(self.host_batch_size, drop_remainder=True)
    return self._tf_options(ds.prefetch(self.tf_prefetch))

  def _global_rows(self, start_batch: int):
    """(global position, example index) of this host's rows, batch after batch."""
    tf = _tf()
    b = self.host_batch_size
    def rows(k):
      positions = self._host_positions(int(k))
      return positions, self.order.indices(positions)
    def one_batch(k):
      positions, indices = tf.numpy_function(rows, [k], (tf.int64, tf.int64),
                                             stateful=False)
      positions.set_shape([b])
      indices.set_shape([b])
      return tf.data.Dataset.from_tensor_slices((positions, indices))
    # Indices: _tf_preprocess looks them up, so only this host's rows are read.
    return tf.data.Dataset.range(start_batch, _FOREVER).flat_map(one_batch)

  def _host_stream(self, start_batch: int):
    """(host position, example) of this host's shuffled share, from batch start_batch."""
    tf = _tf()
    first = start_batch * self.host_batch_size
    epoch0, offset = divmod(first, self.order.n)
    examples = self._shuffled_stream(tf.data.Dataset.range(epoch0, _FOREVER))
    return tf.data.Dataset.zip((tf.data.Dataset.range(first, _FOREVER),
                                examples.skip(offset)))

  def _shuffled_stream(self, epochs):
    tf = _tf()
    host = self.source.host_dataset(self.host_start, self.host_stop, train=True,
                                    seed=self.seed)
    base = int(sampler.fold_in(np.uint64(self.seed % 2**64), self.process_index) % np.uint64(2**30))
    buffer = self.shuffle_buffer
    def one_epoch(epoch):
      seed = (tf.constant(base, tf.int64) + epoch * 1_000_003) % (2**31 - 1)
      return host.shuffle(buffer, seed=seed, reshuffle_each_iteration=False)
    return epochs.flat_map(one_epoch)


class EvalPipeline(_Pipeline):
  """Every example of the split once across hosts, padded and masked."""

  def __init__(self, input_config, split: Optional[str], *, global_batch_size: int,
               process_index: int = 0, process_count: int = 1):
    super().__init__(input_config, split, global_batch_size, process_index,
                     process_count, seed=0)
    self.key_host = sampler.GLOBAL_STREAM
    self.num_batches = sampler.eval_num_batches(
        self.num_examples, self.host_batch_size, process_count)
    self.num_host_examples = self.host_stop - self.host_start
    # A host without examples processes example 0 for the shapes, masked out.
    self._range = ((self.host_start, self.host_stop) if self.num_host_examples else (0, 1))
    self._dataset = None if self.uses_numpy else self._tf_dataset(*self._range)
    self.num_classes = self._labels_width()

  def _labels_width(self) -> int:
    if self.uses_numpy:
      lo = self._range[0]
      first = next(self._np_batches(lo, lo + 1))
      self.image_shape = tuple(first['image'].shape[1:])
      return int(first['labels'].shape[-1])
    self.image_shape = _static_shape(self._dataset.element_spec['image'])
    spec = self._dataset.element_spec['labels']
    if spec.shape.rank != 2 or spec.shape[-1] is None:
      raise ValueError(f'Labels must be [batch, K] after {_describe(self.ops)}, got '
                       f'shape {spec.shape}.')
    return int(spec.shape[-1])

  def __len__(self) -> int:
    return self.num_batches

  def __iter__(self) -> Iterator[dict]:
    if self.uses_numpy:
      batches = self._np_batches(*self._range)
    else:  # The same tf.data pipeline every time: no re-tracing between evaluations.
      batches = self._tf_numpy_iterator(self._dataset)
    return _pad_and_mask(batches, self.host_batch_size, self.num_batches,
                         self.num_host_examples)

  def _np_batches(self, lo: int, hi: int) -> Iterator[dict]:
    for start in range(lo, hi, self.host_batch_size):
      positions = np.arange(start, min(start + self.host_batch_size, hi))
      yield self._np_apply(self.source.take(positions), positions)

  def _tf_dataset(self, lo: int, hi: int):
    tf = _tf()
    if hasattr(self.source, 'tf_lookup'):
      examples = tf.data.Dataset.range(lo, hi)  # Indices: _tf_preprocess looks them up.
    else:
      examples = self.source.host_dataset(lo, hi, train=False)
    ds = tf.data.Dataset.zip((tf.data.Dataset.range(lo, hi), examples))
    ds = ds.map(self._tf_preprocess(), num_parallel_calls=tf.data.AUTOTUNE)
    return self._tf_options(ds.batch(self.host_batch_size).prefetch(self.tf_prefetch))


def _pad_and_mask(batches, batch_size: int, num_batches: int, num_valid: int):
  """Pads partial batches with zeros, adds `mask`, and yields `num_batches` batches."""
  seen, template = 0, None
  for batch in batches:
    n = len(batch['image'])
    mask = (seen + np.arange(batch_size) < num_valid) & (np.arange(batch_size) < n)
    batch = {k: _pad(v, batch_size) for k, v in batch.items()}
    batch['mask'] = mask.astype(np.float32)
    template = template or batch
    seen += n
    yield batch
  for _ in range(num_batches - math.ceil(max(seen, 1) / batch_size)):
    yield {k: _blank(v.shape, v.dtype) for k, v in template.items()}


def _pad(x: np.ndarray, size: int) -> np.ndarray:
  if len(x) == size:
    return x
  return np.concatenate([x, _blank((size - len(x),) + x.shape[1:], x.dtype)])


def _blank(shape, dtype) -> np.ndarray:
  """Padding: zeros, or empty strings (e.g. for `file_name`)."""
  dtype = np.dtype(dtype)
  fill = {'O': b'', 'S': b'', 'U': ''}.get(dtype.kind, 0)
  return np.full(shape, fill, dtype)


def _static_shape(spec) -> Optional[tuple]:
  """(H, W, C) of a batched tf.TensorSpec (None where tf.data cannot know a
  size, e.g. the channels after a random crop), or None for an unknown rank."""
  return (tuple(spec.shape.as_list()[1:]) if spec.shape.rank is not None
          else None)


def check_image_size(pipeline: _Pipeline, image_size, *, where: str = 'input.pp',
                     name: str = 'image_size') -> None:
  """The images `pipeline` makes must be the model's input: one line if not.

  `image_size` is the model's (an int or (H, W)); `where` names the
  preprocessing in the user's config (`input.pp`, `evals.val.pp`) and `name`
  the size. Otherwise the mismatch surfaces as a shape error after the step
  has compiled (or, for an evaluator, after training up to its first
  evaluation). Sizes tf.data cannot know ahead are not checked.
  """
  shape = pipeline.image_shape
  if shape is None:
    return
  want = ((image_size, image_size) if isinstance(image_size, int)
          else tuple(image_size))
  if len(shape) != 3 or any(s not in (None, w)
                            for s, w in zip(shape, (*want, 3))):
    made = 'x'.join('?' if s is None else str(s) for s in shape)
    size = 'x'.join(str(s) for s in want)
    fix = (f'make them agree: the size in {where}, or {name}={shape[0]}'
           if len(shape) == 3 and shape[0] == shape[1] and shape[0] and
           shape[2] in (None, 3)
           else f'make {where} end with {size}x3 (RGB) images')
    raise ValueError(f'{where} {pipeline.pp!r} makes {made} images but '
                     f'{name}={size if len(set(want)) > 1 else want[0]} '
                     f'(the model takes {size}x3); {fix}.')


def build_train(input_config, *, global_batch_size: int, seed: int,
                process_index: int = 0, process_count: int = 1) -> TrainPipeline:
  """The training pipeline of this host (see the package docstring)."""
  return TrainPipeline(input_config, global_batch_size=global_batch_size, seed=seed,
                       process_index=process_index, process_count=process_count)


def build_eval(input_config, split: Optional[str] = None, *, global_batch_size: int,
               process_index: int = 0, process_count: int = 1) -> EvalPipeline:
  """The evaluation pipeline of this host over `split` (default input.data.split)."""
  return EvalPipeline(input_config, split, global_batch_size=global_batch_size,
                      process_index=process_index, process_count=process_count)
