"""Training-step throughput and MFU on synthetic batches, on whatever devices are present.

python -m vit_jax.benchmark --model=ViT-B/16 --batch=256 --dtype=bfloat16

Times the real training step (`vit_jax.assembly`, the one the training
loop runs) with the paper's pretraining optimizer (Adam, global
norm clipping, weight decay), and prints one JSON line: img/s, img/s per
device, step ms, MFU, peak device memory and compile seconds. With
`--mode=eval` it times the classification forward pass instead (logits and
top-1, no gradients), whose FLOPs are one forward pass. Attention options
left unset take the backend's fast path (`vit_jax.models.backend_defaults`:
cuDNN fused attention with 197 -> 256 tokens on a GPU). Imports neither
TensorFlow nor clu nor ml_collections, so it runs on a bare JAX host.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import numpy as np

from vit_jax import assembly, budget, help_format, models, parallel, sharding_rules


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      prog='python -m vit_jax.benchmark', description=__doc__.split('\n')[0],
      formatter_class=help_format.Formatter)
  p.add_argument('--model', default='ViT-B/16', help='registered model name')
  p.add_argument('--mode', default='train', choices=('train', 'eval'),
                 help='train: the training step; eval: the forward pass')
  p.add_argument('--batch', type=int, default=256, help='global batch size')
  p.add_argument('--num_layers', type=int, default=None,
                 help="fewer blocks than the registry's (quick checks)")
  p.add_argument('--arch', default='',
                 help='architecture overrides, e.g. the quickstart model: '
                 'hidden_size=64,mlp_dim=128,num_heads=4,patch_size=4')
  p.add_argument('--image_size', type=int, default=224, help='input resolution')
  p.add_argument('--num_classes', type=int, default=1000, help='classifier head width')
  p.add_argument('--dtype', default='bfloat16',
                 choices=('float32', 'bfloat16', 'float16'),
                 help='compute dtype of the model')
  p.add_argument('--steps', type=int, default=20, help='timed steps')
  p.add_argument('--warmup', type=int, default=3, help='untimed steps')
  p.add_argument('--accum_steps', type=int, default=1,
                 help='micro-batches per step (gradient accumulation)')
  p.add_argument('--remat_policy', default='none',
                 choices=sorted(models.vit.REMAT_POLICIES),
                 help='what the backward pass recomputes instead of storing')
  p.add_argument('--scan_layers', action='store_true',
                 help='one scanned block instead of unrolled layers')
  p.add_argument('--attention_implementation', default=None,
                 choices=(None, 'xla', 'cudnn'),
                 help="attention kernel (None: the backend's fast path)")
  p.add_argument('--attention_pad_multiple', type=int, default=None,
                 help='pad the tokens to a multiple of this')
  p.add_argument('--mu_dtype', default=None, help='e.g. bfloat16')
  p.add_argument('--mesh', default='data=-1',
                 help='axis sizes, e.g. data=4,fsdp=2')
  args = p.parse_args(argv)
  if args.batch <= 0 or args.steps <= 0 or (args.num_layers or 1) <= 0:
    p.error('--batch, --steps and --num_layers must be positive')
  return args


def _arch(args) -> dict:
  """--arch and --num_layers as model overrides."""
  arch = {}
  for key, value in _mesh_sizes(args.arch, '--arch').items():
    if key not in models.ARCHITECTURE_KEYS:
      raise ValueError(f'--arch key {key!r} is not one of '
                       f'{models.ARCHITECTURE_KEYS}')
    arch[key] = value
  if args.num_layers:
    arch['num_layers'] = args.num_layers
  return arch


def _mesh_sizes(text: str, flag: str = '--mesh') -> dict:
  sizes = {}
  for item in filter(None, text.split(',')):
    key, _, value = item.partition('=')
    try:
      sizes[key] = int(value)
    except ValueError:
      raise ValueError(f'{flag} entry {item!r} is not KEY=INT') from None
  return sizes


def config_of(args: argparse.Namespace) -> dict:
  """The training config the benchmark assembles: the paper's pretraining
  optimizer (Adam, weight decay 0.1, clipping at 1) on synthetic data."""
  return {
      'model': dict(name=args.model, dtype=args.dtype,
                    remat_policy=args.remat_policy,
                    scan_layers=args.scan_layers,
                    attention_implementation=args.attention_implementation,
                    attention_pad_multiple=args.attention_pad_multiple,
                    **_arch(args)),
      'image_size': args.image_size, 'batch_size': args.batch,
      'accum_steps': args.accum_steps,
      'total_steps': args.warmup + args.steps,
      'schedule': dict(base_lr=1e-3, warmup_steps=1, decay_type='linear'),
      'optim': {'name': 'adam', 'weight_decay': 0.1, 'grad_clip_norm': 1.0,
                'mu_dtype': args.mu_dtype,
                'weight_decay_exclude': ('.*/bias', '.*/scale')},
      'sharding': {'rules': sharding_rules.default_sharding_rules(),
                   'fsdp_min_size': 2**16},
      'seed': 0,
  }


def run(args: argparse.Namespace) -> dict:
  """Compiles and times the step; returns the JSON-able result."""
  mesh = parallel.make_mesh(_mesh_sizes(args.mesh))
  asm = assembly.assemble(config_of(args), mesh, args.num_classes)
  rng = np.random.default_rng(0)
  per_host = args.batch // jax.process_count()
  shape = asm.image_shape
  host_batch = {
      'image': rng.uniform(-1, 1, (per_host, *shape)).astype(np.float32),
      'labels': np.eye(args.num_classes, dtype=np.float32)[
          rng.integers(0, args.num_classes, per_host)]}
  batch = parallel.host_to_global(host_batch, mesh)
  state = asm.init_state()
  if args.mode == 'eval':  # Parameters in, top-1 count out.
    step, state = asm.eval_step(), state['params']
    run_step = lambda state: (state, compiled(state, batch))
  else:
    step = asm.step
    run_step = lambda state: compiled(state, batch)

  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  for _ in range(args.warmup):
    state, metrics = run_step(state)
  jax.block_until_ready(metrics)
  t0 = time.perf_counter()
  for _ in range(args.steps):
    state, metrics = run_step(state)
  jax.block_until_ready((state, metrics))
  seconds = time.perf_counter() - t0

  n = jax.device_count()
  img_per_sec = args.batch * args.steps / seconds
  kind = jax.devices()[0].device_kind
  flops_per_image = asm.flops_per_image
  if args.mode == 'eval':  # One forward pass: a third of the training FLOPs.
    flops_per_image /= budget.flops.TRAIN_FORWARD_MULTIPLE
  peak = budget.peak_flops(kind)
  memory = None
  stats = jax.local_devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    memory = stats['peak_bytes_in_use']
  return {
      'model': args.model, 'num_layers': asm.spec.num_layers,
      'mode': args.mode, 'batch': args.batch,
      'image_size': args.image_size, 'dtype': args.dtype,
      'remat_policy': args.remat_policy, 'mu_dtype': args.mu_dtype,
      'attention_implementation': asm.model.attention_implementation,
      'attention_pad_multiple': asm.model.attention_pad_multiple,
      'devices': n, 'device_kind': kind, 'backend': jax.default_backend(),
      'img_per_sec': round(img_per_sec, 2),
      'img_per_sec_per_device': round(img_per_sec / n, 2),
      'step_ms': round(1000 * seconds / args.steps, 3),
      'mfu': (round(flops_per_image * img_per_sec / (peak * n), 4)
              if peak else None),
      'gflops_per_image': round(flops_per_image / 1e9, 3),
      'peak_memory_gib': (round(memory / 2**30, 3) if memory else None),
      'compile_s': round(compile_s, 2),
      'final_loss': (float(metrics['train_loss']) if args.mode == 'train'
                     else None),
  }


def main(argv=None) -> int:
  args = parse_args(argv)
  parallel.configure_cpu()
  try:
    result = run(args)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(json.dumps(result), flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
