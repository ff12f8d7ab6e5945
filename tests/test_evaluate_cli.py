"""End to end: `python -m vit_jax.evaluate` on a small .npz checkpoint."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from vit_jax import checkpoint, data
from vit_jax.evaluate import ridge
from vit_jax.models import get_model

import cpu_devices

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PP = 'resize(16)|value_range(-1, 1)|onehot(10)'
ARCH = dict(hidden_size=32, num_layers=2, mlp_dim=64, num_heads=2,
            patch_size=4, representation_size=24)


def _digits(split):
  batch = next(iter(data.build_eval({'data': {'name': 'digits'}, 'pp': PP},
                                    split, global_batch_size=2000)))
  valid = batch['mask'] > 0
  return batch['image'][valid], batch['labels'][valid].argmax(-1)


@pytest.fixture(scope='module')
def probe_checkpoint(tmp_path_factory):
  """A random tiny ViT whose head is a ridge probe fitted on digits: its
  top-1 is far from chance only if the head is loaded as saved."""
  arch = {**ARCH, 'patch_size': (4, 4)}
  model = get_model('ViT-Ti/16', 10, **arch)
  params = jax.jit(model.init)(jax.random.key(0),
                               np.zeros((1, 16, 16, 3), np.float32))['params']
  features = jax.jit(lambda p, x: model.apply({'params': p}, x,
                                              return_prelogits=True))
  x, y = _digits('train')
  f = np.asarray(features(params, x), np.float64)
  mean, std = f.mean(0), np.where(f.std(0) > 1e-8, f.std(0), 1.0)
  (train,) = ridge.standardize(f)
  w = ridge.fit_ridge(train, ridge.one_vs_rest_targets(y, 10), 1.0)
  params = jax.tree.map(np.asarray, params)
  params['head'] = {'kernel': (w[:-1] / std[:, None]).astype(np.float32),
                    'bias': (w[-1] - (mean / std) @ w[:-1]).astype(np.float32)}
  x_test, y_test = _digits('test')
  logits = jax.jit(model.apply)({'params': params}, x_test)
  top1 = float(np.mean(np.asarray(logits).argmax(-1) == y_test))
  path = str(tmp_path_factory.mktemp('ckpt') / 'tiny.npz')
  checkpoint.save_npz(path, params)
  return path, top1


def _cli(*args):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu',
         'XLA_FLAGS': cpu_devices.xla_flags(8)}
  return subprocess.run([sys.executable, '-m', 'vit_jax.evaluate', *args],
                        cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=300)


def test_evaluate_cli_on_a_small_checkpoint(probe_checkpoint, tmp_path):
  path, top1 = probe_checkpoint
  assert top1 > 0.5  # The probe head works (chance is 0.1).
  overrides = [f'--config.model.{k}={v}' for k, v in ARCH.items()
               if k != 'representation_size']
  out = _cli('--config=configs/evaluate.py:evals=classify+fewshot,'
             'dataset=digits,fewshot=digits,image_size=16,batch_size=64,'
             'shots=5+25,seeds=2',
             '--config.model.name=ViT-Ti/16', *overrides,
             f'--checkpoint={path}', f'--workdir={tmp_path}')
  assert out.returncode == 0, out.stderr[-3000:]
  # An evaluation trains nothing: no (empty) checkpoints/ in its workdir.
  assert sorted(os.listdir(tmp_path)) == ['results.json']
  results = json.loads((tmp_path / 'results.json').read_text())
  assert results['num_classes'] == 10 and results['image_size'] == 16
  metrics = results['metrics']
  assert metrics['classify']['top1'] == pytest.approx(top1)
  assert metrics['classify']['num_examples'] == 300
  assert metrics['fewshot']['digits_25shot'] > 0.3  # l2 fixed at 2^10
  assert set(metrics['fewshot']) == {f'digits_{k}shot{s}' for k in (5, 25)
                                     for s in ('', '_std')}
  assert 'classify   top1' in out.stdout
  assert f'{100 * top1:.2f}' in out.stdout


def test_evaluate_cli_errors_are_one_line(tmp_path):
  out = _cli('--config=configs/evaluate.py:evals=fewshot,fewshot=digits',
             f'--checkpoint={tmp_path}/missing.npz', f'--workdir={tmp_path}')
  assert out.returncode == 2
  assert out.stderr.strip().splitlines()[-1] == (
      f'error: checkpoint file not found: {tmp_path}/missing.npz')
  bad = _cli('--config=configs/evaluate.py:evals=fewshot+top1',
             f'--checkpoint={tmp_path}/missing.npz', f'--workdir={tmp_path}')
  assert bad.returncode == 2
  assert bad.stderr.strip() == ("error: evals='fewshot+top1': choose from "
                                'classify+real+fewshot+vtab.')
