"""Our training step beside timm + torch.compile on the same device: one table of img/s, MFU and our/timm ratio.

PYTHONPATH=. python benchmarks/side_by_side.py --json=side_by_side.json

Runs, one after the other and each in its own process (so neither holds the
device while the other runs): `python -m vit_jax.benchmark` (our step, JSON
line out) and `benchmarks/timm_step.py` (timm's same model with
torch.compile and bf16 autocast; only when torch and timm are importable),
for each case. Default cases: ViT-B/16 at batch 256 and ViT-L/16 at batch
128, 224 px, training; `--all` adds ViT-H/14 training at batch 128 (full
remat, bf16 Adam moments; timm with activation checkpointing) and ViT-B/16
classification at 384 px (forward pass only). MFU counts the same FLOPs for
both sides (`vit_jax.budget`: 3 x forward for training, 1 x for eval) over
the device's bf16 peak. The whole invocation stops at `--time_limit`
seconds: a case that would start later is listed as skipped, and a running
one is killed. Installs nothing; needs no TensorFlow, clu or ml_collections.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from typing import Optional

from vit_jax import budget, models

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


@dataclasses.dataclass(frozen=True)
class Case:
  """One comparison: a model at a batch, image size and mode."""
  model: str
  batch: int
  image_size: int = 224
  mode: str = 'train'
  remat_policy: str = 'none'
  mu_dtype: Optional[str] = None

  @property
  def label(self) -> str:
    extra = f' remat={self.remat_policy}' if self.remat_policy != 'none' else ''
    extra += f' mu={self.mu_dtype}' if self.mu_dtype else ''
    return (f'{self.model} {self.mode} b{self.batch} {self.image_size}px'
            f'{extra}')

  def flops_per_image(self, num_classes: int,
                      num_layers: Optional[int] = None) -> float:
    spec = models.get_spec(self.model)
    if num_layers:
      spec = dataclasses.replace(spec, num_layers=num_layers)
    flops = budget.train_flops_per_image(spec, self.image_size, num_classes)
    if self.mode == 'eval':
      flops /= budget.flops.TRAIN_FORWARD_MULTIPLE
    return flops


DEFAULT_CASES = (Case('ViT-B/16', 256), Case('ViT-L/16', 128))
EXTRA_CASES = (Case('ViT-H/14', 128, remat_policy='full', mu_dtype='bfloat16'),
               Case('ViT-B/16', 256, image_size=384, mode='eval'))
MODES = ('train', 'eval')


def parse_case(text: str) -> Case:
  """'MODEL:BATCH[:IMAGE_SIZE[:MODE[:REMAT[:MU_DTYPE]]]]' -> Case."""
  parts = text.split(':')
  try:
    if not 2 <= len(parts) <= 6:
      raise ValueError
    model, batch = parts[0], int(parts[1])
    image_size = int(parts[2]) if len(parts) > 2 and parts[2] else 224
  except ValueError:
    raise ValueError(f'--case {text!r} is not MODEL:BATCH[:IMAGE_SIZE[:MODE'
                     f'[:REMAT[:MU_DTYPE]]]], e.g. ViT-B/16:256:224:train') from None
  mode = parts[3] if len(parts) > 3 and parts[3] else 'train'
  if mode not in MODES:
    raise ValueError(f'--case {text!r}: mode {mode!r} is not one of {MODES}.')
  remat = parts[4] if len(parts) > 4 and parts[4] else 'none'
  mu = parts[5] if len(parts) > 5 and parts[5] else None
  if batch <= 0 or image_size <= 0:
    raise ValueError(f'--case {text!r}: batch and image size must be positive.')
  budget.train_flops_per_image(model, image_size)  # Unknown model: an error.
  return Case(model, batch, image_size, mode, remat, mu)


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--case', action='append', default=None,
                 help='MODEL:BATCH[:IMAGE_SIZE[:MODE[:REMAT[:MU_DTYPE]]]], '
                 'repeatable; default: ViT-B/16:256 and ViT-L/16:128')
  p.add_argument('--all', action='store_true',
                 help='add ViT-H/14 training (remat, bf16 moments) and '
                 'ViT-B/16 eval at 384 px to the cases')
  p.add_argument('--num_classes', type=int, default=1000)
  p.add_argument('--num_layers', type=int, default=None,
                 help="fewer blocks than the models' (quick checks, CPU)")
  p.add_argument('--steps', type=int, default=20, help='timed steps per run')
  p.add_argument('--warmup', type=int, default=3, help='untimed steps per run')
  p.add_argument('--time_limit', type=float, default=480,
                 help='seconds for the whole invocation')
  p.add_argument('--json', default='side_by_side.json',
                 help='where to write all results')
  p.add_argument('--no_timm', action='store_true', help='only our step')
  p.add_argument('--timm_compile', default='default',
                 help="torch.compile mode for timm, or 'none'")
  p.add_argument('--xla_gpu_flags', action='store_true',
                 help='append vit_jax.models.XLA_GPU_FLAGS to XLA_FLAGS')
  p.add_argument('--peak_flops', type=float, default=None,
                 help="bf16 peak FLOP/s per device, for a device "
                 "vit_jax.budget does not know (MFU is left out otherwise)")
  p.add_argument('--ours_args', default='',
                 help='extra arguments for vit_jax.benchmark, e.g. '
                 '"--attention_implementation=xla"')
  args = p.parse_args(argv)
  if (args.steps <= 0 or args.warmup <= 0 or args.time_limit <= 0
      or (args.num_layers or 1) <= 0):
    p.error('--steps, --warmup, --time_limit and --num_layers must be positive')
  try:
    cases = [parse_case(c) for c in args.case] if args.case else list(
        DEFAULT_CASES)
  except ValueError as e:
    p.error(str(e))
  if args.all:
    cases += [c for c in EXTRA_CASES if c not in cases]
  args.cases = cases
  return args


def have_timm() -> bool:
  return all(importlib.util.find_spec(m) is not None for m in ('torch', 'timm'))


def _layers(args) -> list[str]:
  return [f'--num_layers={args.num_layers}'] if args.num_layers else []


def ours_command(case: Case, args) -> list[str]:
  cmd = [sys.executable, '-m', 'vit_jax.benchmark', f'--model={case.model}',
         *_layers(args),
         f'--mode={case.mode}', f'--batch={case.batch}',
         f'--image_size={case.image_size}', f'--num_classes={args.num_classes}',
         f'--steps={args.steps}', f'--warmup={args.warmup}',
         f'--remat_policy={case.remat_policy}']
  if case.mu_dtype:
    cmd.append(f'--mu_dtype={case.mu_dtype}')
  return cmd + args.ours_args.split()


def timm_command(case: Case, args) -> list[str]:
  cmd = [sys.executable, os.path.join(HERE, 'timm_step.py'),
         f'--model={case.model}', *_layers(args), f'--mode={case.mode}',
         f'--batch={case.batch}', f'--image_size={case.image_size}',
         f'--num_classes={args.num_classes}', f'--steps={args.steps}',
         f'--warmup={args.warmup}', f'--compile={args.timm_compile}']
  if case.remat_policy != 'none':
    cmd.append('--grad_checkpointing')
  return cmd


def environment(args) -> dict:
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join(
      filter(None, [ROOT, env.get('PYTHONPATH')]))
  if args.xla_gpu_flags:
    from vit_jax.models import fast_path  # pylint: disable=g-import-not-at-top
    env['XLA_FLAGS'] = ' '.join(
        filter(None, [env.get('XLA_FLAGS'), *fast_path.XLA_GPU_FLAGS]))
  return env


def run_one(cmd: list[str], env: dict, timeout: float) -> dict:
  """Runs one benchmark process; its last JSON line, or {'error': ...}."""
  if timeout <= 1:
    return {'error': 'skipped: time limit reached'}
  try:
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return {'error': f'killed at the time limit ({timeout:.0f} s left)'}
  for line in reversed(proc.stdout.strip().splitlines()):
    if line.startswith('{'):
      return json.loads(line)
  tail = (proc.stderr.strip().splitlines() or ['(no output)'])[-1]
  return {'error': f'exit {proc.returncode}: {tail[:300]}'}


def mfu(result: dict, flops: float, peak: Optional[float]) -> Optional[float]:
  if 'img_per_sec' not in result or not peak:
    return None
  return flops * result['img_per_sec'] / (peak * result.get('devices', 1))


def format_table(rows: list[dict]) -> str:
  header = ('case', 'impl', 'img/s', 'MFU', 'step ms', 'peak GiB',
            'compile s', 'ours/timm')
  lines = [header]
  for r in rows:
    res = r['result']
    def fmt(key, spec):
      v = res.get(key)
      return '-' if v is None else format(v, spec)
    lines.append((
        r['case'], r['impl'],
        fmt('img_per_sec', ',.1f') if 'error' not in res else res['error'],
        '-' if r['mfu'] is None else f'{100 * r["mfu"]:.1f}%',
        fmt('step_ms', ',.1f'), fmt('peak_memory_gib', '.1f'),
        fmt('compile_s', '.1f'),
        '-' if r.get('ratio') is None else f'{r["ratio"]:.2f}x'))
  widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
  out = [' | '.join(str(c).ljust(w) for c, w in zip(line, widths))
         for line in lines]
  out.insert(1, '-+-'.join('-' * w for w in widths))
  return '\n'.join(out)


def versions() -> dict:
  out = {'python': platform.python_version()}
  for name in ('jax', 'jaxlib', 'flax', 'optax', 'torch', 'timm'):
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  return out


def main(argv=None) -> int:
  args = parse_args(argv)
  deadline = time.monotonic() + args.time_limit
  env = environment(args)
  with_timm = have_timm() and not args.no_timm
  if not with_timm and not args.no_timm:
    print('torch or timm is not importable: timing our step only.',
          file=sys.stderr)
  report = {'date': datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec='seconds'), 'versions': versions(), 'argv': sys.argv[1:],
            'rows': []}
  rows = report['rows']
  for case in args.cases:
    flops = case.flops_per_image(args.num_classes, args.num_layers)
    runs = [('vit_jax', ours_command(case, args))]
    if with_timm:
      runs.append(('timm', timm_command(case, args)))
    ours = None
    for impl, cmd in runs:
      t0 = time.monotonic()
      result = run_one(cmd, env, deadline - t0)
      kind = result.get('device_kind') or result.get('device') or ''
      peak = args.peak_flops or budget.peak_flops(kind)
      row = {'case': case.label, 'impl': impl, 'command': ' '.join(cmd),
             'wall_s': round(time.monotonic() - t0, 1),
             'gflops_per_image': round(flops / 1e9, 3),
             'peak_flops': peak, 'mfu': mfu(result, flops, peak),
             'result': result}
      if impl == 'vit_jax':
        ours = result
      elif ours and 'img_per_sec' in ours and 'img_per_sec' in result:
        rows[-1]['ratio'] = ours['img_per_sec'] / result['img_per_sec']
      rows.append(row)
      print(f'{case.label} {impl}: {result.get("img_per_sec", result.get("error"))}'
            f' ({row["wall_s"]} s)', file=sys.stderr, flush=True)
      with open(args.json, 'w') as f:  # After every run: a kill keeps the rest.
        json.dump(report, f, indent=1)
  print(format_table(rows), flush=True)
  return 0 if all('error' not in r['result'] for r in rows) else 1


if __name__ == '__main__':
  sys.exit(main())
