"""A run's workdir describes its model: predict, evaluate and fine-tune from it with no copied flags."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from sklearn import datasets as sk_datasets

from vit_jax import pretrained, train
from vit_jax.budget import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import finetune, quickstart  # pylint: disable=wrong-import-position


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('quick')
  c = quickstart.get_config('steps=40')
  c.log_every = 20
  c.checkpoint_every = 40
  c.evals.val.every = 0
  result = train.train_and_evaluate(c, str(workdir))
  assert result.status == 'done'
  return str(workdir)


def _digit_png(tmp_path, index):
  digits = sk_datasets.load_digits()
  pixels = (digits.images[index] * 255 / 16).astype(np.uint8)
  path = str(tmp_path / f'digit{index}_{digits.target[index]}.png')
  Image.fromarray(pixels).convert('RGB').save(path)
  return path, int(digits.target[index])


def test_describe_reads_the_run(run_dir):
  info = pretrained.describe(run_dir)
  assert info.model['name'] == 'ViT-Ti/16' and info.model['hidden_size'] == 64
  assert info.num_classes == 10 and info.image_size == 16
  # Overridden: not reported under the registered name.
  assert info.label == ('custom ViT (width 64, depth 4, mlp 128, heads 4, '
                        'patch 4; from ViT-Ti/16)')


def test_predict_from_a_workdir_needs_no_model_flags(run_dir, tmp_path):
  paths = [_digit_png(tmp_path, i) for i in range(1500, 1506)]
  out = subprocess.run(
      [sys.executable, '-m', 'vit_jax.predict', '--checkpoint', run_dir,
       '--top_k', '1'] + [p for p, _ in paths],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  assert lines[0] == paths[0][0] and lines[1].strip().split()[1] == 'class'
  assert len(lines) == 2 * len(paths)


def test_logs_results_and_budget_report_use_the_custom_label(run_dir):
  meta = json.load(open(os.path.join(run_dir, 'config.json')))
  assert meta['model']['name'] == 'ViT-Ti/16'
  assert report.summarize(run_dir).model.startswith('custom ViT (width 64')


def test_finetune_from_a_run_takes_its_model(run_dir, tmp_path):
  c = finetune.get_config(f'dataset=cifar10,init={run_dir},steps=2,batch=16,'
                          f'image_size=16')
  c.input.data.update(name='digits', split='train')
  c.input.pp = 'resize(16)|value_range(-1, 1)|onehot(10)'
  c.evals.test.update(data=dict(name='digits', split='test'),
                      pp='resize(16)|value_range(-1, 1)|onehot(10)', every=0)
  c.model.dtype = 'float32'
  result = train.train_and_evaluate(c, str(tmp_path / 'ft'))
  assert result.status == 'done'
  config = json.load(open(tmp_path / 'ft' / 'config.json'))
  assert config['model']['hidden_size'] == 64 and config['model']['num_layers'] == 4
  # The transfer replaced the head: after 2 steps from a zero head it is small.
  assert result.params['head']['kernel'].shape == (64, 10)


def test_a_class_count_that_disagrees_with_the_data_fails_before_compiling(
    tmp_path):
  c = quickstart.get_config('steps=2')
  c.num_classes = 5
  c.input.pp = 'resize(16)|value_range(-1, 1)|onehot(5)'
  with pytest.raises(ValueError, match=r'num_classes=5 but .*digits.* has 10 '
                     r'classes; set num_classes=10'):
    train.train_and_evaluate(c, str(tmp_path))
  saved = (os.listdir(tmp_path / 'checkpoints')
           if os.path.isdir(tmp_path / 'checkpoints') else [])
  assert not any(d.isdigit() for d in saved)  # Nothing trained or saved.


def test_an_npz_that_does_not_fit_prints_the_overrides_that_would(run_dir):
  npz = os.path.join(run_dir, 'params.npz')
  with pytest.raises(ValueError, match=r'The arrays fit the overrides: '
                     r'hidden_size=64, mlp_dim=128, num_heads=4, num_layers=4, '
                     r'patch_size=4\.') as err:
    pretrained.load(npz, 'ViT-Ti/16')
  assert '\n' not in str(err.value)
