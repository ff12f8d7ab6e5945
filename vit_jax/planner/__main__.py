"""Command line of the planner: plan, fit, paper, report, plot.

    python -m vit_jax.planner plan --model ViT-L/16 --dataset imagenet21k \
        --epochs 90 --batch-size 4096 --hardware v3-8 --mfu 0.4
    python -m vit_jax.planner fit --model ViT-H/14 --hardware v3-32 \
        --batch-size 4096 [--mesh fsdp=8,data=4] [--remat-policy full]
    python -m vit_jax.planner paper
    python -m vit_jax.planner report WORKDIR [WORKDIR ...]  (skips paths that are not runs)
    python -m vit_jax.planner plot WORKDIR [WORKDIR ...] --out compute.png

Bad input ends with one line on stderr (no traceback) and exit status 2; a
reader that stops early (`... | head`) ends it quietly (exit status 0).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import sys
from typing import Optional, Sequence

from vit_jax import help_format


class _Parser(argparse.ArgumentParser):
  """Reports a usage error on one line (the usage is one --help away); --help shows defaults."""

  def __init__(self, *args, **kwargs):
    kwargs.setdefault('formatter_class', help_format.Formatter)
    super().__init__(*args, **kwargs)

  def error(self, message):
    self.exit(2, f'{self.prog}: error: {message} (see --help)\n')


def _parser() -> argparse.ArgumentParser:
  parser = _Parser(
      prog='python -m vit_jax.planner',
      description='Plan the compute of vit_jax runs (core-days, whether a step '
      'fits a slice, the paper\'s tables) and report what runs spent.')
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
  p.add_argument('--fit', action='store_true',
                 help='compile the sharded step for the slice (as `fit`) and '
                 'plan with the predicted MFU of the best layout; --mfu is '
                 'then the compute-only MFU')
  _fit_options(p, plan=True)
  p.add_argument('--json', action='store_true', help='print JSON')

  p = sub.add_parser(
      'fit', help='per-device memory and collectives of the sharded step on '
      'a slice, compiled by XLA:TPU for a TPU slice (with libtpu) beside the '
      'analytic count, or on simulated CPU devices; the layouts that fit, '
      'fastest first')
  p.add_argument('--model', help='e.g. ViT-H/14 (default: the config\'s)')
  p.add_argument('--batch-size', type=int, help='global batch (default: '
                 'the config\'s, 4096 in the pretraining recipe)')
  p.add_argument('--image-size', type=int)
  p.add_argument('--hardware', required=True,
                 help='a TPU slice (v3-32) or a GPU key with --chips')
  p.add_argument('--chips', type=int, help='number of chips (GPUs)')
  p.add_argument('--mfu', type=float, default=None,
                 help='compute-only MFU for the predicted step time '
                 '(default 0.5)')
  _fit_options(p, plan=False)
  p.add_argument('--compiler', choices=('auto', 'tpu', 'cpu'), default='auto',
                 help='whose figures decide: tpu compiles the step with '
                 'XLA:TPU (libtpu, no TPU needed) for the slice: its memory '
                 'analysis, collectives and cost model, beside the analytic '
                 'count; cpu counts memory analytically and compiles on '
                 'simulated CPU devices for the collectives; auto: tpu for a '
                 'TPU slice when libtpu is installed')
  p.add_argument('--scan-layers', '--scan_layers', dest='scan_layers',
                 action=argparse.BooleanOptionalAction, default=None,
                 help='compile the full depth once with scanned layers '
                 '(compile time independent of depth); --no-scan-layers '
                 'compiles unrolled layers at the two --layers depths and '
                 'extrapolates. Default: the config\'s model.scan_layers, '
                 'and scanned on XLA:TPU for layouts without fsdp or model '
                 'axes (a scanned FSDP step is another program there)')
  p.add_argument('--table', action='store_true',
                 help='print markdown table rows')
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


def _fit_options(p: argparse.ArgumentParser, plan: bool) -> None:
  p.add_argument('--config', metavar='FILE[:ARGS]',
                 help='training config whose step is compiled (default: '
                 'configs/pretrain.py:model=MODEL,batch=BATCH, the paper\'s '
                 'pretraining recipe)')
  p.add_argument('--mesh', action='append',
                 help='a layout to try, e.g. data=4,fsdp=8,model=1; repeat '
                 'for several (default: the sensible ones for the slice)')
  p.add_argument('--remat-policy', '--remat_policy', dest='remat_policy',
                 help='one remat policy: none, dots, dots_no_batch or full '
                 '(default: none, then full if none does not fit)')
  p.add_argument('--accum-steps', '--accum_steps', dest='accum_steps',
                 type=int, help='gradient accumulation micro-batches '
                 '(default: the config\'s, 1)')
  p.add_argument('--overlap', type=float, default=0.0,
                 help='fraction of communication hidden behind compute '
                 '(default 0: none)')
  p.add_argument('--margin', type=float, default=0.1,
                 help='fraction of HBM kept free (default 0.1)')
  p.add_argument('--layers', default='1,2',
                 help='the two encoder depths compiled and extrapolated from')


def _load_config(spec: str):
  """get_config(ARGS) of a config file 'path.py[:ARGS]'."""
  path, _, arg = spec.partition(':')
  if not os.path.exists(path):
    root = os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    if os.path.exists(os.path.join(root, path)):
      path = os.path.join(root, path)
    else:
      raise FileNotFoundError(f'no config file {path}; give --config '
                              f'PATH/TO/configs/pretrain.py.')
  module_spec = importlib.util.spec_from_file_location('fit_config', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def _mesh_arg(text: str) -> dict:
  sizes = {}
  for item in filter(None, text.split(',')):
    key, _, value = item.partition('=')
    try:
      sizes[key.strip()] = int(value)
    except ValueError:
      raise ValueError(f'--mesh entry {item!r} is not AXIS=INT (e.g. '
                       f'--mesh data=4,fsdp=8).') from None
  return sizes


def _fits(args, mfu: float):
  """Runs the fit search of `fit` and `plan --fit`; returns ranked Fits."""
  from vit_jax.planner import fit as fit_lib  # pylint: disable=g-import-not-at-top
  _, _, devices = fit_lib.slice_of(args.hardware, args.chips)
  # Before anything asks jax for its backend (models.build does).
  fit_lib.use_simulated_devices(devices)
  if args.config:
    config = _load_config(args.config)
  else:
    if not args.model or not args.batch_size:
      raise ValueError('give --model and --batch-size (or --config).')
    model = args.model.removeprefix('ViT-')
    # The JFT recipe's optimizer (Adam); epochs and lr do not change what
    # a step holds or sends, and make every registered model a valid row.
    config = _load_config(f'configs/pretrain.py:model={model},dataset=jft,'
                          f'epochs=7,lr=0.001,batch={args.batch_size}')
  if args.model and args.config:
    config.model.name = args.model
  if args.batch_size:
    config.batch_size = args.batch_size
  if args.image_size:
    config.image_size = args.image_size
  from vit_jax import models  # pylint: disable=g-import-not-at-top
  models.check_image_size(models.build(config.model, None)[1],
                          config.image_size, name='--image-size'
                          if args.image_size else 'image_size')
  if args.accum_steps is not None:
    if args.accum_steps < 1:
      raise ValueError(f'--accum-steps must be >= 1, got {args.accum_steps}.')
    config.accum_steps = args.accum_steps
  spec = fit_lib.spec_from_config(config)
  try:
    layers = tuple(int(x) for x in args.layers.split(','))
  except ValueError:
    raise ValueError(f'--layers {args.layers!r} is not two depths such as '
                     f'1,2.') from None
  from vit_jax import parallel  # pylint: disable=g-import-not-at-top
  parallel.configure_cpu()
  meshes = [_mesh_arg(m) for m in args.mesh] if args.mesh else None
  remats = ([args.remat_policy] if args.remat_policy
            else list(fit_lib.REMAT_ORDER))
  # One layout asked for: its collectives are compiled even if it misses.
  one = meshes is not None and len(meshes) == 1 and len(remats) == 1
  return fit_lib.search(
      spec, args.hardware, chips=args.chips, mfu=mfu, overlap=args.overlap,
      margin=args.margin, layers=layers, remats=remats, meshes=meshes,
      compile='always' if one else 'if_fits',
      compiler=getattr(args, 'compiler', 'cpu'),
      scan_layers=getattr(args, 'scan_layers', None),
      log=lambda m: print(m, file=sys.stderr, flush=True))


def _fit(args) -> str:
  from vit_jax.planner import fit as fit_lib  # pylint: disable=g-import-not-at-top
  mfu = fit_lib.DEFAULT_MFU if args.mfu is None else args.mfu
  fits = _fits(args, mfu)
  if args.json:
    return json.dumps([f.to_dict() for f in fits], indent=1)
  if args.table:
    return fit_lib.format_table(fits)
  best = fits[0]
  lines = [fit_lib.format_fit(f) for f in fits]
  head = ('best: ' + fit_lib.summary_line(best) if best.fits is not False
          else 'no layout tried fits; the closest is listed first')
  return '\n\n'.join([head] + lines)


def _plan(args) -> str:
  from vit_jax.planner import plan as plan_lib  # pylint: disable=g-import-not-at-top
  from vit_jax import models  # pylint: disable=g-import-not-at-top
  # Before --fit compiles anything: a size the tokens do not tile.
  models.check_image_size(models.get_spec(args.model), args.image_size,
                          name='--image-size')
  mfu = args.mfu
  if mfu is None:
    mfu = plan_lib.mfu_from_file(args.mfu_from, model=args.model)
  fit_line = None
  if args.fit:
    from vit_jax.planner import fit as fit_lib  # pylint: disable=g-import-not-at-top
    best = _fits(args, mfu)[0]
    if best.fits is False:
      raise ValueError(f'no layout fits: {fit_lib.summary_line(best)}; '
                       f'try a larger slice, a smaller batch or --remat-'
                       f'policy full.')
    fit_line = fit_lib.summary_line(best)
    if best.predicted_mfu is not None:
      mfu = best.predicted_mfu
  plan = plan_lib.make_plan(
      args.model, batch_size=args.batch_size, hardware=args.hardware, mfu=mfu,
      image_size=args.image_size, dataset=args.dataset,
      num_examples=args.num_examples, epochs=args.epochs, steps=args.steps,
      chips=args.chips, price_per_core_hour=args.price_per_core_hour,
      price_per_chip_hour=args.price_per_chip_hour,
      num_classes=args.num_classes,
      representation_size=args.representation_size)
  if args.json:
    return json.dumps(dict(plan.to_dict(), fit=fit_line), indent=1)
  text = plan_lib.format_plan(plan)
  return text if fit_line is None else text + f'\nfit              {fit_line}'



def _paper(args) -> str:
  from vit_jax.planner import paper  # pylint: disable=g-import-not-at-top
  if not args.json:
    return paper.format_paper()
  return json.dumps({
      'table6': [dict(dataclasses.asdict(r), relative_error=r.relative_error,
                      consistent=r.consistent) for r in paper.table6()],
      'table2': [dict(dataclasses.asdict(r), implied_mfu=r.implied_mfu)
                 for r in paper.table2()]}, indent=1)


def _report(args) -> str:
  from vit_jax.planner import report  # pylint: disable=g-import-not-at-top
  reports, skipped = report.summarize_runs(args.workdirs)
  for why in skipped:
    print(f'python -m vit_jax.planner report: warning: skipped: {why}',
          file=sys.stderr)
  if args.json:
    return json.dumps([dict(dataclasses.asdict(r), name=r.name)
                       for r in reports], indent=1)
  return report.format_reports(reports)


def _plot(args) -> str:
  from vit_jax.planner import plot  # pylint: disable=g-import-not-at-top
  return 'wrote ' + plot.plot_runs(args.workdirs, args.out, args.metric,
                                   args.logx)


_COMMANDS = {'plan': _plan, 'fit': _fit, 'paper': _paper, 'report': _report,
             'plot': _plot}


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = _parser().parse_args(argv)
  try:
    print(_COMMANDS[args.command](args), flush=True)
  except (ValueError, FileNotFoundError) as e:
    print(f'python -m vit_jax.planner {args.command}: error: {e}', file=sys.stderr)
    return 2
  except BrokenPipeError:
    # The reader stopped early (`... | head`): what it read was complete.
    # Point stdout at /dev/null so that the exit's flush raises nothing.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
  return 0


if __name__ == '__main__':
  sys.exit(main())
