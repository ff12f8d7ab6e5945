"""Command line of the compute budget: plan, paper, report, plot.

    python -m vit_jax.budget plan --model ViT-L/16 --dataset imagenet21k \
        --epochs 90 --batch-size 4096 --hardware v3-8 --mfu 0.4
    python -m vit_jax.budget paper
    python -m vit_jax.budget report WORKDIR [WORKDIR ...]  (skips paths that are not runs)
    python -m vit_jax.budget plot WORKDIR [WORKDIR ...] --out compute.png

Bad input ends with one line on stderr (no traceback) and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Optional, Sequence


class _Parser(argparse.ArgumentParser):
  """Reports a usage error on one line (the usage is one --help away); --help shows defaults."""

  def __init__(self, *args, **kwargs):
    kwargs.setdefault('formatter_class', argparse.ArgumentDefaultsHelpFormatter)
    super().__init__(*args, **kwargs)

  def error(self, message):
    self.exit(2, f'{self.prog}: error: {message} (see --help)\n')


def _parser() -> argparse.ArgumentParser:
  parser = _Parser(
      prog='python -m vit_jax.budget',
      description='Plan, track and cap the compute of vit_jax runs.')
  sub = parser.add_subparsers(dest='command', required=True)

  p = sub.add_parser('plan', help='FLOPs, core-days, wall-clock and cost of a run')
  p.add_argument('--model', required=True, help='e.g. ViT-B/16, R50+ViT-B/16')
  p.add_argument('--image-size', type=int, default=224, help='input resolution')
  size = p.add_mutually_exclusive_group()
  size.add_argument('--dataset', help='imagenet2012, imagenet21k, jft-300m, ...')
  size.add_argument('--num-examples', type=int, help='images per epoch')
  length = p.add_mutually_exclusive_group(required=True)
  length.add_argument('--epochs', type=float)
  length.add_argument('--steps', type=int)
  p.add_argument('--batch-size', type=int, required=True)
  p.add_argument('--hardware', required=True,
                 help='v2 v3 v4 v5e v5p v6e a100 h100 h200 ..., or a slice: v3-8')
  p.add_argument('--chips', type=int, help='number of chips (GPUs count as chips)')
  mfu = p.add_mutually_exclusive_group(required=True)
  mfu.add_argument('--mfu', type=float, help='model FLOPs utilisation, e.g. 0.4')
  mfu.add_argument('--mfu-from', metavar='PATH',
                   help='a run workdir, its metrics.jsonl, or a benchmark JSON')
  price = p.add_mutually_exclusive_group()
  price.add_argument('--price-per-core-hour', type=float)
  price.add_argument('--price-per-chip-hour', type=float)
  p.add_argument('--num-classes', type=int, default=1000, help='classifier head width')
  p.add_argument('--representation-size', type=int)
  p.add_argument('--json', action='store_true', help='print JSON')

  p = sub.add_parser('paper', help="reconstruct the paper's Tables 6 and 2")
  p.add_argument('--json', action='store_true', help='print JSON')

  p = sub.add_parser('report', help='compute spent by one or more runs (paths '
                     'that are not runs are skipped with a warning)')
  p.add_argument('workdirs', nargs='+', metavar='WORKDIR')
  p.add_argument('--json', action='store_true', help='print JSON')

  p = sub.add_parser('plot', help='eval accuracy and loss vs core-hours (PNG)')
  p.add_argument('workdirs', nargs='+', metavar='WORKDIR')
  p.add_argument('--out', required=True, help='PNG file to write')
  p.add_argument('--metric', help='evaluation metric key (default: val/top1 '
                 'or the first one logged)')
  p.add_argument('--logx', action='store_true', help='log-scale core-hours')
  return parser


def _plan(args) -> str:
  from vit_jax.budget import plan as plan_lib  # pylint: disable=g-import-not-at-top
  mfu = args.mfu
  if mfu is None:
    mfu = plan_lib.mfu_from_file(args.mfu_from, model=args.model)
  plan = plan_lib.make_plan(
      args.model, batch_size=args.batch_size, hardware=args.hardware, mfu=mfu,
      image_size=args.image_size, dataset=args.dataset,
      num_examples=args.num_examples, epochs=args.epochs, steps=args.steps,
      chips=args.chips, price_per_core_hour=args.price_per_core_hour,
      price_per_chip_hour=args.price_per_chip_hour,
      num_classes=args.num_classes,
      representation_size=args.representation_size)
  return json.dumps(plan.to_dict(), indent=1) if args.json else \
      plan_lib.format_plan(plan)


def _paper(args) -> str:
  from vit_jax.budget import paper  # pylint: disable=g-import-not-at-top
  if not args.json:
    return paper.format_paper()
  return json.dumps({
      'table6': [dict(dataclasses.asdict(r), relative_error=r.relative_error,
                      consistent=r.consistent) for r in paper.table6()],
      'table2': [dict(dataclasses.asdict(r), implied_mfu=r.implied_mfu)
                 for r in paper.table2()]}, indent=1)


def _report(args) -> str:
  from vit_jax.budget import report  # pylint: disable=g-import-not-at-top
  reports, skipped = report.summarize_runs(args.workdirs)
  for why in skipped:
    print(f'python -m vit_jax.budget report: warning: skipped: {why}',
          file=sys.stderr)
  if args.json:
    return json.dumps([dict(dataclasses.asdict(r), name=r.name)
                       for r in reports], indent=1)
  return report.format_reports(reports)


def _plot(args) -> str:
  from vit_jax.budget import plot  # pylint: disable=g-import-not-at-top
  return 'wrote ' + plot.plot_runs(args.workdirs, args.out, args.metric,
                                   args.logx)


_COMMANDS = {'plan': _plan, 'paper': _paper, 'report': _report, 'plot': _plot}


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = _parser().parse_args(argv)
  try:
    print(_COMMANDS[args.command](args))
  except (ValueError, FileNotFoundError) as e:
    print(f'python -m vit_jax.budget {args.command}: error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
