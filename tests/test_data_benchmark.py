"""The input-pipeline benchmark command (vit_jax.data.benchmark) on a tiny setting."""

import os

from PIL import Image

from vit_jax.data import benchmark


def test_generated_jpegs_are_500x375(tmp_path):
  mean_size = benchmark.write_jpegs(str(tmp_path), 6, num_classes=2)
  files = sorted(tmp_path.glob('train/*/*.jpg'))
  assert len(files) == 6 and {f.parent.name for f in files} == {'class_0', 'class_1'}
  assert Image.open(files[0]).size == (500, 375) and Image.open(files[0]).format == 'JPEG'
  assert abs(mean_size - sum(os.path.getsize(f) for f in files) / 6) <= 1


def test_benchmark_command_prints_the_table(tmp_path, capsys):
  args = ['--num_images=8', '--seconds=0.05', '--rounds=1', '--size=32', '--batch=4',
          f'--root={tmp_path}']
  assert benchmark.main(args) == 0
  out = capsys.readouterr().out
  for row in ('| train, bare tf.data |', '| train, vit_jax.data |', '| eval, vit_jax.data |',
              '| train + RandAugment(2, 15) + Mixup(0.5) |'):
    assert row in out
  assert '| train, bare tf.data | ' in out and '| 100% |' in out


def test_benchmark_rejects_bad_arguments(capsys):
  assert benchmark.main(['--threads=0']) == 2
  assert '--threads must be >= 1' in capsys.readouterr().err
