"""The transfer layer above the loop: the fine-tuning sweep and VTAB after training, with preemption, NaN and the compute account."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from vit_jax import train, transfer
from vit_jax.data import vtab_tasks
from vit_jax.transfer import runs

import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import quickstart  # pylint: disable=wrong-import-position


def _config(steps=6, **sweep):
  c = quickstart.get_config(f'steps={steps}')
  c.model.update(tiny.MODEL)
  c.log_every = 2
  c.checkpoint_every = 2
  c.evals.val.every = 0
  c.export_npz = True
  if sweep:
    c.sweep.update(**sweep)
  return c


def test_a_non_finite_loss_in_a_sweep_run_names_that_run(tmp_path):
  config = _config(learning_rates=(1e9,), train_split='train[:80%]',
                   eval_split='train[80%:]')
  config.optim.grad_clip_norm = None
  with pytest.raises(train.NonFiniteLossError) as err:
    transfer.run(config, str(tmp_path))
  assert str(err.value).startswith('sweep lr=1e+09 (dev) (')
  assert os.path.join('sweep', 'lr1e+09') in str(err.value)


def test_the_cap_sees_the_sweep_runs(tmp_path):
  config = _config(learning_rates=(1e-3, 3e-3), train_split='train[:80%]',
                   eval_split='train[80%:]')
  config.budget.max_core_hours = 1e-9  # Spent by the first run's first step.
  result = transfer.run(config, str(tmp_path))
  assert result.status == 'budget_exhausted'
  assert 'sweep lr=' in result.stopped_in


def test_a_sweep_stopped_inside_a_run_reports_its_steps_and_what_it_skipped(
    tmp_path, monkeypatch, caplog):
  """SUMMARY said steps=0/60 when the second rate's run had saved step 52,
  and only sweep_results.md said which rate was chosen or that a finished
  run was not redone."""
  from vit_jax import main  # pylint: disable=g-import-not-at-top
  config = _config(steps=60, learning_rates=(1e-3, 3e-3),
                   train_split='train[:80%]', eval_split='train[80%:]')
  dev_top1 = {1e-3: 0.5, 3e-3: 0.75}
  calls = []

  def fake_train(c, workdir):
    calls.append(workdir)
    lr = c.schedule.base_lr
    if len(calls) == 2:  # The second rate, first session: SIGTERM at 52.
      return train.TrainResult('preempted', 52, 60, {}, None, 0.01)
    metrics = ({'dev/top1': dev_top1[lr], 'dev/num_examples': 300.0}
               if 'sweep' in workdir else {'val/top1': 0.9})
    return train.TrainResult('done', 60, 60, metrics, 100.0, 0.02)
  monkeypatch.setattr(train, 'train_and_evaluate', fake_train)

  first = transfer.run(config, str(tmp_path))
  assert main.summary_line(first).startswith(
      'SUMMARY status=preempted  steps=52/60  stopped_in="sweep lr=0.003 '
      '(dev)"')
  with caplog.at_level('INFO'):
    second = transfer.run(config, str(tmp_path))
  assert second.status == 'done' and len(calls) == 4  # lr=0.001 not redone.
  said = [r.getMessage() for r in caplog.records]
  assert (f'sweep lr=0.001 (dev): finished earlier in {tmp_path}/sweep/'
          f'lr0.001 (step 60: dev/top1=0.5000); not rerun.') in said
  assert (f'sweep: dev top-1 lr=0.001 50.00%, lr=0.003 75.00%; chose '
          f'lr=0.003, now trained on train (table: {tmp_path}/'
          f'sweep_results.md).') in said


def test_a_stop_between_runs_reports_the_saved_step(tmp_path):
  """SIGTERM between two runs: the next run's last saved step, not 0."""
  workdir = tmp_path / 'sweep' / 'lr0.003'
  for name in ('20', '40', '60.orbax-checkpoint-tmp-1700000000'):
    (workdir / 'checkpoints' / name).mkdir(parents=True)
  config = _config(steps=60)
  with runs.RunComposer(str(tmp_path), train_fn=None) as composer:
    os.kill(os.getpid(), signal.SIGTERM)  # The one handler records it.
    with pytest.raises(runs.Stopped) as stop:
      composer.train(config, str(workdir), 'sweep lr=0.003 (dev)')
  assert (stop.value.status, stop.value.step, stop.value.total_steps) == (
      'preempted', 40, 60)


def _watch_and_sigterm(path_glob_root: str, stop: threading.Event):
  """Sends SIGTERM to this process once a VTAB task run has logged a row."""
  while not stop.is_set():
    for dirpath, _, files in os.walk(path_glob_root):
      if 'metrics.jsonl' in files and os.path.getsize(
          os.path.join(dirpath, 'metrics.jsonl')) > 0:
        os.kill(os.getpid(), signal.SIGTERM)
        return
    time.sleep(0.02)


def test_sigterm_during_vtab_after_training_saves_stops_and_resumes(
    tmp_path, monkeypatch):
  """VTAB after training runs above the loop: SIGTERM inside a task run is
  that run's (it saves), the whole run ends 'preempted', a rerun resumes."""
  tfds = pytest.importorskip('tensorflow_datasets')
  # Mock data has no prepared splits: say which exist, as a prepared
  # smallnorb would (the runner's own code computes the 800/200 slices).
  monkeypatch.setattr(vtab_tasks, 'missing_tasks', lambda tasks, data_dir: {})
  monkeypatch.setattr(vtab_tasks, 'split_sizes',
                      lambda task, data_dir=None: {'train': 1000, 'test': 400})
  config = _config(steps=4)
  config.vtab.update(mode='quick', tasks='smallnorb_elevation', steps=16,
                     image_size=16, batch_size=16, warmup_steps=1)
  config.vtab.keep_checkpoints = True
  config.log_every = 1
  vtab_root = tmp_path / 'vtab'
  stop = threading.Event()
  watcher = threading.Thread(target=_watch_and_sigterm,
                             args=(str(vtab_root), stop), daemon=True)
  # Enough mock examples for the slices (train800 and test[200:400]).
  with tfds.testing.mock_data(num_examples=1000):
    watcher.start()
    first = transfer.run(config, str(tmp_path))
    stop.set()
    assert first.status == 'preempted'
    assert 'smallnorb_elevation' in first.stopped_in
    final = vtab_root / 'step_4' / 'smallnorb_elevation' / 'final'
    saved = sorted(int(d) for d in os.listdir(final / 'checkpoints')
                   if d.isdigit())
    assert saved and saved[-1] < 16  # Saved where it stopped.
    second = transfer.run(config, str(tmp_path))
  assert second.status == 'done'
  assert 0 <= second.eval_metrics['vtab/smallnorb_elevation'] <= 1
  rows = [json.loads(l) for l in open(final / 'metrics.jsonl')]
  assert [r['step'] for r in rows] == list(range(1, 17))  # No step twice.
  assert second.core_hours > first.core_hours


def test_sweep_via_main_survives_sigterm_then_trains_the_best_rate_on_everything(
    tmp_path):
  """`python -m vit_jax.main` with a sweep: SIGTERM inside the first grid
  run exits 0 ('preempted'); the rerun finishes the grid on the dev split,
  picks the best rate and trains it on the whole train split."""
  workdir = tmp_path / 'run'
  args = [sys.executable, '-m', 'vit_jax.main',
          '--config=configs/quickstart.py:steps=30', f'--workdir={workdir}',
          '--config.sweep.learning_rates=(1e-6,0.003)',
          '--config.sweep.train_split=train[:80%]',
          '--config.sweep.eval_split=train[80%:]',
          '--config.log_every=1', '--config.evals.val.every=0',
          '--config.export_npz=True',
          *tiny.FLAGS]
  proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  metrics = workdir / 'sweep' / 'lr1e-06' / 'metrics.jsonl'
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if metrics.exists() and metrics.stat().st_size > 0:
      proc.send_signal(signal.SIGTERM)
      break
    time.sleep(0.05)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, out
  assert 'status=preempted' in out and 'stopped_in="sweep lr=1e-06' in out
  # The steps are those the stopped run saved (was steps=0/30).
  saved = max(int(d) for d in os.listdir(
      workdir / 'sweep' / 'lr1e-06' / 'checkpoints') if d.isdigit())
  assert f'steps={saved}/30  stopped_in=' in out
  done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True,
                        timeout=600)
  assert done.returncode == 0, done.stdout + done.stderr
  assert 'status=done' in done.stdout and 'steps=30/30' in done.stdout
  assert 'sweep: dev top-1 lr=1e-06 ' in done.stderr
  assert ', lr=0.003 ' in done.stderr and 'chose lr=0.003' in done.stderr
  table = json.loads((workdir / 'sweep_results.json').read_text())
  dev = {float(k): v for k, v in table['dev_top1'].items()}
  assert set(dev) == {1e-6, 3e-3}
  best = max(dev, key=dev.get)
  assert table['chosen_learning_rate'] == best == 3e-3  # 1e-6 learns nothing.
  for rate in dev:
    run = json.loads((workdir / 'sweep' / f'lr{rate:g}' / 'config.json').read_text())
    assert run['input']['data']['split'] == 'train[:80%]'
    assert run['evals'] == {'dev': {**run['evals']['dev'], 'type': 'classify'}}
    assert run['evals']['dev']['data']['split'] == 'train[80%:]'
    assert run['schedule']['base_lr'] == rate and not run['export_npz']
  final = json.loads((workdir / 'config.json').read_text())
  assert final['schedule']['base_lr'] == best
  assert final['input']['data']['split'] == 'train'
  assert final['sweep']['learning_rates'] == []
  assert (workdir / 'params.npz').exists()
  account = json.loads((workdir / runs.ACCOUNT).read_text())
  assert set(account) == {'sweep/lr1e-06', 'sweep/lr0.003'}
  assert '| 0.003 |' in (workdir / 'sweep_results.md').read_text()
  summary = next(l for l in done.stdout.splitlines() if l.startswith('SUMMARY'))
  assert 'val/top1=' in summary and f'params={workdir / "params.npz"}' in summary
  # The run's core-hours hold the final run's and both sweep runs'.
  held = float(summary.split('core_hours=')[1].split()[0])
  assert held > round(sum(account.values()), 4) > 0
