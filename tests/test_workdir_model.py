"""A run's workdir describes its model: predict, evaluate and fine-tune from it with no copied flags."""

import json
import logging
import os
import shutil
import stat
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image
from sklearn import datasets as sk_datasets

from vit_jax import (class_names, data, export, predict, pretrained, train,
                     train_checkpoint)
from vit_jax.planner import report
from vit_jax.data.prepare import __main__ as prepare_cli
from vit_jax.evaluate import run as evaluate_run
from vit_jax.visualize import __main__ as visualize_cli

import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import evaluate as evaluate_config  # pylint: disable=wrong-import-position
from configs import finetune, quickstart  # pylint: disable=wrong-import-position


EMA_DECAY = 0.95


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A 40-step quickstart run, one block of width 32, that keeps a Polyak
  average (scored at step 40)."""
  workdir = tmp_path_factory.mktemp('quick')
  c = quickstart.get_config('steps=40')
  c.model.update(tiny.MODEL)
  c.log_every = 20
  c.checkpoint_every = 40
  c.evals.val.every = 0
  c.ema_decay = EMA_DECAY
  result = train.train_and_evaluate(c, str(workdir))
  assert result.status == 'done'
  return str(workdir), result


@pytest.fixture(scope='module')
def run_dir(trained):
  return trained[0]


def _digit_png(tmp_path, index):
  digits = sk_datasets.load_digits()
  pixels = (digits.images[index] * 255 / 16).astype(np.uint8)
  path = str(tmp_path / f'digit{index}_{digits.target[index]}.png')
  Image.fromarray(pixels).convert('RGB').save(path)
  return path, int(digits.target[index])


def test_describe_reads_the_run(run_dir):
  info = pretrained.describe(run_dir)
  assert info.model['name'] == 'ViT-Ti/16' and info.model['hidden_size'] == 32
  assert info.num_classes == 10 and info.image_size == 16
  # Overridden: not reported under the registered name.
  assert info.label == ('custom ViT (width 32, depth 1, mlp 64, heads 2, '
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
  assert report.summarize(run_dir).model.startswith('custom ViT (width 32')


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
  assert config['model']['hidden_size'] == 32 and config['model']['num_layers'] == 1
  # The transfer replaced the head: after 2 steps from a zero head it is small.
  params = train_checkpoint.read_params(str(tmp_path / 'ft')).params
  assert params['head']['kernel'].shape == (32, 10)


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


def test_an_npz_that_does_not_fit_prints_the_overrides_that_would(run_dir,
                                                                  tmp_path):
  # Away from its run (whose config.json would describe it).
  npz = str(tmp_path / 'weights.npz')
  shutil.copy(os.path.join(run_dir, 'params.npz'), npz)
  with pytest.raises(ValueError, match=r'The arrays fit the overrides: '
                     r'hidden_size=32, mlp_dim=64, num_heads=2, num_layers=1, '
                     r'patch_size=4\.') as err:
    pretrained.load(npz, 'ViT-Ti/16')
  assert '\n' not in str(err.value)


def _last_logged(run_dir, key):
  rows = [json.loads(line) for line in open(os.path.join(run_dir,
                                                         'metrics.jsonl'))]
  return [row[key] for row in rows if key in row][-1]


def _digits_test():
  pp = 'resize(16)|value_range(-1, 1)|onehot(10)'
  batch = next(iter(data.build_eval({'data': {'name': 'digits'}, 'pp': pp},
                                    'test', global_batch_size=512)))
  valid = batch['mask'] > 0
  return batch['image'][valid], batch['labels'][valid].argmax(-1)


def test_evaluate_scores_the_weights_the_run_scored(run_dir, tmp_path, caplog):
  """The run logged the top-1 of its Polyak average; evaluate on the workdir
  gives that number exactly, and says which set it read."""
  logged = _last_logged(run_dir, 'val/top1')
  # The trained (not averaged) parameters score otherwise: the two sets are
  # told apart by the number.
  model, _, _ = pretrained.load(run_dir)
  x, y = _digits_test()
  # The readers give the average; the trained set is read by orbax alone.
  raw = jax.device_get(ocp.StandardCheckpointer().restore(
      os.path.join(run_dir, 'checkpoints', '40', 'state'))['params'])
  raw_top1 = float(np.mean(np.asarray(model.apply({'params': raw}, x))
                           .argmax(-1) == y))
  assert len(y) == 300 and raw_top1 != logged
  caplog.set_level(logging.INFO)
  config = evaluate_config.get_config(
      'evals=classify,dataset=digits,batch_size=128')
  results = evaluate_run.evaluate_checkpoint(config, run_dir, str(tmp_path))
  assert results['metrics']['classify']['top1'] == logged
  assert (f'read the Polyak-averaged (EMA {EMA_DECAY}) parameters of step 40 '
          f'from {run_dir}') in caplog.messages


def test_predict_reads_a_runs_params_npz_as_the_run(run_dir, tmp_path, capsys,
                                                    caplog):
  paths = [_digit_png(tmp_path, i)[0] for i in range(1500, 1506)]
  caplog.set_level(logging.INFO)
  outputs = []
  for source in (run_dir, os.path.join(run_dir, 'params.npz')):
    code = predict.main(['--checkpoint', source, '--top_k', '3', *paths])
    out, err = capsys.readouterr()
    assert code == 0, err
    outputs.append(out)
  # params.npz holds the average of the last step: the same probabilities.
  assert outputs[0] == outputs[1] and '  class ' in outputs[0]
  assert (f'read the Polyak-averaged (EMA {EMA_DECAY}) parameters of step 40 '
          f'from {run_dir}/params.npz') in caplog.messages


def test_visualize_predicts_the_classes_predict_does(run_dir, tmp_path,
                                                     capsys):
  paths = [_digit_png(tmp_path, i)[0] for i in range(1500, 1510)]
  assert predict.main(['--checkpoint', run_dir, '--top_k', '1', *paths]) == 0
  lines = capsys.readouterr().out.splitlines()
  predicted = [int(line.split()[-1]) for line in lines[1::2]]  # 'class 7'
  assert len(set(predicted)) >= 4  # A zeroed head says class 0 for all.
  assert visualize_cli.main(['attention', *paths, '--checkpoint', run_dir,
                             '--out', str(tmp_path / 'vis')]) == 0
  attention = json.load(open(tmp_path / 'vis' / 'attention.json'))
  assert [image['predicted_class'] for image in attention['images']] == (
      predicted)


# Folder names of the digits 0, 1 and 7; labels follow the sorted names.
NAMED = {'zero': 0, 'one': 1, 'seven': 7}


@pytest.fixture(scope='module')
def named_run(tmp_path_factory):
  """Three digit classes in named folders, prepared as a TFDS dataset
  (vit_jax.data.prepare) and trained for 30 steps."""
  root = tmp_path_factory.mktemp('named')
  digits = sk_datasets.load_digits()
  for name, digit in NAMED.items():
    os.makedirs(root / 'tree' / name)
    for i in np.flatnonzero(digits.target[:1500] == digit)[:60]:
      pixels = (digits.images[i] * 255 / 16).astype(np.uint8)
      Image.fromarray(pixels).convert('RGB').save(root / 'tree' / name /
                                                  f'{i}.png')
  assert prepare_cli.main([f'--source={root / "tree"}', '--name=named_digits',
                           f'--data_dir={root / "tfds"}',
                           '--num_workers=1']) == 0
  c = quickstart.get_config('steps=30,batch=32')
  c.num_classes = 3
  c.input.data.update(name='named_digits', split='full')
  c.input.data_dir = str(root / 'tfds')
  c.input.pp = 'decode|resize(16)|value_range(-1, 1)|onehot(3)'
  del c.evals['val']
  assert train.train_and_evaluate(c, str(root / 'run')).status == 'done'
  return root


def test_a_prepared_datasets_class_names_reach_predict_and_export(
    named_run, tmp_path, capsys):
  run = str(named_run / 'run')
  names = sorted(NAMED)  # ['one', 'seven', 'zero']: TFDS's label names.
  assert class_names.read_class_names(run) == names
  assert pretrained.describe(run).class_names == names  # evaluate's results.json
  digits = sk_datasets.load_digits()
  held_out = [1500 + int(np.flatnonzero(digits.target[1500:] == d)[0])
              for d in NAMED.values()]
  paths = [_digit_png(tmp_path, i)[0] for i in held_out]
  assert predict.main(['--checkpoint', run, '--top_k', '3', *paths]) == 0
  lines = capsys.readouterr().out.splitlines()
  printed = [line.split()[-1] for line in lines[1::4]]  # each image's top-1
  assert {line.split()[-1] for line in lines if line.startswith('  ')} == (
      set(names))
  # The name of the class the model predicts, not of another index.
  model, params, info = pretrained.load(run)
  x = np.stack([predict.load_image(p, info.image_size) for p in paths])
  top = np.asarray(model.apply({'params': params}, x)).argmax(-1)
  assert printed == [names[i] for i in top] and len(set(printed)) >= 2

  previous = os.umask(0o022)
  try:
    assert export.main(['--checkpoint', run, '--out',
                        str(tmp_path / 'hf')]) == 0
  finally:
    os.umask(previous)
  config = json.loads((tmp_path / 'hf' / 'config.json').read_text())
  assert config['id2label'] == {str(i): n for i, n in enumerate(names)}
  modes = {f: stat.S_IMODE(os.stat(tmp_path / 'hf' / f).st_mode)
           for f in os.listdir(tmp_path / 'hf')}
  assert modes == {'config.json': 0o644, 'model.safetensors': 0o644,
                   'preprocessor_config.json': 0o644}
