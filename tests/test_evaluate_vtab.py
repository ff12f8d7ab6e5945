"""The VTAB-1k runner: sweep on val200, final on 1,000, table, resuming."""

import json
import os
import types

import pytest

from vit_jax.evaluate import vtab, vtab_tasks

SIZES = {'cifar100': {'train': 50000, 'test': 10000},
         'eurosat': {'train': 27000},
         'dmlab': {'train': 65550, 'validation': 22628, 'test': 22735}}
MODEL = {'name': 'ViT-Ti/16', 'hidden_size': 32, 'num_layers': 2,
         'mlp_dim': 64, 'num_heads': 2, 'patch_size': 4,
         'representation_size': 16}


class FakeTrain:
  """Stands in for train_and_evaluate: accuracy is a function of the run."""

  def __init__(self, fail_after=None):
    self.calls = []
    self.fail_after = fail_after

  def __call__(self, config, workdir):
    if self.fail_after is not None and len(self.calls) >= self.fail_after:
      raise KeyboardInterrupt('killed')
    self.calls.append((config, workdir))
    lr = config.schedule.base_lr
    bonus = {0.01: 0.1, 0.03: 0.2}[lr] + (
        0.05 if config.schedule.decay_type == 'linear' else 0.0)
    final = '+' in config.input.data.split  # train800val200 -> test.
    top1 = (0.5 if final else 0.3) + bonus
    return types.SimpleNamespace(status='done', eval_metrics={'eval/top1': top1})


def _runner(train, mode='full', tasks=('cifar100', 'eurosat', 'dmlab')):
  return vtab.VtabRunner(vtab.protocol_from_config({'mode': mode}), MODEL,
                         tasks=tasks, train_fn=train,
                         split_sizes=lambda t: SIZES[t.name])


def test_full_protocol_sweeps_then_trains_on_1000(tmp_path):
  train = FakeTrain()
  table = _runner(train).run('/ckpt/init.npz', str(tmp_path), missing={})
  # 3 tasks x (4 sweep runs + 1 final).
  assert len(train.calls) == 15
  sweeps = [c for c, w in train.calls if '/sweep_' in w]
  finals = [(c, w) for c, w in train.calls if w.endswith('/final')]
  assert {c.input.data.split for c in sweeps} == {
      'train[0:800]'}, 'every sweep run trains on train800'
  assert {c.evals.eval.split for c in sweeps} == {
      'train[45000:45200]', 'train[16200:16400]', 'validation[0:200]'}
  cifar_final = [c for c, w in finals if '/cifar100/' in w][0]
  assert cifar_final.input.data.split == 'train[0:800]+train[45000:45200]'
  assert cifar_final.evals.eval.split == 'test'
  # The best val200 setting (lr 0.03, linear) is the one trained on 1,000.
  assert (cifar_final.schedule.base_lr, cifar_final.schedule.decay_type) == (
      0.03, 'linear')
  c = cifar_final
  assert (c.optim.name, c.optim.momentum, c.optim.grad_clip_norm,
          c.optim.weight_decay) == ('sgd', 0.9, 1.0, 0.0)
  assert (c.batch_size, c.image_size, c.total_steps) == (512, 384, 2500)
  assert c.init_from == '/ckpt/init.npz' and c.num_classes == 100
  assert 'vtab_label("cifar100")' in c.input.pp and 'onehot(100)' in c.input.pp
  assert c.model.hidden_size == 32 and c.model.name == 'ViT-Ti/16'
  assert c.model.representation_size is None  # Replaced by the new head.
  summary = table['summary']
  assert summary['cifar100'] == pytest.approx(0.75)
  assert summary['natural'] == pytest.approx(0.75)
  assert summary['mean'] == pytest.approx(0.75) and summary['num_tasks'] == 3
  assert table['tasks']['dmlab']['val200']['lr0.03_linear'] == pytest.approx(0.55)
  on_disk = json.loads((tmp_path / 'vtab_results.json').read_text())
  assert on_disk['summary'] == table['summary']
  md = (tmp_path / 'vtab_results.md').read_text()
  assert '| cifar100 | natural | 75.0 | 0.03 | linear |' in md
  assert '| caltech101 |' not in md  # Only the requested tasks are listed.
  assert '**natural** (1/1 tasks)' in md and '**mean** (3/3 tasks)' in md


def test_quick_mode_trains_once_per_task(tmp_path):
  train = FakeTrain()
  table = _runner(train, mode='quick').run('/i.npz', str(tmp_path), missing={})
  assert len(train.calls) == 3
  config = train.calls[0][0]
  assert (config.total_steps, config.image_size) == (500, 224)
  assert config.input.data.split.count('+') == 1  # train800val200.
  assert table['summary']['mean'] == pytest.approx(0.6)


def test_resumes_without_redoing_finished_runs_or_tasks(tmp_path):
  killed = FakeTrain(fail_after=7)  # Dies inside the second task's sweep.
  with pytest.raises(KeyboardInterrupt):
    _runner(killed).run('/i.npz', str(tmp_path), missing={})
  assert (tmp_path / 'cifar100' / 'result.json').exists()
  assert not (tmp_path / 'eurosat' / 'result.json').exists()
  resumed = FakeTrain()
  table = _runner(resumed).run('/i.npz', str(tmp_path), missing={})
  # 15 runs in all: 7 finished before the kill, 8 left.
  assert len(resumed.calls) == 8
  assert not any('/cifar100/' in w for _, w in resumed.calls)
  assert table['summary']['num_tasks'] == 3
  again = FakeTrain(fail_after=0)
  assert _runner(again).run('/i.npz', str(tmp_path), missing={}) == table


def test_missing_datasets_are_listed_before_any_training(tmp_path):
  train = FakeTrain(fail_after=0)
  runner = vtab.VtabRunner(vtab.protocol_from_config({}), MODEL,
                           data_dir=str(tmp_path), train_fn=train)
  with pytest.raises(FileNotFoundError) as err:
    runner.run('/i.npz', str(tmp_path / 'out'))
  message = str(err.value)
  assert message.startswith('VTAB: 19 of 19 datasets are not prepared')
  assert f'svhn_cropped: tfds build svhn_cropped --data_dir={tmp_path}' in message
  assert '\n' not in message
  skipping = vtab.VtabRunner(vtab.protocol_from_config({}), MODEL,
                             data_dir=str(tmp_path), train_fn=train,
                             skip_missing=True)
  table = skipping.run('/i.npz', str(tmp_path / 'out'))
  assert table['summary'] == {'num_tasks': 0.0}
  assert '| dmlab | structured | - |' in (tmp_path / 'out' / 'vtab_results.md').read_text()


def test_protocol_config_errors():
  with pytest.raises(ValueError, match="VTAB mode 'fast' is unknown"):
    vtab.protocol_from_config({'mode': 'fast'})
  p = vtab.protocol_from_config({'mode': 'quick', 'steps': 50,
                                 'learning_rates': [0.1, 0.2]})
  assert p.steps == 50 and p.settings == [(0.1, 'cosine'), (0.2, 'cosine')]
  with pytest.raises(ValueError, match='unknown VTAB task'):
    vtab.VtabRunner(p, MODEL, tasks=('imagenet',))


def test_fingerprint_tells_parameters_apart():
  import numpy as np
  a = {'head': {'kernel': np.zeros((2, 3), np.float32)}}
  b = {'head': {'kernel': np.ones((2, 3), np.float32)}}
  assert vtab.fingerprint(a) == vtab.fingerprint(
      {'head': {'kernel': np.zeros((2, 3), np.float32)}})
  assert vtab.fingerprint(a) != vtab.fingerprint(b)
  assert len(vtab_tasks.TASKS) == 19


def test_a_sweep_run_through_the_training_loop_on_mock_data(tmp_path):
  """The task config is one the real training loop and data pipeline accept:
  VTAB labels and grey-to-RGB inside tf.data, SGD, eval on val200."""
  tfds = pytest.importorskip('tensorflow_datasets')
  protocol = vtab.protocol_from_config({
      'mode': 'full', 'steps': 2, 'image_size': 16, 'batch_size': 16,
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
    top1 = runner._train(config, workdir)  # pylint: disable=protected-access
  result = json.loads((tmp_path / 'run' / 'result.json').read_text())
  assert result['top1'] == top1 and 0 <= top1 <= 1
  assert result['split'] == 'test[0:200]'
  assert not os.path.exists(os.path.join(workdir, 'checkpoints'))
  metrics = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert metrics[-1]['step'] == 2
  assert metrics[-1]['eval/num_examples'] == 48


def test_vtab_evaluator_saves_params_once_and_reuses_finished_tasks(
    tmp_path, monkeypatch):
  import numpy as np
  from vit_jax import parallel
  from vit_jax.evaluate import EvalContext
  monkeypatch.setattr(vtab_tasks, 'missing_tasks', lambda tasks, data_dir: {})
  train = FakeTrain()
  ev = vtab.from_config(
      'vtab', {'mode': 'quick', 'tasks': ('dmlab',)}, model=None,
      mesh=parallel.make_mesh({'data': -1}),
      context=EvalContext(workdir=str(tmp_path), model_config=MODEL))
  ev.runner._train_fn = train  # pylint: disable=protected-access
  ev.runner._split_sizes = lambda t: SIZES[t.name]  # pylint: disable=protected-access
  params = {'head': {'kernel': np.ones((3, 6), np.float32),
                     'bias': np.zeros((6,), np.float32)}}
  metrics = ev.run(params)
  assert metrics == pytest.approx({'dmlab': 0.6, 'structured': 0.6,
                                   'mean': 0.6, 'num_tasks': 1.0})
  root = tmp_path / 'vtab' / vtab.fingerprint(params)
  assert (root / 'init.npz').exists() and (root / 'vtab_results.md').exists()
  assert train.calls[0][0].init_from == str(root / 'init.npz')
  assert ev.run(params) == metrics and len(train.calls) == 1  # Not redone.
