"""Classifies image files with a ViT checkpoint: the top-k classes and their probabilities.

  python -m vit_jax.predict --model ViT-B/16 --checkpoint ViT-B_16_imagenet2012.npz \
      [--labels imagenet|FILE] [--image_size 384] [--top_k 5] IMAGE...

Images are preprocessed like the released fine-tuned models: resized to
image_size x image_size (bilinear) and scaled to [-1, 1]. The class count,
classifier, representation layer and (by default) the image size are read
from the checkpoint, and the head is used exactly as saved. A given
--image_size that differs from the checkpoint's resamples the position
embeddings, which the log says. Bad input gives a one-line error and exit status 2.
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

from vit_jax import checkpoint
from vit_jax.models import get_model, get_spec, param_shapes, pixels_per_token

IMAGENET_LABELS = 'imagenet1k_labels.txt'


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog='python -m vit_jax.predict',
      description='Prints the top-k classes of each image under a ViT checkpoint.')
  parser.add_argument('--model', required=True,
                      help='registered model name, e.g. ViT-B/16 or ViT-B_16')
  parser.add_argument('--checkpoint', required=True,
                      help='.npz in the released layout (local path or gs://)')
  parser.add_argument('--labels', default=None,
                      help='"imagenet" (the bundled 1,000 names) or a text file '
                           'with one class name per line; default: imagenet '
                           'for 1,000-class checkpoints, else class indices')
  parser.add_argument('--image_size', type=int, default=None,
                      help='input resolution; default: the checkpoint\'s own')
  parser.add_argument('--top_k', type=int, default=5)
  parser.add_argument('--batch_size', type=int, default=32)
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


def native_image_size(restored: dict, model) -> int:
  """The resolution the checkpoint's position-embedding grid was made for.

  Its grid times the model's pixels per token (the patch size, times the
  ResNet stem's stride for hybrids); 224 without a learned table.
  """
  grid = checkpoint.posemb_grid(restored)
  if grid is None:
    return 224  # fixed sin-cos embeddings fit any size
  (gh, gw), (ph, pw) = grid, pixels_per_token(model)
  if gh * ph != gw * pw:
    raise ValueError(f'the checkpoint is for {gh * ph}x{gw * pw} px, which is '
                     f'not square; pass --image_size.')
  return gh * ph


def build(model_name: str, checkpoint_path: str, image_size: Optional[int]):
  """Returns (model, params, image_size, checkpoint's own image size).

  The head is kept exactly as saved. `image_size` None: the checkpoint's own
  resolution; another one resamples the position embedding, which is logged.
  """
  get_spec(model_name)  # an unknown name fails before the file is read
  restored = checkpoint.load_npz(checkpoint_path)
  if 'head' not in restored:
    raise ValueError(f'{checkpoint_path} has no classification head; it gives '
                     f'features, not classes.')
  pre_logits = restored.get('pre_logits')
  model = get_model(
      model_name, int(restored['head']['bias'].shape[-1]),
      classifier='token' if 'cls' in restored else 'gap',
      representation_size=(int(pre_logits['kernel'].shape[-1])
                           if pre_logits else None),
      posemb='learn' if 'posembed_input' in restored.get('Transformer', {})
      else 'sincos2d',
      scan_layers=True)  # one compiled block: compiles fastest
  native = native_image_size(restored, model)
  image_size = image_size or native
  params = checkpoint.load_pretrained(
      restored, param_shapes(model, image_size), name=checkpoint_path,
      keep_head=True)
  return model, params, image_size, native


def resolution_line(num_images: int, image_size: int, native: int) -> str:
  """What main prints (to stderr) before classifying."""
  note = ("the checkpoint's own resolution" if image_size == native else
          f'given; the checkpoint is for {native} px: its position '
          f'embeddings are resampled')
  return f'classifying {num_images} image(s) at {image_size} px ({note})'


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
  try:
    for path in args.images:  # fail on a bad image before loading a model
      load_image(path, 8)
    model, params, image_size, native = build(args.model, args.checkpoint,
                                              args.image_size)
    labels = load_labels(args.labels, model.num_classes)
    images = np.stack([load_image(p, image_size) for p in args.images])
  except (FileNotFoundError, ValueError, ImportError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(resolution_line(len(images), image_size, native), file=sys.stderr)
  top, probs = classify(model, params, images, args.top_k, args.batch_size)
  for path, indices, p in zip(args.images, top, probs):
    print(path)
    for index, prob in zip(indices, p):
      print(f'  {prob:.4f}  {labels[index]}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
