"""The planner, its CLI and input errors, and the paper's compute reconstructed."""

import json
import os
import subprocess
import sys

import pytest

from vit_jax import budget, planner
from vit_jax.planner import paper
from vit_jax.planner.__main__ import main

# ViT-L/16 at 224 with 1000 classes, forward MACs by hand: per layer
# 4*197*1024^2 + 2*197*1024*4096 + 2*197^2*1024 = 2,558,314,496; x24, plus
# the embedding 196*768*1024 and the head 1024*1000.
L16_MACS = 24 * 2_558_314_496 + 154_140_672 + 1_024_000


def test_worked_example_l16_imagenet21k_on_v3_8():
  plan = planner.make_plan('ViT-L/16', dataset='imagenet21k', epochs=90,
                           batch_size=4096, hardware='v3-8', mfu=0.4,
                           price_per_chip_hour=2.0)
  steps = -(-90 * 14_197_122 // 4096)
  assert plan.steps == steps == 311_949
  assert plan.flops_per_image == 6 * L16_MACS
  assert plan.total_flops == steps * 4096 * 6 * L16_MACS
  assert plan.chips == 4 and plan.hardware == 'TPU v3'
  # 8 cores x 61.5 TFLOP/s x 40%: 196.8 TFLOP/s of useful work.
  assert plan.wall_days == pytest.approx(plan.total_flops / (8 * 61.5e12 * 0.4)
                                         / 86_400)
  assert plan.wall_days == pytest.approx(27.75, abs=0.01)
  assert plan.core_days == pytest.approx(8 * plan.wall_days)
  assert plan.chip_days == pytest.approx(4 * plan.wall_days)
  assert plan.cost == pytest.approx(2.0 * 24 * plan.chip_days)


def test_plan_by_steps_gpus_and_core_price():
  plan = planner.make_plan('ViT-B/16', steps=1000, batch_size=256,
                           hardware='h100', chips=8, mfu=0.5,
                           price_per_core_hour=3.0)
  flops = 1000 * 256 * 6 * (17_563_060_224 + 768_000)
  assert plan.total_flops == flops
  assert plan.wall_days * 86_400 == pytest.approx(flops / (8 * 989.4e12 * 0.5))
  assert plan.core_days == plan.chip_days           # a GPU is one "core"
  assert plan.cost == pytest.approx(3.0 * 24 * plan.core_days)
  v4 = planner.make_plan('ViT-B/16', num_examples=1000, epochs=2.5,
                         batch_size=100, hardware='v4-16', mfu=0.5)
  assert (v4.steps, v4.chips) == (25, 8)
  assert v4.core_days == pytest.approx(2 * v4.chip_days)


@pytest.mark.parametrize('kwargs,message', [
    (dict(hardware='tpu-v9'), "unknown hardware 'tpu-v9'"),
    (dict(batch_size=0), 'batch_size must be a positive integer, got 0'),
    (dict(epochs=-1), 'epochs must be positive, got -1'),
    (dict(epochs=None), 'give the run length as epochs or as steps'),
    (dict(steps=10), 'give the run length as epochs or as steps'),
    (dict(dataset=None), 'epochs need the dataset size'),
    (dict(dataset='imagenet-42k'), "unknown dataset 'imagenet-42k'"),
    (dict(mfu=40), r'mfu must be a fraction in \(0, 1\], got 40'),
    (dict(mfu=0), r'mfu must be a fraction in \(0, 1\], got 0'),
    (dict(chips=2), "'v3-8' has 4 chips, but chips=2"),
    (dict(hardware='a100'), 'how many NVIDIA A100 chips'),
    (dict(price_per_chip_hour=1., price_per_core_hour=1.), 'not both'),
    (dict(image_size=8), 'gives no 16x16 patches'),
])
def test_plan_input_errors_are_one_line(kwargs, message):
  args = dict(model='ViT-B/16', dataset='imagenet2012', epochs=1,
              batch_size=4096, hardware='v3-8', mfu=0.4)
  args.update(kwargs)
  with pytest.raises(ValueError, match=message) as e:
    planner.make_plan(args.pop('model'), **args)
  assert '\n' not in str(e.value)


@pytest.mark.parametrize('flag,message', [
    (['--hardware', 'v9'], "unknown hardware 'v9'"),
    (['--batch-size', '0'], 'batch_size must be a positive integer'),
    (['--epochs', '-3'], 'epochs must be positive'),
    (['--batch-size', 'many'], "invalid int value: 'many'"),
])
def test_cli_plan_errors(capsys, flag, message):
  argv = ['plan', '--model', 'ViT-B/16', '--dataset', 'imagenet2012',
          '--epochs', '1', '--batch-size', '64', '--hardware', 'v3-8',
          '--mfu', '0.4']
  argv[argv.index(flag[0]) + 1] = flag[1]
  try:
    rc = main(argv)
  except SystemExit as e:  # argparse's own errors
    rc = e.code
  err = capsys.readouterr().err
  assert rc == 2
  assert message in err and err.count('\n') == 1 and 'Traceback' not in err


def test_cli_plan_reads_mfu_from_a_run_or_benchmark(tmp_path, capsys):
  run = tmp_path / 'run'
  run.mkdir()
  rows = [{'step': s, 'mfu': m} for s, m in ((50, 0.1), (100, 0.42), (150, 0.44))]
  (run / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
  bench = tmp_path / 'bench.json'   # benchmark.py prints one JSON per line
  bench.write_text(json.dumps({'model': 'ViT-B/16', 'mfu': 0.5}) + '\n' +
                   json.dumps({'model': 'ViT-L/16', 'mfu': 0.55}) + '\n')
  assert planner.mfu_from_file(str(run)) == 0.42           # the median
  assert planner.mfu_from_file(str(bench), model='ViT-L/16') == 0.55
  with pytest.raises(ValueError, match='no positive "mfu" values for model'):
    planner.mfu_from_file(str(bench), model='ViT-H/14')
  with pytest.raises(FileNotFoundError, match='no MFU source'):
    planner.mfu_from_file(str(tmp_path / 'nope'))
  assert main(['plan', '--model', 'ViT-L/16', '--steps', '100',
               '--batch-size', '4096', '--hardware', 'v3-8',
               '--mfu-from', str(bench), '--json']) == 0
  out = json.loads(capsys.readouterr().out)
  assert out['mfu'] == 0.55 and out['steps'] == 100


def test_table6_reconstruction():
  rows = {(r.name, r.epochs): r for r in paper.table6()}
  assert len(rows) == 18
  inconsistent = {k for k, r in rows.items() if not r.consistent}
  assert inconsistent == {('ViT-B/32', 7), ('R50x1+ViT-L/16', 7)}
  for key, r in rows.items():
    if key not in inconsistent and key != ('ResNet50x1', 7):
      assert abs(r.relative_error) < 0.01, key
  # ResNet50x1: 50.7 against a printed 50, i.e. within 1% of 50.49.
  assert rows['ResNet50x1', 7].exaflops == pytest.approx(50.7, abs=0.05)
  assert rows['ViT-H/14', 14].exaflops == pytest.approx(4258.6, abs=0.1)
  assert rows['ViT-B/16', 7].exaflops == pytest.approx(223.7, abs=0.1)
  # Why the two rows disagree, in numbers.
  assert paper.train_exaflops('ViT-B/32', 7, class_token=False) == pytest.approx(
      55.2, abs=0.05)
  assert paper.train_exaflops('ViT-L/32', 7, class_token=False) < 0.98 * 196
  assert 'not 2x' in rows['R50x1+ViT-L/16', 7].note


def test_table2_implied_utilisation():
  mfu = {(r.name, r.epochs): r.implied_mfu for r in paper.table2()}
  assert mfu['ViT-H/14 JFT', 14] == pytest.approx(0.321, abs=0.001)
  assert mfu['ViT-L/16 JFT', 7] == pytest.approx(0.217, abs=0.001)
  assert mfu['ViT-L/16 JFT', 14] == pytest.approx(0.434, abs=0.001)
  assert mfu['ViT-L/16 I21k', 30] == pytest.approx(0.129, abs=0.001)
  assert mfu['ViT-L/16 I21k', 90] == pytest.approx(0.386, abs=0.001)


def test_cli_runs_as_a_module_without_tensorflow():
  code = ('import runpy, sys\n'
          'sys.argv = ["vit_jax.planner", "paper"]\n'
          'try:\n'
          '  runpy.run_module("vit_jax.planner", run_name="__main__")\n'
          'except SystemExit as e:\n'
          '  assert not e.code, e.code\n'
          'print("imported:", [m for m in ("tensorflow", "clu", "ml_collections")'
          ' if m in sys.modules])\n')
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                       text=True, env=env, timeout=120, check=True).stdout
  assert 'imported: []' in out
  assert 'ViT-H/14             14    4262   4258.6' in out
  assert 'implied MFU' in out


def test_a_size_off_the_patches_is_refused_not_costed_as_another(capsys):
  """230 px was labelled 230 and costed as 224 (14x14 tokens)."""
  argv = ['plan', '--model', 'ViT-B/16', '--steps', '10', '--batch-size',
          '8', '--hardware', 'v3-8', '--mfu', '0.4', '--image-size']
  assert main(argv + ['230']) == 2
  err = capsys.readouterr().err
  assert err == ('python -m vit_jax.planner plan: error: --image-size 230 does '
                 'not divide into the 16x16-pixel tokens of ViT-B/16: the last '
                 '6 pixels of each side would be dropped; use a multiple of 16 '
                 '(e.g. 224 or 240).\n')
  with pytest.raises(ValueError, match='^image_size=230 does not divide'):
    planner.make_plan('ViT-B/16', steps=10, batch_size=8, hardware='v3-8',
                      mfu=0.4, image_size=230)
  assert main(argv + ['240', '--json']) == 0
  plan = json.loads(capsys.readouterr().out)
  assert plan['image_size'] == 240
  assert plan['flops_per_image'] == pytest.approx(
      budget.train_flops_per_image('ViT-B/16', 240))  # 15x15 tokens, not 14x14


def test_a_reader_that_stops_early_ends_the_command_quietly():
  """`python -m vit_jax.planner paper | head` ended in a BrokenPipeError
  traceback (exit 1)."""
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  proc = subprocess.Popen([sys.executable, '-m', 'vit_jax.planner', 'paper'],
                          cwd=os.path.dirname(os.path.dirname(__file__)),
                          env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
  proc.stdout.close()  # The reader is gone before the table is printed.
  err = proc.stderr.read().decode()
  assert proc.wait(timeout=120) == 0, err
  assert err == ''


def test_the_old_spelling_names_the_new_command_and_runs_nothing():
  """`python -m vit_jax.budget ...` (before the planner moved out) is one
  line with the command to run instead, and exit status 2."""
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  proc = subprocess.run(
      [sys.executable, '-m', 'vit_jax.budget', 'plan', '--model', 'ViT-B/16',
       '--steps', '10', '--batch-size', '8', '--hardware', 'v3-8', '--mfu',
       '0.4'], cwd=os.path.dirname(os.path.dirname(__file__)), env=env,
      capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 2 and proc.stdout == ''
  assert proc.stderr == (
      'python -m vit_jax.budget: error: the planner moved; run: python -m '
      'vit_jax.planner plan --model ViT-B/16 --steps 10 --batch-size 8 '
      '--hardware v3-8 --mfu 0.4\n')
