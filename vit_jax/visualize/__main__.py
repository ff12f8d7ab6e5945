"""Command line of vit_jax.visualize: four sub-commands, one-line errors with exit status 2.

  python -m vit_jax.visualize attention IMAGE... --checkpoint PATH --out DIR
  python -m vit_jax.visualize posemb             --checkpoint PATH --out DIR
  python -m vit_jax.visualize filters            --checkpoint PATH --out DIR
  python -m vit_jax.visualize distance IMAGE...  --checkpoint PATH --out DIR

PATH is a released-layout .npz (the model from --model or the file name, else
read from the arrays) or the workdir of a vit_jax run.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from vit_jax import pretrained
from vit_jax.visualize import commands, loading


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog='python -m vit_jax.visualize',
      description='Pictures of what a ViT checkpoint has learned (PNG + JSON).')
  sub = parser.add_subparsers(dest='command', required=True)
  common = argparse.ArgumentParser(add_help=False)
  common.add_argument('--checkpoint', required=True,
                      help='released-layout .npz or the workdir of a run')
  common.add_argument('--out', required=True,
                      help='directory for <command>.png and <command>.json')
  common.add_argument('--model', default=None,
                      help='registered model name (default: from the run, the '
                           'file name, or the arrays)')
  common.add_argument('--image_size', type=int, default=None,
                      help='input resolution (a multiple of the token size); '
                           'default: the checkpoint\'s own')
  images = argparse.ArgumentParser(add_help=False)
  images.add_argument('images', nargs='+', metavar='IMAGE')
  images.add_argument('--batch_size', type=int, default=16)
  sub.add_parser('attention', parents=[common, images],
                 help='attention rollout and last-layer heads (Figure 6)')
  sub.add_parser('posemb', parents=[common],
                 help='position-embedding similarity (Figure 7 centre)')
  filters = sub.add_parser('filters', parents=[common],
                           help='principal components of the patch filters '
                                '(Figure 7 left)')
  filters.add_argument('--layer', choices=('embedding', 'conv_root'),
                       default='embedding',
                       help='conv_root: a hybrid\'s ResNet root filters')
  filters.add_argument('--num_components', type=int,
                       default=commands.NUM_COMPONENTS)
  sub.add_parser('distance', parents=[common, images],
                 help='mean attention distance per head and layer '
                      '(Figure 7 right)')
  args = parser.parse_args(argv)
  if args.image_size is not None and args.image_size < 1:
    parser.error('--image_size must be positive')
  if getattr(args, 'batch_size', 1) < 1:
    parser.error('--batch_size must be at least 1')
  if getattr(args, 'num_components', 1) < 1:
    parser.error('--num_components must be at least 1')
  return args


def check_out(out: str) -> None:
  """--out is, or can become, a directory this process writes: one line if
  not (before anything is computed; nothing is created here)."""
  if '://' in out:
    return
  path = os.path.abspath(out)
  while not os.path.exists(path):  # The deepest part that exists.
    path = os.path.dirname(path)
  if not os.path.isdir(path):
    raise ValueError(f'--out {out}: {path} is a file, not a directory; '
                     f'choose another --out.')
  if not os.access(path, os.W_OK | os.X_OK):
    raise ValueError(f'--out {out}: {path} cannot be written (permission '
                     f'denied); choose another --out.')


def run(args: argparse.Namespace) -> dict:
  check_out(args.out)
  images = getattr(args, 'images', [])
  if images:  # a bad image fails before a model is loaded
    commands.read_images(images, 8)
  loaded = loading.load(args.checkpoint, args.model, args.image_size)
  if args.command == 'attention':
    return commands.run_attention(loaded, images, args.out, args.batch_size)
  if args.command == 'posemb':
    return commands.run_posemb(loaded, args.out)
  if args.command == 'filters':
    return commands.run_filters(loaded, args.out, args.layer,
                                args.num_components)
  return commands.run_distance(loaded, images, args.out, args.batch_size)


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parse_args(argv)
  pretrained.show_what_is_read()
  try:
    numbers = run(args)
  except (FileNotFoundError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  except OSError as e:  # Writing the pictures (a full disk, ...).
    print(f'error: cannot write {e.filename or args.out}: {e.strerror}; '
          f'choose another --out.', file=sys.stderr)
    return 2
  if args.command == 'distance':
    print(commands.distance_table(numbers))
  print(f'{numbers["what"]}')
  for ext in ('png', 'json'):
    print(f'wrote {os.path.join(args.out, f"{args.command}.{ext}")}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
