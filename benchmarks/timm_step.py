"""timm's ViT training step (or forward pass) with torch.compile and bf16 autocast, timed; one JSON line.

python benchmarks/timm_step.py --model=ViT-B/16 --batch=256

The reference side of `benchmarks/side_by_side.py`: the same architecture as
`vit_jax.benchmark --model=...` (timm's `vit_{tiny,small,base,large,huge}`
with the same patch size, image size and class count), trained the way a
timm user would on one GPU: `torch.compile(model)`, bf16 autocast, AdamW
(fused on CUDA) with weight decay 0.1, global-norm clipping at 1.0, on a
fixed synthetic batch. `--mode=eval` times `model(x).argmax(-1)` under
`torch.inference_mode`. Needs only torch and timm (no JAX, no vit_jax).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time

import timm
import torch
import torch.nn.functional as F

# Our registry's width names -> timm's.
_SIZES = {'Ti': 'tiny', 'S': 'small', 'B': 'base', 'L': 'large', 'H': 'huge'}


def timm_name(model: str) -> str:
  """'ViT-B/16' -> 'vit_base_patch16_224' (image size is passed separately)."""
  match = re.fullmatch(r'ViT-(Ti|S|B|L|H)[/_](\d+)', model)
  if not match:
    raise ValueError(f'--model={model!r} has no timm counterpart here; use a '
                     f'plain ViT name such as ViT-B/16 (no hybrids).')
  return f'vit_{_SIZES[match[1]]}_patch{match[2]}_224'


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--model', default='ViT-B/16')
  p.add_argument('--mode', default='train', choices=('train', 'eval'))
  p.add_argument('--batch', type=int, default=256)
  p.add_argument('--num_layers', type=int, default=None,
                 help="fewer blocks than the model's (quick checks)")
  p.add_argument('--image_size', type=int, default=224)
  p.add_argument('--num_classes', type=int, default=1000)
  p.add_argument('--steps', type=int, default=20, help='timed steps')
  p.add_argument('--warmup', type=int, default=3,
                 help='untimed steps (the first one compiles)')
  p.add_argument('--compile', default='default',
                 help="torch.compile mode ('default', 'max-autotune', ...) "
                 "or 'none' for eager")
  p.add_argument('--grad_checkpointing', action='store_true',
                 help="timm's activation checkpointing (for ViT-H/14)")
  p.add_argument('--device', default=None, help='default: cuda if available')
  args = p.parse_args(argv)
  if args.batch <= 0 or args.steps <= 0 or args.warmup <= 0:
    p.error('--batch, --steps and --warmup must be positive')
  return args


def run(args: argparse.Namespace) -> dict:
  device = torch.device(args.device or ('cuda' if torch.cuda.is_available()
                                        else 'cpu'))
  torch.manual_seed(0)
  torch.backends.cuda.matmul.allow_tf32 = True
  torch.backends.cudnn.allow_tf32 = True
  depth = {'depth': args.num_layers} if args.num_layers else {}
  model = timm.create_model(timm_name(args.model), pretrained=False,
                            img_size=args.image_size,
                            num_classes=args.num_classes, **depth).to(device)
  if args.grad_checkpointing:
    model.set_grad_checkpointing(True)
  model.train(args.mode == 'train')
  fn = model if args.compile == 'none' else torch.compile(model,
                                                          mode=args.compile)
  x = torch.rand(args.batch, 3, args.image_size, args.image_size,
                 device=device) * 2 - 1
  y = torch.randint(0, args.num_classes, (args.batch,), device=device)
  autocast = torch.autocast(device.type, dtype=torch.bfloat16)

  if args.mode == 'train':
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1,
                            fused=device.type == 'cuda')

    def step():
      with autocast:
        loss = F.cross_entropy(fn(x), y)
      loss.backward()
      torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
      opt.step()
      opt.zero_grad(set_to_none=True)
      return loss
  else:
    def step():
      with torch.inference_mode(), autocast:
        return (fn(x).argmax(-1) == y).sum()

  def sync():
    if device.type == 'cuda':
      torch.cuda.synchronize()

  t0 = time.perf_counter()
  out = step()
  sync()
  compile_s = time.perf_counter() - t0
  for _ in range(args.warmup - 1):
    out = step()
  sync()
  t0 = time.perf_counter()
  for _ in range(args.steps):
    out = step()
  sync()
  seconds = time.perf_counter() - t0
  img_per_sec = args.batch * args.steps / seconds
  memory = (torch.cuda.max_memory_allocated(device) if device.type == 'cuda'
            else None)
  return {
      'model': args.model, 'timm_model': timm_name(args.model),
      'num_layers': len(model.blocks), 'mode': args.mode, 'batch': args.batch,
      'image_size': args.image_size,
      'compile': args.compile, 'grad_checkpointing': args.grad_checkpointing,
      'device': (torch.cuda.get_device_name(device) if device.type == 'cuda'
                 else device.type),
      'torch': torch.__version__, 'timm': timm.__version__,
      'img_per_sec': round(img_per_sec, 2),
      'step_ms': round(1000 * seconds / args.steps, 3),
      'peak_memory_gib': round(memory / 2**30, 3) if memory else None,
      'compile_s': round(compile_s, 2),
      'final_loss': float(out) if args.mode == 'train' else None,
  }


def main(argv=None) -> int:
  args = parse_args(argv)
  try:
    result = run(args)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(json.dumps(result), flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
