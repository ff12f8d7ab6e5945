"""Input-pipeline throughput: images/s per CPU core, ours beside a bare tf.data pipeline.

    python -m vit_jax.data.benchmark --threads=1 --seconds=20

Writes `--num_images` generated 500x375 JPEGs (photographs from scikit-image,
cropped, jittered and resized, so the files look like ImageNet's) into a
temporary image folder, then alternates, `--rounds` times each:

* train: ours (`vit_train(224, K)`: read, JPEG decode fused with the Inception
  crop, resize, flip, value range, one-hot) against a bare tf.data pipeline
  doing the same operations (`decode_and_crop_jpeg` from a
  `sample_distorted_bounding_box` window);
* eval: ours (`imagenet_eval(224, K)`: decode, shorter side 256, central crop,
  value range, padding and mask) against the bare equivalent, both as repeated
  passes over the folder (a new iterator per pass, as an evaluator runs);
* the cost of RandAugment (`augreg_train` with mixup=0) and of Mixup
  (`augreg_train`), reported as images/s and time per image.

tf.data runs with `--threads` private threads (one op per thread). Each case
reports images per wall-clock second and images per CPU-second of the whole
process (the throughput of one fully used core, which stays meaningful when
other processes share the machine). Medians are printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Callable, Iterator

import numpy as np

from vit_jax import help_format
from vit_jax.data import pipeline
from vit_jax.data.tf_runtime import tf as _tf

WIDTH, HEIGHT = 500, 375


def _photos() -> list[np.ndarray]:
  try:
    from skimage import data as samples  # pylint: disable=g-import-not-at-top
    return [samples.astronaut(), samples.chelsea(), samples.coffee(), samples.rocket(),
            samples.immunohistochemistry(), samples.hubble_deep_field()]
  except ImportError:  # Smooth random fields of a similar JPEG size.
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (6, 24, 32, 3), dtype=np.uint8)
    from PIL import Image  # pylint: disable=g-import-not-at-top
    return [np.asarray(Image.fromarray(s).resize((640, 480), Image.BICUBIC)) for s in small]


def write_jpegs(root: str, num_images: int, num_classes: int = 4, seed: int = 0) -> int:
  """Writes ROOT/train/class_k/i.jpg (500x375, quality 95); returns the mean file size."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  photos = _photos()
  sizes = []
  for k in range(num_classes):
    os.makedirs(os.path.join(root, 'train', f'class_{k}'), exist_ok=True)
  for i in range(num_images):
    photo = photos[i % len(photos)]
    h, w = photo.shape[:2]
    ch = int(h * rng.uniform(0.6, 1.0))
    cw = min(w, int(ch * WIDTH / HEIGHT))
    top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    crop = Image.fromarray(photo[top:top + ch, left:left + cw])
    pixels = np.asarray(crop.resize((WIDTH, HEIGHT), Image.BILINEAR), np.float32)
    # Colour jitter and sensor-like noise: ~95 kB files, near ImageNet's ~110 kB.
    pixels = pixels * rng.uniform(0.8, 1.2, 3) + rng.normal(0, 6, pixels.shape)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    image.save(buf, format='JPEG', quality=95)
    path = os.path.join(root, 'train', f'class_{i % num_classes}', f'{i:05d}.jpg')
    with open(path + '.tmp', 'wb') as f:
      f.write(buf.getvalue())
    os.replace(path + '.tmp', path)
    sizes.append(len(buf.getvalue()))
  return int(np.mean(sizes))


def _options(threads: int):
  tf = _tf()
  options = tf.data.Options()
  options.threading.private_threadpool_size = threads
  options.threading.max_intra_op_parallelism = 1
  return options


def bare_train(paths: list[str], size: int, batch: int, threads: int):
  """The reference: read, decode_and_crop_jpeg, resize, flip, [-1, 1], batch."""
  tf = _tf()
  def process(path):
    data = tf.io.read_file(path)
    begin, crop, _ = tf.image.sample_distorted_bounding_box(
        tf.image.extract_jpeg_shape(data), tf.zeros([0, 0, 4]), min_object_covered=0.0,
        aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.05, 1.0), max_attempts=10,
        use_image_if_no_bounding_boxes=True)
    window = tf.stack([begin[0], begin[1], crop[0], crop[1]])
    image = tf.image.decode_and_crop_jpeg(data, window, channels=3)
    image = tf.image.resize(image, (size, size))
    image = tf.image.random_flip_left_right(image)
    return image / 127.5 - 1.0
  ds = tf.data.Dataset.from_tensor_slices(paths).repeat().shuffle(len(paths))
  ds = ds.map(process, num_parallel_calls=tf.data.AUTOTUNE).batch(batch, drop_remainder=True)
  return ds.prefetch(2).with_options(_options(threads)).as_numpy_iterator()


def bare_eval(paths: list[str], size: int, batch: int, threads: int):
  """The reference: read, decode, shorter side size*8/7, central crop, [-1, 1]."""
  tf = _tf()
  smaller = round(size * 8 / 7)
  def process(path):
    image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    hw = tf.cast(tf.round(shape * smaller / tf.reduce_min(shape)), tf.int32)
    image = tf.image.resize(image, hw)
    top, left = (hw[0] - size) // 2, (hw[1] - size) // 2
    return image[top:top + size, left:left + size] / 127.5 - 1.0
  ds = tf.data.Dataset.from_tensor_slices(paths)
  ds = ds.map(process, num_parallel_calls=tf.data.AUTOTUNE).batch(batch)
  return ds.prefetch(2).with_options(_options(threads))


def _passes(new_pass: Callable[[], Iterator]) -> Iterator:
  """Pass after pass over an evaluation set, as an evaluator runs it."""
  while True:
    yield from new_pass()


def measure(make: Callable[[], Iterator], batch: int, seconds: float,
            warmup: int = 3) -> tuple[float, float]:
  """(images per wall second, images per CPU second) after `warmup` batches.

  CPU seconds are those of this whole process (tf.data threads and Python),
  so the second figure is the throughput of one fully used core, and stays
  meaningful when other processes share the machine.
  """
  it = make()
  for _ in range(warmup):
    next(it)
  count, start, cpu = 0, time.perf_counter(), time.process_time()
  while time.perf_counter() - start < seconds:
    next(it)
    count += batch
  return (count / (time.perf_counter() - start),
          count / max(time.process_time() - cpu, 1e-9))


def run(args) -> dict[str, float]:
  root = args.root or tempfile.mkdtemp(prefix='vit_jax_pp_bench_')
  mean_size = write_jpegs(root, args.num_images)
  paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(os.path.join(root, 'train'))
                 for f in fs)
  def ours(pp, evaluation=False):
    config = dict(data=dict(name='folder', root=root, split='train'), pp=pp,
                  threads=args.threads)
    if evaluation:
      def make():
        pipe = pipeline.build_eval(config, None, global_batch_size=args.batch)
        return _passes(lambda: iter(pipe))
      return make
    pipe = pipeline.build_train(config, global_batch_size=args.batch, seed=0)
    return pipe.iterator
  s, k = args.size, 4
  cases = {
      'train, bare tf.data': lambda: bare_train(paths, s, args.batch, args.threads),
      'train, vit_jax.data': ours(f'vit_train({s}, {k})'),
      'eval, bare tf.data': lambda: _passes(
          bare_eval(paths, s, args.batch, args.threads).as_numpy_iterator),
      'eval, vit_jax.data': ours(f'imagenet_eval({s}, {k})', evaluation=True),
      'train + RandAugment(2, 15)': ours(f'augreg_train({s}, {k}, 2, 15, mixup=0)'),
      'train + RandAugment(2, 15) + Mixup(0.5)': ours(f'augreg_train({s}, {k}, 2, 15, 0.5)'),
  }
  results = {name: [] for name in cases}
  for _ in range(args.rounds):  # Alternate, so that load from others hits every case.
    for name, make in cases.items():
      results[name].append(measure(make, args.batch, args.seconds))
      wall, cpu = results[name][-1]
      print(f'{name}: {wall:.0f} images/s, {cpu:.0f} images per CPU-second', file=sys.stderr)
  medians = {name: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v))
             for name, v in results.items()}
  print(_table(medians, args, mean_size))
  return medians


def _table(medians: dict[str, tuple[float, float]], args, mean_size: int) -> str:
  base = {'train': medians['train, bare tf.data'][1], 'eval': medians['eval, bare tf.data'][1]}
  lines = [f'{args.num_images} generated {WIDTH}x{HEIGHT} JPEGs (mean {mean_size / 1e3:.0f} kB), '
           f'{args.size} px, batch {args.batch}, {args.threads} tf.data thread(s), '
           f'median of {args.rounds} x {args.seconds:g} s; '
           f'{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, '
           f'{time.strftime("%Y-%m-%d")}.', '',
           '| pipeline | images/s (wall) | images per CPU-second (per core) | vs bare, per core | '
           'CPU ms per image |', '|---|---|---|---|---|']
  for name, (wall, cpu) in medians.items():
    ref = base['eval' if name.startswith('eval') else 'train']
    lines.append(f'| {name} | {wall:,.0f} | {cpu:,.0f} | {100 * cpu / ref:.0f}% | '
                 f'{1e3 / cpu:.2f} |')
  return '\n'.join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m vit_jax.data.benchmark', description=__doc__.splitlines()[0],
      formatter_class=help_format.Formatter)
  parser.add_argument('--threads', type=int, default=1, help='tf.data threads (= cores)')
  parser.add_argument('--seconds', type=float, default=10.0, help='per measurement')
  parser.add_argument('--rounds', type=int, default=3, help='measurements (the median counts)')
  parser.add_argument('--num_images', type=int, default=512, help='synthetic JPEGs written')
  parser.add_argument('--size', type=int, default=224, help='output resolution')
  parser.add_argument('--batch', type=int, default=64, help='images per batch')
  parser.add_argument('--root', default=None, help='folder for the JPEGs (None: a temporary one)')
  args = parser.parse_args(argv)
  for name in ('threads', 'rounds', 'num_images', 'size', 'batch'):
    if getattr(args, name) < 1:
      print(f'error: --{name} must be >= 1, got {getattr(args, name)}', file=sys.stderr)
      return 2
  run(args)
  return 0


if __name__ == '__main__':
  sys.exit(main())
