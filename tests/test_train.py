"""The training loop end to end: quickstart, exact resume, preemption, NaN, cap, bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from vit_jax import budget, train
from vit_jax.checkpoint import load_npz

import cpu_devices
import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import quickstart  # pylint: disable=wrong-import-position

REQUIRED_METRICS = ('step', 'train_loss', 'learning_rate', 'grad_norm',
                    'img_per_sec', 'img_per_sec_per_core', 'core_hours', 'mfu')


def _config(arg='', **overrides):
  config = quickstart.get_config(arg)
  config.unlock()
  for key, value in overrides.items():
    target = config
    *parents, leaf = key.split('.')
    for p in parents:
      target = target[p]
    target[leaf] = value
  return config


#: The 200-step quickstart run and the run of it again, in a child compiled
#: at level 1 (cpu_devices.py: its time is 400 steps of execution, which
#: code compiled at the suite's level 0 runs 2x slower); prints the results.
_QUICKSTART = """
import json, sys
from configs import quickstart
from vit_jax import parallel, train
parallel.configure_cpu()   # synchronous dispatch, as conftest.py and main
config = quickstart.get_config('steps=200')
config.log_every, config.checkpoint_every = 50, 100
runs = [train.train_and_evaluate(config, sys.argv[1]) for _ in range(2)]
print(json.dumps([dict(status=str(r.status), step=r.step,
                       eval_metrics=r.eval_metrics) for r in runs], default=float))
"""


def test_quickstart_short_run_learns_and_writes_its_outputs(tmp_path):
  env = dict(os.environ, XLA_FLAGS=cpu_devices.xla_flags(8, optimized=True))
  child = subprocess.run([sys.executable, '-c', _QUICKSTART, str(tmp_path)],
                         cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=900)
  assert child.returncode == 0, child.stderr[-3000:]
  result, again = json.loads(child.stdout.splitlines()[-1])
  assert result['status'] == 'done'
  assert result['step'] == 200
  assert result['eval_metrics']['val/top1'] >= 0.85, result['eval_metrics']
  assert result['eval_metrics']['val/num_examples'] == 300
  rows = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  assert [r['step'] for r in rows] == [50, 100, 150, 200]
  for key in REQUIRED_METRICS:
    assert all(key in r for r in rows), key
  assert rows[-1]['core_hours'] > rows[0]['core_hours'] > 0
  assert 'val/top1' in rows[-1]
  assert json.load(open(tmp_path / 'config.json'))['total_steps'] == 200
  params = load_npz(str(tmp_path / 'params.npz'))
  assert params['head']['kernel'].shape == (64, 10)
  # TensorBoard event files next to the JSON lines.
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(tmp_path))
  # Running a finished run again trains nothing and reports its scores.
  assert again['step'] == 200
  assert again['eval_metrics']['val/top1'] == result['eval_metrics']['val/top1']
  assert len(open(tmp_path / 'metrics.jsonl').readlines()) == 4


def _main(workdir, *flags, devices=2):
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONUNBUFFERED='1',
             XLA_FLAGS=cpu_devices.xla_flags(devices))
  cmd = [sys.executable, '-m', 'vit_jax.main',
         '--config=configs/quickstart.py:steps=40', f'--workdir={workdir}',
         '--config.checkpoint_every=10', '--config.log_every=10',
         *tiny.FLAGS, *flags]
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _wait_for_checkpoint(proc, workdir, step, timeout=300):
  path = os.path.join(workdir, 'checkpoints', str(step))
  deadline = time.time() + timeout
  while not os.path.isdir(path):
    assert proc.poll() is None, proc.stdout.read()
    assert time.time() < deadline, 'no checkpoint in time'
    time.sleep(0.05)


def _finish(proc, timeout=300):
  out, _ = proc.communicate(timeout=timeout)
  return proc.returncode, out


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('uninterrupted'))
  code, out = _finish(_main(workdir))
  assert code == 0, out
  return load_npz(os.path.join(workdir, 'params.npz'))


def _assert_bit_identical(a, b):
  flat_a, flat_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(flat_a) == len(flat_b)
  for x, y in zip(flat_a, flat_b):
    np.testing.assert_array_equal(x, y)


def test_sigkill_and_resume_is_bit_identical(tmp_path, uninterrupted):
  workdir = str(tmp_path)
  proc = _main(workdir)
  _wait_for_checkpoint(proc, workdir, 20)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not os.path.exists(os.path.join(workdir, 'params.npz'))
  code, out = _finish(_main(workdir))
  assert code == 0, out
  assert 'Resumed from step' in out
  _assert_bit_identical(load_npz(os.path.join(workdir, 'params.npz')),
                        uninterrupted)
  steps = [json.loads(l)['step'] for l in open(tmp_path / 'metrics.jsonl')]
  assert steps == sorted(set(steps)) and steps[-1] == 40  # No step twice.


def test_sigterm_saves_exits_zero_and_resumes_exactly(tmp_path, uninterrupted):
  workdir = str(tmp_path)
  proc = _main(workdir)
  _wait_for_checkpoint(proc, workdir, 10)
  proc.send_signal(signal.SIGTERM)
  code, out = _finish(proc)
  assert code == 0, out
  assert 'Preemption requested: saved step' in out
  assert 'status=preempted' in out
  code, out = _finish(_main(workdir))
  assert code == 0, out
  _assert_bit_identical(load_npz(os.path.join(workdir, 'params.npz')),
                        uninterrupted)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  config = _config('steps=20', checkpoint_every=1, log_every=1,
                   **tiny.OVERRIDES, **{'schedule.base_lr': 1e12, 'schedule.warmup_steps': 0,
                      'optim.grad_clip_norm': None, 'optim.name': 'sgd'})
  with pytest.raises(train.NonFiniteLossError, match=r'at step (\d+)') as e:
    train.train_and_evaluate(config, str(tmp_path))
  bad_step = int(__import__('re').search(r'at step (\d+)', str(e.value))[1])
  # It names the earlier kept step to roll back to, when there is one.
  assert ('--config.resume_from_step=' in str(e.value)) == (bad_step > 2)
  if bad_step > 2:
    assert f'--config.resume_from_step={bad_step - 2} ' in str(e.value)
  saved = sorted(int(d) for d in os.listdir(tmp_path / 'checkpoints')
                 if d.isdigit())
  assert saved and saved[-1] == bad_step - 1
  from vit_jax.train_checkpoint import read_params
  params = read_params(str(tmp_path)).params
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_budget_cap_stops_then_resumes_when_raised(tmp_path):
  config = _config('steps=30', checkpoint_every=100, log_every=5,
                   **tiny.OVERRIDES, **{'budget.max_core_hours': 2e-5})
  result = train.train_and_evaluate(config, str(tmp_path))
  assert result.status == 'budget_exhausted' and result.step < 30
  # The verdict is taken at log steps only (no per-step collective).
  assert result.step % 5 == 0
  assert result.core_hours >= 2e-5
  assert os.path.isdir(tmp_path / 'checkpoints' / str(result.step))
  config.budget.max_core_hours = 10.0
  resumed = train.train_and_evaluate(config, str(tmp_path))
  assert resumed.status == 'done' and resumed.step == 30
  assert resumed.core_hours > result.core_hours  # The count went on.
  assert train.EXIT_BUDGET_EXHAUSTED == budget.EXIT_BUDGET_EXHAUSTED == 75


@pytest.mark.parametrize('overrides,match', [
    ({'batch_size': 36}, 'not divisible by accum_steps'),
    ({'mesh.data': 3}, 'has 3 devices but 8 are present'),
    ({'schedule.decay_type': 'exp'}, 'unknown decay_type'),
    ({'model.name': 'ViT-Q/16'}, 'unknown model'),
])
def test_bad_config_is_a_clear_error_before_compiling(tmp_path, overrides, match):
  with pytest.raises(ValueError, match=match):
    train.train_and_evaluate(_config('steps=5', **overrides), str(tmp_path))


def test_unwritable_workdir_is_a_clear_error(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('not a directory')
  with pytest.raises(ValueError, match='cannot be written'):
    train.train_and_evaluate(_config('steps=5'), str(blocker / 'run'))


def test_checkpoint_of_another_model_is_refused(tmp_path):
  train.train_and_evaluate(_config('steps=2', checkpoint_every=1),
                           str(tmp_path))
  other = _config('steps=4', **{'model.hidden_size': 32,
                                 'allow_config_change': True})
  with pytest.raises(ValueError, match='does not fit') as e:
    train.train_and_evaluate(other, str(tmp_path))
  assert 'shape mismatches' in str(e.value) and '\n' not in str(e.value)


@pytest.mark.parametrize('flag,match', [
    ('--config.no_such_key=1', 'no_such_key'),
    ('--config.total_steps=many', 'total_steps'),
])
def test_cli_rejects_unknown_keys_and_wrong_types(tmp_path, flag, match):
  proc = subprocess.run(
      [sys.executable, '-m', 'vit_jax.main', '--config=configs/quickstart.py',
       f'--workdir={tmp_path}', flag], cwd=ROOT, capture_output=True,
      text=True, timeout=120, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode != 0
  assert match in proc.stderr
  assert 'Traceback' not in proc.stderr
  assert not os.path.exists(tmp_path / 'checkpoints')
