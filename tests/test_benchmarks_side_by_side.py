"""benchmarks/side_by_side.py on CPU with a one-block ViT-Ti/16: both sides run, one table, the same FLOPs."""

import json
import os
import subprocess
import sys

import cpu_devices

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'benchmarks', 'side_by_side.py')

PROBE = '''
import runpy, sys
sys.argv = [{script!r}, '--case=ViT-Ti/16:4:32:train', '--case=ViT-Ti/16:4:32:eval',
            '--num_layers=1', '--num_classes=10', '--steps=2', '--warmup=1',
            '--timm_compile=none', '--peak_flops=1e12', '--time_limit=1500',
            '--json=' + {json!r}]
try:
  runpy.run_path({script!r}, run_name='__main__')
except SystemExit as e:
  assert e.code == 0, e.code
heavy = [m for m in ('tensorflow', 'clu', 'ml_collections', 'torch')
         if m in sys.modules]
print('HEAVY', heavy)
'''


def _env():
  # OMP_NUM_THREADS=1: torch's two OpenMP threads spin against the other
  # processes of a 2-core machine (timm's eval step took ~100x longer).
  return dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT,
              XLA_FLAGS=cpu_devices.xla_flags(1),
              OMP_NUM_THREADS='1')


def _forward_macs(tokens=5, d=192, m=768, layers=1, classes=10):
  return (layers * (4 * tokens * d * d + 2 * tokens * d * m
                    + 2 * tokens**2 * d) + 4 * 16 * 16 * 3 * d + d * classes)


def test_tiny_side_by_side_prints_one_table_with_ratios(tmp_path):
  out = tmp_path / 'result.json'
  proc = subprocess.run(
      [sys.executable, '-c', PROBE.format(script=SCRIPT, json=str(out))],
      cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=1800)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.strip().splitlines()
  assert lines[0].split(' | ')[0].strip() == 'case'
  assert 'ours/timm' in lines[0] and 'MFU' in lines[0]
  assert len(lines) == 2 + 4 + 1 and lines[-1] == 'HEAVY []'
  report = json.loads(out.read_text())
  rows = report['rows']
  assert [(r['case'], r['impl']) for r in rows] == [
      ('ViT-Ti/16 train b4 32px', 'vit_jax'), ('ViT-Ti/16 train b4 32px', 'timm'),
      ('ViT-Ti/16 eval b4 32px', 'vit_jax'), ('ViT-Ti/16 eval b4 32px', 'timm')]
  assert {'jax', 'torch', 'timm'} <= set(report['versions'])
  for r in rows:
    res = r['result']
    assert 'error' not in res, res
    assert res['num_layers'] == 1 and res['img_per_sec'] > 0
    multiple = 6 if 'train' in r['case'] else 2  # 3 x forward; 1 x forward
    assert abs(r['gflops_per_image'] - multiple * _forward_macs() / 1e9) < 1e-3
    # The same FLOPs and peak for both sides.
    expected = multiple * _forward_macs() * res['img_per_sec'] / 1e12
    assert abs(r['mfu'] - expected) <= 1e-9 * expected
  for ours, timm in (rows[:2], rows[2:]):
    assert ours['ratio'] == ours['result']['img_per_sec'] / timm['result'][
        'img_per_sec']
    assert f'{ours["ratio"]:.2f}x' in proc.stdout
    assert ours['result']['attention_implementation'] is None  # CPU: XLA
  assert rows[0]['result']['final_loss'] > 0
  assert rows[2]['result']['mode'] == 'eval'


def test_a_bad_case_is_a_one_line_error(tmp_path):
  proc = subprocess.run([sys.executable, SCRIPT, '--case=ViT-B/16:many'],
                        cwd=tmp_path, env=_env(), capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 2
  assert 'is not MODEL:BATCH' in proc.stderr and 'Traceback' not in proc.stderr
