"""protocol=final names its learning rate: given, a finished sweep's choice in the workdir, or the recipe's table; VTAB fine-tunes without dropout."""

import json
import logging
import os
import sys

import jax
import numpy as np
import pytest

from vit_jax import checkpoint, models, transfer
from vit_jax.transfer import runs, sweep, vtab

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import finetune, pretrain, quickstart  # pylint: disable=wrong-import-position

#: dev top-1 per rate of the sweep below: 0.03 is the best, and neither the
#: table's 0.01 for digits nor the grid's first rate.
DEV_TOP1 = {0.001: 0.20, 0.003: 0.40, 0.01: 0.50, 0.03: 0.80}


def _fake_dev_run(config, workdir):
  del workdir
  return runs.train.TrainResult(
      'done', config.total_steps, config.total_steps,
      {'dev/top1': DEV_TOP1[config.schedule.base_lr]}, None, 0.01)


def _finished_sweep(workdir: str, dataset: str = 'digits') -> None:
  """A sweep's dev runs (stand-ins) and its sweep_results.json, as
  protocol=sweep leaves them in `workdir` before its final run."""
  config = finetune.get_config(f'dataset={dataset},protocol=sweep,steps=2')
  with runs.RunComposer(workdir, train_fn=_fake_dev_run) as composer:
    sweep.run_sweep(config, workdir, composer)


def test_the_rate_and_its_source(tmp_path):
  given = finetune.get_config('dataset=cifar10,lr=0.03')
  default = finetune.get_config('dataset=cifar10')
  assert default.schedule.base_lr == finetune.DEFAULT_LR['cifar10'] == 0.003
  assert sweep.final_learning_rate(given, str(tmp_path)) == (given, 'given')
  assert sweep.final_learning_rate(default, str(tmp_path))[1] == (
      'table:configs/finetune.py')
  _finished_sweep(str(tmp_path), 'cifar10')
  chosen, source = sweep.final_learning_rate(default, str(tmp_path))
  assert chosen.schedule.base_lr == 0.03 and default.schedule.base_lr == 0.003
  assert source == f'sweep:{tmp_path}/sweep_results.json'
  assert (chosen.sweep.train_split, chosen.sweep.eval_split) == ('', '')
  # A given rate is the given one, sweep or not; dev never reads the sweep.
  assert sweep.final_learning_rate(given, str(tmp_path))[1] == 'given'
  dev = finetune.get_config('dataset=cifar10,protocol=dev')
  assert sweep.final_learning_rate(dev, str(tmp_path)) == (dev, 'given')
  # A sweep on another dataset's dev splits is not this one's.
  pets = finetune.get_config('dataset=oxford_iiit_pet')
  assert sweep.final_learning_rate(pets, str(tmp_path))[1].startswith('table:')


def test_final_protocol_in_a_workdir_with_a_finished_sweep_trains_its_rate(
    tmp_path, caplog):
  """The real run: configs/finetune.py:protocol=final without lr= in a
  workdir whose sweep chose 0.03 trains with 0.03 (the table says 0.01)."""
  pre = tmp_path / 'pre'  # A run's workdir as pretraining leaves it.
  c = quickstart.get_config()
  c.model.update(hidden_size=16, num_layers=1, mlp_dim=32, num_heads=2)
  model, _ = models.build(c.model, 10)
  checkpoint.save_npz(str(pre / 'params.npz'), model.init(
      jax.random.PRNGKey(0), np.zeros((1, 16, 16, 3)), train=False)['params'])
  (pre / 'config.json').write_text(json.dumps(c.to_dict()))

  workdir = str(tmp_path / 'ft')
  _finished_sweep(workdir)
  config = finetune.get_config(
      f'dataset=digits,init={tmp_path / "pre"},steps=2,batch=16')
  assert config.schedule.base_lr == finetune.DEFAULT_LR['digits'] == 0.01
  config.model.dtype = 'float32'
  config.log_every = 1
  config.evals.test.every = 0
  with caplog.at_level(logging.INFO):
    result = transfer.run(config, workdir)
  assert result.status == 'done'
  trained = json.load(open(os.path.join(workdir, 'config.json')))
  assert trained['schedule']['base_lr'] == 0.03
  rows = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  # Cosine from 0.03 after one warm-up step (min(500, 2 // 10) = 0 steps).
  assert rows[0]['learning_rate'] == pytest.approx(0.03)
  assert (f'learning rate 0.03 (lr_source=sweep:{workdir}/'
          f'sweep_results.json).') in [r.getMessage() for r in caplog.records]


def test_vtab_of_a_pretraining_run_fine_tunes_without_dropout():
  """The ImageNet-21k pretraining recipe trains with dropout 0.1; VTAB's
  task runs from its workdir (its `model` section) have none."""
  config = pretrain.get_config('model=B/16,dataset=imagenet21k')
  assert config.model.dropout_rate == 0.1
  config.vtab.update(mode='paper', tasks='cifar100')
  runner = vtab.runner_from_config(config.vtab, config.model,
                                   base_config=config)
  task = runner.tasks[0]
  child = runner.task_config(task, init_from='/runs/pretrain',
                             train_split='train[:800]',
                             eval_split='test', learning_rate=0.01,
                             decay_type='cosine')
  assert child.model.dropout_rate == 0.0
  assert child.model.attention_dropout_rate == 0.0
  assert child.model.hidden_size is None and child.model.name == 'ViT-B/16'
  assert child.seed == 0
  assert vtab.VtabRunner(runner.protocol, config.model, tasks=('cifar100',),
                         seed=2).task_config(
                             task, init_from='/x', train_split='train',
                             eval_split='test', learning_rate=0.01,
                             decay_type='cosine').seed == 2
