"""The Table 2 column command (vit_jax.transfer.table): seeds, mean ± sample std, SIGTERM and resume, core-hours, the paper's column, missing data."""

import json
import os
import signal
import subprocess
import sys
import time
import types

import jax
import numpy as np
import pytest

from vit_jax import checkpoint, models, pretrained
from vit_jax.transfer import paper_table2, table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import finetune, quickstart  # pylint: disable=wrong-import-position

TINY = dict(hidden_size=16, num_layers=1, mlp_dim=32, num_heads=2)
#: The pretraining run's logged core-hours (-> 0.5 / 24 core-days).
PRETRAIN_CORE_HOURS = 0.5
#: Few steps of a tiny model at 16 px, float32, logged every step.
OVERRIDES = ['model.dtype=float32', 'log_every=1', 'evals.test.every=0']


@pytest.fixture(scope='module')
def pretrained_run(tmp_path_factory):
  """A run's workdir as pretraining leaves it: config.json, params.npz and a
  metrics.jsonl whose last row counts its core-hours (random parameters:
  the table only needs something to fine-tune)."""
  workdir = tmp_path_factory.mktemp('pretrained')
  c = quickstart.get_config('steps=8')
  c.model.update(TINY, dropout_rate=0.1)
  model, _ = models.build(c.model, 10)
  params = model.init(jax.random.PRNGKey(0), np.zeros((1, 16, 16, 3)),
                      train=False)['params']
  checkpoint.save_npz(str(workdir / 'params.npz'), params)
  (workdir / 'config.json').write_text(json.dumps(c.to_dict()))
  (workdir / 'metrics.jsonl').write_text(
      json.dumps({'step': 4, 'core_hours': 0.2}) + '\n' +
      json.dumps({'step': 8, 'core_hours': PRETRAIN_CORE_HOURS}) + '\n')
  return str(workdir)


def _command(checkpoint_path, workdir, seeds=3, steps=40):
  return [sys.executable, '-m', 'vit_jax.transfer.table',
          f'--checkpoint={checkpoint_path}', f'--workdir={workdir}',
          '--rows=digits', f'--seeds={seeds}',
          f'--config_args=steps={steps},batch=32'] + [
              f'--override={o}' for o in OVERRIDES]


def test_three_seeds_sigterm_in_the_second_and_a_rerun_that_finishes(
    pretrained_run, tmp_path):
  """The real command: SIGTERM while seed 1 trains exits 0 with seed 0 done;
  the rerun trains seed 1 (resumed) and seed 2 only; the column is numpy's
  mean and sample std of the three runs' recorded top-1."""
  workdir = tmp_path / 'table'
  args = _command(pretrained_run, workdir)
  proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  second = workdir / 'digits' / 'seed1' / 'metrics.jsonl'
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if second.exists() and second.stat().st_size > 0:
      proc.send_signal(signal.SIGTERM)
      break
    time.sleep(0.02)
  out, _ = proc.communicate(timeout=240)
  assert proc.returncode == 0, out
  assert 'Stopped early (table digits seed 1: preempted)' in out
  seed0 = workdir / 'digits' / 'seed0'
  assert (seed0 / 'result.json').exists()
  assert not (workdir / 'digits' / 'seed1' / 'result.json').exists()
  assert not (workdir / 'digits' / 'seed2').exists()
  first = json.loads((workdir / 'table2.json').read_text())
  assert first['rows']['digits']['seeds_done'] == 1
  seed0_rows = (seed0 / 'metrics.jsonl').read_text()

  done = subprocess.run(args, cwd=ROOT, capture_output=True,
                        text=True, timeout=240)
  assert done.returncode == 0, done.stdout + done.stderr
  assert f'table digits seed 0: finished earlier in {seed0}' in done.stderr
  assert 'table digits seed 0: training' not in done.stderr
  assert (seed0 / 'metrics.jsonl').read_text() == seed0_rows  # Not rerun.
  resumed = [json.loads(l)['step'] for l in open(
      workdir / 'digits' / 'seed1' / 'metrics.jsonl')]
  assert resumed == list(range(1, 41))  # Resumed, no step twice.

  result = json.loads((workdir / 'table2.json').read_text())
  row = result['rows']['digits']
  runs = [workdir / 'digits' / f'seed{k}' for k in range(3)]
  assert row['runs'] == [str(r) for r in runs]
  assert [json.loads((r / 'config.json').read_text())['seed']
          for r in runs] == [0, 1, 2]
  top1 = [100 * json.loads((r / 'result.json').read_text())['metrics'][
      'test/top1'] for r in runs]
  line = row['lines']['digits']
  assert line['values'] == top1 and len(set(top1)) > 1  # Seeds differ.
  assert line['mean'] == pytest.approx(np.mean(top1), abs=1e-12)
  assert line['std'] == pytest.approx(np.std(top1, ddof=1), abs=1e-12)
  assert f'{np.mean(top1):.2f} ± {np.std(top1, ddof=1):.2f}' in done.stdout
  # Every run's core-hours (the preempted session's too) are in the row, and
  # the rows make the total.
  account = json.loads((workdir / 'transfer_account.json').read_text())
  assert sorted(account) == [f'digits/seed{k}' for k in range(3)]
  assert row['core_hours'] == pytest.approx(sum(account.values()))
  assert result['core_hours'] == pytest.approx(row['core_hours'])
  assert row['core_hours'] > 0
  assert result['pretraining_core_days'] == pytest.approx(
      PRETRAIN_CORE_HOURS / 24)
  # The rate: the recipe's default for digits, and where it came from.
  assert row['learning_rates'] == [finetune.DEFAULT_LR['digits']]
  assert row['lr_sources'] == ['table:configs/finetune.py']
  assert json.loads((runs[2] / 'result.json').read_text())['lr_source'] == (
      'table:configs/finetune.py')


class FakeTrain:
  """train_and_evaluate's stand-in: top-1 by (row, seed), fixed core-hours."""

  TOP1 = {('digits', 0): 0.50, ('digits', 1): 0.60, ('digits', 2): 0.75,
          ('other', 0): 0.20, ('other', 1): 0.10, ('other', 2): 0.40}
  HOURS = {'digits': 0.25, 'other': 0.5}

  def __init__(self):
    self.calls = []

  def __call__(self, config, workdir):
    self.calls.append((config, workdir))
    row = os.path.basename(os.path.dirname(workdir))
    return types.SimpleNamespace(
        status='done', step=config.total_steps,
        eval_metrics={'test/top1': self.TOP1[(row, config.seed)]},
        core_hours=self.HOURS[row])


def test_rows_core_hours_add_up_and_the_paper_column_stands_beside(
    pretrained_run, tmp_path, monkeypatch):
  table.register_row(table.Row('other', 'digits', (
      table.Line('cifar10', 'CIFAR-10 (test row)', 'test/top1'),), paper=False))
  monkeypatch.setattr(paper_table2, 'column_of',
                      lambda path: 'ViT-L/16 (ImageNet-21k)')
  train = FakeTrain()
  result = table.Table(
      pretrained_run, str(tmp_path), rows=table.select_rows('digits,other'),
      config_module=finetune, rates={'other': 0.003}, train_fn=train,
      config_args='steps=2,batch=32').run()
  assert len(train.calls) == 6 and len({w for _, w in train.calls}) == 6
  rows = result['rows']
  assert rows['digits']['core_hours'] == pytest.approx(0.75)
  assert rows['other']['core_hours'] == pytest.approx(1.5)
  assert result['core_hours'] == pytest.approx(2.25)
  other = rows['other']['lines']['cifar10']
  assert other['mean'] == pytest.approx(100 * np.mean([0.2, 0.1, 0.4]))
  assert other['std'] == pytest.approx(100 * np.std([0.2, 0.1, 0.4], ddof=1))
  assert rows['other']['lr_sources'] == ['given']
  assert rows['other']['learning_rates'] == [0.003]
  md = (tmp_path / table.MARKDOWN).read_text()
  assert '| CIFAR-10 (test row) | 23.33 ± 15.28 | 3/3 | 1.5 | 0.003 (given) ' \
         '| 99.15 ± 0.03 |' in md
  assert '| pretraining core-days | 0.0208 |' in md
  assert md.rstrip().endswith('| 0.23k |')
  # A rerun reads everything back and trains nothing.
  again = table.Table(
      pretrained_run, str(tmp_path), rows=table.select_rows('digits,other'),
      config_module=finetune, rates={'other': 0.003}, train_fn=train,
      config_args='steps=2,batch=32').run()
  assert len(train.calls) == 6 and again['rows'] == result['rows']
  table.ROWS.pop('other')


def test_the_compute_cap_covers_the_whole_table(pretrained_run, tmp_path):
  """0.25 core-hours a run, a cap of 0.4: the third run has nothing left."""
  train = FakeTrain()
  result = table.Table(pretrained_run, str(tmp_path),
                       rows=table.select_rows('digits'), config_module=finetune,
                       max_core_hours=0.4, train_fn=train).run()
  assert len(train.calls) == 2
  assert result['stopped'] == {'where': 'table digits seed 2',
                               'status': 'budget_exhausted'}
  assert result['rows']['digits']['seeds_done'] == 2
  assert result['core_hours'] == pytest.approx(0.5)
  assert 'Stopped early (table digits seed 2: budget_exhausted)' in (
      tmp_path / table.MARKDOWN).read_text()


def test_imagenet_runs_score_top1_and_real_from_one_evaluator(
    pretrained_run, tmp_path):
  t = table.Table(pretrained_run, str(tmp_path),
                  rows=table.select_rows('imagenet2012'),
                  config_module=finetune, seeds=3)
  config, source = t.row_config(table.ROWS['imagenet2012'], seed=2)
  assert list(config.evals) == ['test'] and config.evals.test.type == 'real'
  assert config.seed == 2 and config.total_steps == 20_000
  assert config.image_size == 384 and config.init_from == pretrained_run
  assert (config.schedule.base_lr, source) == (
      finetune.DEFAULT_LR['imagenet2012'], 'table:configs/finetune.py')
  assert [l.metric for l in table.ROWS['imagenet2012'].lines] == [
      'test/top1', 'test/real_top1']
  assert config.ema_decay is None  # Polyak averaging: Table 2's L/16 and H/14 only.


@pytest.mark.parametrize('name,size', [('ViT-L/16', 512), ('ViT-H/14', 518)])
def test_imagenet_of_l16_and_h14_fine_tunes_as_table_2_did(pretrained_run, tmp_path,
                                                           name, size):
  """Table 2's ImageNet column: 512 / 518 px and Polyak averaging 0.9999; the
  other rows 384 px without it; a size or decay given on the command line wins."""
  def table_for(**kwargs):
    t = table.Table(pretrained_run, str(tmp_path), rows=table.select_rows('imagenet2012,cifar10'),
                    config_module=finetune, seeds=1, **kwargs)
    t._described = pretrained.Described(  # pylint: disable=protected-access
        source=pretrained_run, model={'name': name}, num_classes=None, image_size=224)
    return t
  imagenet, _ = table_for().row_config(table.ROWS['imagenet2012'], seed=0)
  assert (imagenet.image_size, imagenet.ema_decay) == (size, 0.9999)
  cifar, _ = table_for().row_config(table.ROWS['cifar10'], seed=0)
  assert (cifar.image_size, cifar.ema_decay) == (384, None)
  chosen, _ = table_for(config_args='image_size=448',
                        overrides={'ema_decay': 0.999}).row_config(
                            table.ROWS['imagenet2012'], seed=0)
  assert (chosen.image_size, chosen.ema_decay) == (448, 0.999)


def test_paper_numbers_and_released_names():
  assert paper_table2.column_of('gs://vit_models/imagenet21k/ViT-L_16.npz') == (
      'ViT-L/16 (ImageNet-21k)')
  # The paper's H/14 is JFT-300M-pretrained; the released one is not it.
  assert paper_table2.column_of('/ckpt/ViT-H_14.npz') is None
  assert paper_table2.column_of(
      'gs://vit_models/imagenet21k+imagenet2012/ViT-L_16.npz') is None
  h14 = paper_table2.COLUMNS['ViT-H/14 (JFT-300M)']
  assert (h14['imagenet'], h14['vtab'], h14['core_days']) == (
      (88.55, 0.04), (77.63, 0.23), 2500)
  assert [r.name for r in table.select_rows('all')] == [
      'imagenet2012', 'cifar10', 'cifar100', 'oxford_iiit_pet',
      'oxford_flowers102', 'vtab']
  with pytest.raises(ValueError, match='unknown table rows cifar11'):
    table.select_rows('cifar10,cifar11')


def test_unprepared_data_is_listed_before_anything_trains(pretrained_run,
                                                          tmp_path):
  def train_fn(config, workdir):
    raise AssertionError(f'trained {workdir}')
  t = table.Table(pretrained_run, str(tmp_path / 'w'),
                  rows=table.select_rows('digits,cifar10,cifar100'),
                  config_module=finetune, data_dir=str(tmp_path / 'tfds'),
                  train_fn=train_fn)
  with pytest.raises(FileNotFoundError,
                     match=r'^2 of 3 table rows have no prepared data: '
                     r'cifar10: .*tfds build cifar10.* \| cifar100: .*'
                     r'Prepare them, or leave them out with --rows.$'):
    t.run()
  assert not os.path.exists(tmp_path / 'w' / 'digits')


def test_vtab_row_runs_the_paper_protocol_once_per_seed(pretrained_run,
                                                        tmp_path,
                                                        monkeypatch):
  """Each seed is a VTAB-1k (here two tasks) in W/vtab/seed<k>/; the row is
  the mean over seeds of each seed's task mean, without dropout."""
  monkeypatch.setattr(table.vtab_tasks, 'missing_tasks',
                      lambda tasks, data_dir=None: {})
  monkeypatch.setattr(
      table.vtab_tasks, 'split_sizes',
      lambda task, data_dir=None: {'train': 5000, 'validation': 500,
                                   'test': 500})
  top1 = {('cifar100', 0): 0.3, ('dtd', 0): 0.5, ('cifar100', 1): 0.4,
          ('dtd', 1): 0.8}
  calls = []

  def train_fn(config, workdir):
    calls.append(config)
    task = os.path.basename(os.path.dirname(workdir))
    return types.SimpleNamespace(
        status='done', step=config.total_steps, core_hours=0.125,
        eval_metrics={'eval/top1': top1[(task, config.seed)]})

  result = table.Table(
      pretrained_run, str(tmp_path), rows=table.select_rows('vtab'),
      config_module=finetune, seeds=2, train_fn=train_fn,
      vtab_config={'tasks': 'cifar100+dtd'}).run()
  assert len(calls) == 4 and {c.seed for c in calls} == {0, 1}
  assert all(c.model.dropout_rate == 0.0 and c.total_steps == 2500 and
             c.image_size == 384 and c.schedule.base_lr == 0.01
             for c in calls)  # The pretraining run had dropout 0.1.
  row = result['rows']['vtab']
  means = [100 * (0.3 + 0.5) / 2, 100 * (0.4 + 0.8) / 2]
  assert row['lines']['vtab']['values'] == pytest.approx(means)
  assert row['lines']['vtab']['std'] == pytest.approx(np.std(means, ddof=1))
  assert row['core_hours'] == pytest.approx(0.5) == result['core_hours']
  assert row['lr_sources'] == ['vtab.py:paper']
  assert os.path.exists(tmp_path / 'vtab' / 'seed1' / 'dtd' / 'final' /
                        'result.json')
