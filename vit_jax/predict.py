"""Classifies image files with a ViT checkpoint: the top-k classes and their probabilities.

  python -m vit_jax.predict --checkpoint runs/quickstart IMAGE...
  python -m vit_jax.predict --model ViT-B/16 --checkpoint ViT-B_16_imagenet2012.npz \
      [--labels imagenet|FILE] [--image_size 384] [--top_k 5] IMAGE...

Images are preprocessed like the released fine-tuned models: resized to
image_size x image_size (bilinear) and scaled to [-1, 1]. A run's workdir
describes its model (config.json: name, overrides, resolution, the class
names of a folder dataset); for a released .npz the model comes from --model
or the file name, and the class count, classifier, representation layer and
the image size from the arrays (vit_jax.pretrained). Bad input gives a
one-line error and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib.resources
import os
import sys
from typing import Optional, Sequence

import jax
import numpy as np
from PIL import Image, UnidentifiedImageError

from vit_jax import help_format, models, pretrained

IMAGENET_LABELS = 'imagenet1k_labels.txt'


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog='python -m vit_jax.predict',
      description='Prints the top-k classes of each image under a ViT checkpoint.',
      formatter_class=help_format.Formatter)
  parser.add_argument('--model', default=None,
                      help='registered model name, e.g. ViT-B/16 or ViT-B_16; '
                           'None: the run\'s config.json or the file name')
  parser.add_argument('--checkpoint', required=True,
                      help='a run\'s workdir, or an .npz in the released '
                           'layout (local path or gs://)')
  parser.add_argument('--labels', default=None,
                      help='"imagenet" (the bundled 1,000 names) or a text file '
                           'with one class name per line; None: imagenet '
                           'for 1,000-class checkpoints, else class indices')
  parser.add_argument('--image_size', type=int, default=None,
                      help="input resolution; None: the checkpoint's own")
  parser.add_argument('--top_k', type=int, default=5, help='classes printed per image')
  parser.add_argument('--batch_size', type=int, default=32, help='images per forward pass')
  parser.add_argument('images', nargs='+', metavar='IMAGE')
  args = parser.parse_args(argv)
  if args.top_k < 1 or args.batch_size < 1:
    parser.error('--top_k and --batch_size must be at least 1')
  if args.image_size is not None and args.image_size < 1:
    parser.error('--image_size must be positive')
  return args


def load_image(path: str, image_size: int) -> np.ndarray:
  """Reads an image file as float32 [image_size, image_size, 3] in [-1, 1]."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'image file not found: {path}')
  try:
    with Image.open(path) as image:
      image = image.convert('RGB').resize((image_size, image_size),
                                          Image.Resampling.BILINEAR)
  except (UnidentifiedImageError, OSError) as e:
    raise ValueError(f'{path} is not an image PIL can read ({type(e).__name__}); '
                     f'pass a JPEG, PNG or other image file.') from None
  return np.asarray(image, np.float32) / 127.5 - 1.


def load_labels(labels: Optional[str], num_classes: int) -> list[str]:
  """Class names for `num_classes` outputs from 'imagenet', a file, or indices."""
  if labels is None:
    if num_classes != 1000:
      return [f'class {i}' for i in range(num_classes)]
    labels = 'imagenet'
  if labels == 'imagenet':
    text = (importlib.resources.files('vit_jax') / 'assets' /
            IMAGENET_LABELS).read_text(encoding='utf-8')
    source = 'the bundled ImageNet-1k labels'
  else:
    if not os.path.isfile(labels):
      raise FileNotFoundError(f'labels file not found: {labels}')
    with open(labels, encoding='utf-8') as f:
      text = f.read()
    source = labels
  names = [line.strip() for line in text.splitlines() if line.strip()]
  if len(names) != num_classes:
    raise ValueError(f'{source} has {len(names)} class names but the checkpoint '
                     f'has {num_classes} classes; pass --labels FILE with one '
                     f'name per class.')
  return names


def build(model_name: Optional[str], checkpoint_path: str,
          image_size: Optional[int]):
  """(model, params, image_size, class names or None) of a checkpoint."""
  model, params, info = pretrained.load(checkpoint_path, model_name,
                                        image_size, scan_layers=True)
  models.check_image_size(model, info.image_size, name='--image_size',
                          label=info.label)
  if info.image_size != info.checkpoint_image_size:
    print(f'classifying at {info.image_size} px (given; the checkpoint is for '
          f'{info.checkpoint_image_size} px: its position embeddings are '
          f'resampled)', file=sys.stderr)
  return model, params, info.image_size, info.class_names


def classify(model, params, images: np.ndarray, top_k: int, batch_size: int):
  """Returns (indices, probabilities) of the top_k classes, each [N, top_k]."""
  apply = jax.jit(lambda p, x: jax.nn.softmax(
      model.apply({'params': p}, x, train=False), axis=-1))
  probs = []
  for start in range(0, len(images), batch_size):
    batch = images[start:start + batch_size]
    padded = np.zeros((min(batch_size, len(images)),) + batch.shape[1:],
                      np.float32)  # one shape, one compilation
    padded[:len(batch)] = batch
    probs.append(np.asarray(apply(params, padded))[:len(batch)])
  probs = np.concatenate(probs)
  top = np.argsort(-probs, axis=-1, kind='stable')[:, :top_k]
  return top, np.take_along_axis(probs, top, axis=-1)


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parse_args(argv)
  pretrained.show_what_is_read()
  try:
    for path in args.images:  # fail on a bad image before loading a model
      load_image(path, 8)
    model, params, image_size, names = build(args.model, args.checkpoint,
                                             args.image_size)
    labels = (names if names and args.labels is None
              else load_labels(args.labels, model.num_classes))
    images = np.stack([load_image(p, image_size) for p in args.images])
  except (FileNotFoundError, ValueError, ImportError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  top, probs = classify(model, params, images, args.top_k, args.batch_size)
  for path, indices, p in zip(args.images, top, probs):
    print(path)
    for index, prob in zip(indices, p):
      print(f'  {prob:.4f}  {labels[index]}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
