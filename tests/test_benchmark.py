"""The benchmark CLI: one JSON line, no TensorFlow / clu / ml_collections."""

import json
import os
import subprocess
import sys

import cpu_devices

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBE = '''
import sys, runpy
sys.argv = ['benchmark', '--model=ViT-Ti/16', '--num_layers=2', '--batch=8', '--image_size=32',
            '--num_classes=10', '--steps=2', '--warmup=1', '--dtype=bfloat16',
            '--mesh=data=2,fsdp=2', '--accum_steps=2', '--remat_policy=full']
try:
  runpy.run_module('vit_jax.benchmark', run_name='__main__')
except SystemExit as e:
  assert e.code == 0, e.code
heavy = [m for m in ('tensorflow', 'clu', 'ml_collections') if m in sys.modules]
print('HEAVY', heavy)
'''


def test_benchmark_prints_one_json_line_without_heavy_imports():
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=cpu_devices.xla_flags(4))
  proc = subprocess.run([sys.executable, '-c', PROBE], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = proc.stdout.strip().splitlines()
  result = json.loads(lines[0])
  assert lines[1] == 'HEAVY []'
  assert result['devices'] == 4 and result['batch'] == 8
  assert result['img_per_sec'] > 0 and result['step_ms'] > 0
  assert result['mfu'] is None  # No peak is known for a CPU: no guess.
  # 3 x 2 x forward MACs of ViT-Ti/16 (2 blocks) at 32 px with 10 classes.
  d, n, l, m = 192, 5, 2, 768
  macs = l * (4 * n * d * d + 2 * n * d * m + 2 * n * n * d) + 4 * 16 * 16 * 3 * d
  assert abs(result['gflops_per_image'] - 6 * macs / 1e9) < 0.01


def test_benchmark_rejects_a_batch_that_does_not_split():
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=cpu_devices.xla_flags(4))
  proc = subprocess.run(
      [sys.executable, '-m', 'vit_jax.benchmark', '--model=ViT-Ti/16',
       '--batch=6', '--steps=1'], cwd=ROOT, env=env, capture_output=True,
      text=True, timeout=120)
  assert proc.returncode == 2
  assert 'not divisible' in proc.stderr and 'Traceback' not in proc.stderr
