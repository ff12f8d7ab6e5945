"""The VTAB-1k runner: the paper's protocol, the selection modes, BiT's preprocessing, resuming."""

import json
import os
import types

import pytest

from vit_jax.data import vtab_tasks
from vit_jax.transfer import runs, vtab

SIZES = {'cifar100': {'train': 50000, 'test': 10000},
         'eurosat': {'train': 27000},
         'dmlab': {'train': 65550, 'validation': 22628, 'test': 22735}}
MODEL = {'name': 'ViT-Ti/16', 'hidden_size': 32, 'num_layers': 2,
         'mlp_dim': 64, 'num_heads': 2, 'patch_size': 4,
         'representation_size': 16}
#: val200 accuracy per (task, lr, schedule): each task prefers another
#: setting, and lr 0.03/linear has the best mean.
VAL = {('cifar100', 0.01, 'cosine'): 0.50, ('cifar100', 0.01, 'linear'): 0.40,
       ('cifar100', 0.03, 'cosine'): 0.30, ('cifar100', 0.03, 'linear'): 0.45,
       ('eurosat', 0.01, 'cosine'): 0.20, ('eurosat', 0.01, 'linear'): 0.60,
       ('eurosat', 0.03, 'cosine'): 0.30, ('eurosat', 0.03, 'linear'): 0.55,
       ('dmlab', 0.01, 'cosine'): 0.10, ('dmlab', 0.01, 'linear'): 0.20,
       ('dmlab', 0.03, 'cosine'): 0.70, ('dmlab', 0.03, 'linear'): 0.60}


class FakeTrain:
  """Stands in for train_and_evaluate: accuracy is a function of the run."""

  def __init__(self, fail_after=None):
    self.calls = []
    self.fail_after = fail_after

  def __call__(self, config, workdir):
    if self.fail_after is not None and len(self.calls) >= self.fail_after:
      raise KeyboardInterrupt('killed')
    self.calls.append((config, workdir))
    task = os.path.basename(os.path.dirname(workdir))
    key = (task, config.schedule.base_lr, config.schedule.decay_type)
    final = '+' in config.input.data.split  # train800val200 -> test.
    top1 = VAL[key] + (0.2 if final else 0.0)
    return types.SimpleNamespace(status='done', eval_metrics={'eval/top1': top1},
                                 core_hours=0.5, step=config.total_steps)


def _run(train, tmp_path, mode='paper', tasks=('cifar100', 'eurosat', 'dmlab'),
         **overrides):
  runner = vtab.VtabRunner(vtab.protocol_from_config({'mode': mode, **overrides}),
                           MODEL, tasks=tasks,
                           split_sizes=lambda t: SIZES[t.name])
  with runs.RunComposer(str(tmp_path), train_fn=train) as composer:
    return runner.run('/ckpt/init.npz', str(tmp_path), composer, missing={})


def test_paper_protocol_is_one_setting_on_1000_examples(tmp_path):
  train = FakeTrain()
  table = _run(train, tmp_path)
  assert len(train.calls) == 3  # One final run per task, no sweep.
  for c, w in train.calls:
    assert w.endswith('/final')
    assert (c.schedule.base_lr, c.schedule.decay_type) == (0.01, 'cosine')
    assert (c.optim.name, c.optim.momentum, c.optim.grad_clip_norm,
            c.optim.weight_decay) == ('sgd', 0.9, 1.0, 0.0)
    assert (c.batch_size, c.image_size, c.total_steps) == (512, 384, 2500)
    assert c.init_from == '/ckpt/init.npz'
    assert c.model.hidden_size == 32 and c.model.name == 'ViT-Ti/16'
    assert c.model.representation_size is None  # Replaced by the new head.
  cifar = [c for c, w in train.calls if '/cifar100/' in w][0]
  assert cifar.input.data.split == 'train[0:800]+train[45000:45200]'
  assert cifar.evals.eval.split == 'test' and cifar.num_classes == 100
  assert table['summary']['cifar100'] == pytest.approx(0.7)
  assert table['summary']['mean'] == pytest.approx((0.7 + 0.4 + 0.3) / 3)
  md = (tmp_path / 'vtab_results.md').read_text()
  assert 'mode `paper`' in md and 'paper Table 2 / Table 9' in md
  assert '| cifar100 | natural | 70.0 | 0.01 | cosine |' in md
  assert '**natural** (1/1 tasks)' in md and '**mean** (3/3 tasks)' in md
  assert '| caltech101 |' not in md  # Only the requested tasks are listed.
  on_disk = json.loads((tmp_path / 'vtab_results.json').read_text())
  assert on_disk['summary'] == table['summary']
  assert on_disk['protocol']['mode'] == 'paper'


def test_paper_select_chooses_one_setting_by_the_mean_val200(tmp_path):
  train = FakeTrain()
  table = _run(train, tmp_path, mode='paper_select')
  assert len(train.calls) == 3 * 4 + 3
  sweeps = [c for c, w in train.calls if '/sweep_' in w]
  assert {c.input.data.split for c in sweeps} == {'train[0:800]'}
  assert {c.evals.eval.split for c in sweeps} == {
      'train[45000:45200]', 'train[16200:16400]', 'validation[0:200]'}
  finals = [c for c, w in train.calls if w.endswith('/final')]
  # Means: 0.01/cos 0.267, 0.01/lin 0.40, 0.03/cos 0.433, 0.03/lin 0.533.
  assert {(c.schedule.base_lr, c.schedule.decay_type) for c in finals} == {
      (0.03, 'linear')}
  assert table['summary']['mean'] == pytest.approx((0.65 + 0.75 + 0.8) / 3)
  assert table['tasks']['dmlab']['val200']['lr0.03_cosine'] == pytest.approx(0.7)


def test_per_task_selection_is_named_and_keeps_each_best(tmp_path):
  train = FakeTrain()
  table = _run(train, tmp_path, mode='per_task')
  best = {t: (r['learning_rate'], r['decay_type'])
          for t, r in table['tasks'].items()}
  assert best == {'cifar100': (0.01, 'cosine'), 'eurosat': (0.01, 'linear'),
                  'dmlab': (0.03, 'cosine')}
  # Each task's best: higher than the shared choice, so not comparable.
  assert table['summary']['mean'] == pytest.approx((0.7 + 0.8 + 0.9) / 3)
  assert 'not the paper' in table['comparable_with']
  assert 'mode `per_task`' in (tmp_path / 'vtab_results.md').read_text()


def test_quick_mode_trains_once_per_task(tmp_path):
  train = FakeTrain()
  _run(train, tmp_path, mode='quick')
  assert len(train.calls) == 3
  config = train.calls[0][0]
  assert (config.total_steps, config.image_size) == (500, 224)
  assert config.input.data.split.count('+') == 1  # train800val200.


def test_bit_preprocessing_with_its_exceptions():
  assert vtab.train_pp('cifar100', 384, 100) == (
      'decode|vtab_label("cifar100")|resize(448)|random_crop(384)|flip_lr|'
      'value_range(-1, 1)|onehot(100)')
  assert vtab.eval_pp('cifar100', 384, 100) == (
      'decode|vtab_label("cifar100")|resize(384)|value_range(-1, 1)|'
      'onehot(100)')
  assert 'flip_lr' not in vtab.train_pp('smallnorb_azimuth', 384, 18)
  assert 'random_crop' in vtab.train_pp('smallnorb_azimuth', 384, 18)
  clevr = vtab.train_pp('clevr_count', 384, 8)
  assert 'random_crop' not in clevr and 'resize(384)' in clevr
  assert 'flip_lr' in clevr
  location = vtab.train_pp('dsprites_location', 384, 16)
  assert 'random_crop' not in location and 'flip_lr' not in location


def test_resumes_without_redoing_finished_runs(tmp_path):
  killed = FakeTrain(fail_after=7)  # Dies inside the shared sweep.
  with pytest.raises(KeyboardInterrupt):
    _run(killed, tmp_path, mode='paper_select')
  resumed = FakeTrain()
  table = _run(resumed, tmp_path, mode='paper_select')
  assert len(resumed.calls) == 15 - 7
  assert table['summary']['num_tasks'] == 3
  again = FakeTrain(fail_after=0)
  assert _run(again, tmp_path, mode='paper_select') == table
  account = json.loads((tmp_path / runs.ACCOUNT).read_text())
  assert len(account) == 15 and sum(account.values()) == pytest.approx(7.5)


def test_a_preempted_task_stops_the_sweep_and_resumes(tmp_path):
  calls = []

  def preempted_second(config, workdir):
    calls.append(workdir)
    status = 'preempted' if len(calls) == 2 else 'done'
    return types.SimpleNamespace(status=status, eval_metrics={'eval/top1': 0.5},
                                 core_hours=0.25, step=10)
  with pytest.raises(runs.Stopped) as stop:
    _run(preempted_second, tmp_path)
  assert stop.value.status == 'preempted' and 'eurosat' in stop.value.where
  table = _run(FakeTrain(), tmp_path)
  assert table['summary']['num_tasks'] == 3


def test_missing_datasets_are_listed_before_any_training(tmp_path):
  train = FakeTrain(fail_after=0)
  runner = vtab.VtabRunner(vtab.protocol_from_config({}), MODEL,
                           data_dir=str(tmp_path))
  with runs.RunComposer(str(tmp_path), train_fn=train) as composer:
    with pytest.raises(FileNotFoundError) as err:
      runner.run('/i.npz', str(tmp_path / 'out'), composer)
  message = str(err.value)
  assert message.startswith('VTAB: 19 of 19 datasets are not prepared')
  assert f'svhn_cropped: tfds build svhn_cropped --data_dir={tmp_path}' in message
  assert '\n' not in message
  skipping = vtab.VtabRunner(vtab.protocol_from_config({}), MODEL,
                             data_dir=str(tmp_path), skip_missing=True)
  with runs.RunComposer(str(tmp_path), train_fn=train) as composer:
    table = skipping.run('/i.npz', str(tmp_path / 'out'), composer)
  assert table['summary'] == {'num_tasks': 0.0}
  assert '| dmlab | structured | - |' in (tmp_path / 'out' / 'vtab_results.md').read_text()


def test_protocol_config_errors():
  with pytest.raises(ValueError, match="VTAB mode 'fast' is unknown"):
    vtab.protocol_from_config({'mode': 'fast'})
  p = vtab.protocol_from_config({'mode': 'quick', 'steps': 50,
                                 'learning_rates': [0.1, 0.2]})
  assert p.steps == 50 and p.settings == [(0.1, 'cosine'), (0.2, 'cosine')]
  assert vtab.protocol_from_config({}).mode == 'paper'
  with pytest.raises(ValueError, match='unknown VTAB task'):
    vtab.VtabRunner(p, MODEL, tasks=('imagenet',))
  assert len(vtab_tasks.TASKS) == 19
  assert vtab_tasks.task_names('structured+dtd')[-1] == 'dtd'
  assert len(vtab_tasks.task_names('all')) == 19


def test_a_sweep_run_through_the_training_loop_on_mock_data(tmp_path):
  """The task config is one the real training loop and data pipeline accept:
  VTAB labels and grey-to-RGB inside tf.data, SGD, eval on val200."""
  tfds = pytest.importorskip('tensorflow_datasets')
  protocol = vtab.protocol_from_config({
      'mode': 'paper', 'steps': 2, 'image_size': 16, 'batch_size': 16,
      'eval_batch_size': 16, 'warmup_steps': 1})
  runner = vtab.VtabRunner(protocol, MODEL, tasks=('smallnorb_elevation',))
  task = runner.tasks[0]
  splits = task.splits({'train': 1000, 'test': 1000})
  config = runner.task_config(task, init_from=None,
                              train_split=splits['train800'],
                              eval_split=splits['val200'], learning_rate=0.01,
                              decay_type='cosine')
  workdir = str(tmp_path / 'run')
  # 48 mock examples per split: the 800/200 slices clamp to them.
  with tfds.testing.mock_data(num_examples=48):
    with runs.RunComposer(str(tmp_path)) as composer:
      top1 = runner._train(composer, config, workdir, 'smallnorb')  # pylint: disable=protected-access
  result = json.loads((tmp_path / 'run' / 'result.json').read_text())
  assert result['metrics']['eval/top1'] == top1 and 0 <= top1 <= 1
  assert config.evals.eval.split == 'test[0:200]'
  assert 'random_crop(16)' in config.input.pp  # BiT: 448/384 resize, crop.
  assert not os.path.exists(os.path.join(workdir, 'checkpoints'))
  metrics = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert metrics[-1]['step'] == 2
  assert metrics[-1]['eval/num_examples'] == 48
