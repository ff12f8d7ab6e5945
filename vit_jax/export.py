"""Writes a checkpoint in another format: a transformers ViT directory or a released-layout .npz.

  python -m vit_jax.export --format=transformers --checkpoint PATH --out DIR \
      [--labels imagenet|FILE] [--gelu tanh|exact]
  python -m vit_jax.export --format=npz --checkpoint PATH --out FILE.npz

PATH is a released .npz (vit_jax or big_vision), a transformers ViT directory,
the workdir of one of our runs (its latest checkpoint, else its params.npz)
or a run's params.npz. `--format=transformers` writes config.json,
model.safetensors (float32, the umask's permissions like every file it
writes) and preprocessor_config.json, which
`transformers.ViTForImageClassification.from_pretrained(DIR)` loads (a model
with a pre-logits layer becomes a `ViTModel` whose pooler is that layer; see
`vit_jax.hf_interop`). Label names: `--labels`, else a transformers source's
own, else those a run kept (its data's class names: a prepared TFDS
dataset's or an image folder's, `vit_jax.class_names`), else ImageNet's for
a 1,000-class head, else LABEL_i. A run's parameters are the set it
evaluated (its Polyak average when it kept one). The GELU flavour: `--gelu`,
else the run's `model.gelu_approximate` or the transformers source's
`hidden_act`, else tanh (what the released weights were trained with).
Bad input: a one-line error and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Optional, Sequence

import jax

from vit_jax import checkpoint, help_format, hf_interop, models, predict, pretrained

FORMATS = ('transformers', 'npz')


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog='python -m vit_jax.export', description=__doc__.split('\n')[0],
      formatter_class=help_format.Formatter)
  parser.add_argument('--format', choices=FORMATS, default='transformers',
                      help='what to write')
  parser.add_argument('--checkpoint', required=True,
                      help='.npz, transformers ViT directory, or run workdir')
  parser.add_argument('--out', required=True,
                      help='output directory (transformers) or .npz file')
  parser.add_argument('--labels', default=None,
                      help='"imagenet" or a text file with one class name per '
                           'line (transformers format only)')
  parser.add_argument('--gelu', choices=('tanh', 'exact'), default=None,
                      help='the GELU the model computes (None: from the '
                           'source, else tanh)')
  return parser.parse_args(argv)


def read_source(path: str) -> tuple[dict[str, Any], dict]:
  """(flat released-layout params, what the source says about the model).

  The second item may hold `gelu_approximate` and `labels`.
  """
  tree, run_config = pretrained.read(path)
  scanned = tree.get('Transformer', {}).get('encoderblock')
  if scanned is not None:  # a run's orbax checkpoint with scan_layers=True
    tree = models.scan_to_layers(tree, jax.tree.leaves(scanned)[0].shape[0])
  info = {}
  if run_config:
    model = run_config.get('model') or {}
    if model.get('gelu_approximate') is not None:
      info['gelu_approximate'] = bool(model['gelu_approximate'])
    info['labels'] = pretrained.describe(path, tree, run_config).class_names
  return checkpoint.flatten_params(tree), info


def _labels(flag: Optional[str], info: dict, flat: dict) -> Optional[list[str]]:
  head = flat.get('head/kernel')
  if head is None or 'pre_logits/kernel' in flat:
    return None  # exported as ViTModel: no classifier, no labels
  classes = int(head.shape[-1])
  if flag is not None:
    return predict.load_labels(flag, classes)
  found = info.get('labels')
  if found and len(found) == classes:
    return list(found)
  if classes == 1000:
    return predict.load_labels('imagenet', classes)
  return None


def export(args: argparse.Namespace) -> str:
  flat, info = read_source(args.checkpoint)
  if args.format == 'npz':
    checkpoint.save_npz(args.out, checkpoint.unflatten_params(flat))
    return f'wrote {args.out} (released layout, float32)'
  if os.path.isfile(args.out):
    raise ValueError(f'--out {args.out} is a file; --format=transformers '
                     f'writes a directory.')
  gelu = (args.gelu == 'tanh' if args.gelu else
          info.get('gelu_approximate', True))
  config = hf_interop.save_transformers(
      args.out, flat, gelu_approximate=gelu,
      labels=_labels(args.labels, info, flat))
  return (f'wrote {args.out}: {config["architectures"][0]}, '
          f'{config["hidden_act"]}, image size {config["image_size"]}')


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parse_args(argv)
  pretrained.show_what_is_read()
  try:
    print(export(args))
  except (FileNotFoundError, ValueError, ImportError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
