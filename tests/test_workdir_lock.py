"""One run per workdir: the lock (local flock and heartbeat rule) and the resume config check."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from vit_jax import resume_check
from vit_jax.workdir_lock import WorkdirLock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import quickstart  # pylint: disable=wrong-import-position

HOLDER = '''
import sys, time
from vit_jax.workdir_lock import WorkdirLock
with WorkdirLock(sys.argv[1]):
  print('held', flush=True)
  time.sleep(600)
'''


def _hold(workdir):
  proc = subprocess.Popen([sys.executable, '-c', HOLDER, str(workdir)], cwd=ROOT,
                          stdout=subprocess.PIPE, text=True,
                          env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.stdout.readline().strip() == 'held'
  return proc


def test_a_second_run_is_refused_naming_the_holder_until_it_dies(tmp_path):
  holder = _hold(tmp_path)
  try:
    with pytest.raises(ValueError, match=rf'another run holds the lock .* pid {holder.pid}, '
                       r'started 20\d\d-') as e:
      with WorkdirLock(str(tmp_path)):
        pass
    assert '\n' not in str(e.value)
    # The training loop takes the same lock, before building anything.
    from vit_jax import train  # pylint: disable=g-import-not-at-top
    with pytest.raises(ValueError, match=f'pid {holder.pid}'):
      train.train_and_evaluate(quickstart.get_config('steps=5'), str(tmp_path))
  finally:
    holder.send_signal(signal.SIGKILL)  # A killed run leaves its file, not its lock.
    holder.wait()
  assert json.loads((tmp_path / 'lock').read_text())['pid'] == holder.pid
  with WorkdirLock(str(tmp_path)) as lock:
    assert json.loads((tmp_path / 'lock').read_text())['pid'] == os.getpid() == lock.owner['pid']
  assert (tmp_path / 'lock').read_text() == ''  # released


def test_heartbeat_lock_refuses_a_fresh_owner_and_takes_over_a_stale_one(tmp_path):
  kw = dict(heartbeat=True, heartbeat_s=0.05, stale_after_s=0.5, settle_s=0.0)
  with WorkdirLock(str(tmp_path), **kw):
    beat = json.loads((tmp_path / 'lock').read_text())['heartbeat']
    time.sleep(0.3)
    assert json.loads((tmp_path / 'lock').read_text())['heartbeat'] > beat  # it beats
    with pytest.raises(ValueError, match=f'pid {os.getpid()}'):
      with WorkdirLock(str(tmp_path), **kw):
        pass
  assert not (tmp_path / 'lock').exists()
  # An owner that stopped beating (a dead host) is stale after stale_after_s.
  (tmp_path / 'lock').write_text(json.dumps({'host': 'gone', 'pid': 1, 'start': 'x', 'nonce': 'n',
                                             'heartbeat': time.time()}))
  with pytest.raises(ValueError, match='host gone, pid 1'):
    WorkdirLock(str(tmp_path), **kw).__enter__()
  time.sleep(0.6)
  with WorkdirLock(str(tmp_path), **kw):
    assert json.loads((tmp_path / 'lock').read_text())['pid'] == os.getpid()


def _workdir_with_checkpoint(tmp_path, config):
  (tmp_path / 'checkpoints' / '10').mkdir(parents=True)
  (tmp_path / 'config.json').write_text(json.dumps(config.to_dict(), default=str))


def test_resume_with_another_recipe_is_refused_listing_the_keys(tmp_path):
  stored = quickstart.get_config('steps=100')
  _workdir_with_checkpoint(tmp_path, stored)
  changed = quickstart.get_config('steps=100')
  changed.schedule.base_lr = 0.1
  changed.model.hidden_size = 32
  with pytest.raises(ValueError, match=r'\(2 key\(s\): model.hidden_size, schedule.base_lr\); .*'
                     'allow_config_change=true'):
    resume_check.check_resume_config(str(tmp_path), changed)
  changed.allow_config_change = True
  resume_check.check_resume_config(str(tmp_path), changed)
  # What a resume may change: total steps, cadences, budget, rollback.
  ok = quickstart.get_config('steps=100')
  ok.total_steps, ok.log_every, ok.checkpoint_every = 300, 7, 30
  ok.evals.val.every = 11
  ok.budget.max_core_hours = 2.0
  ok.resume_from_step = 10
  resume_check.check_resume_config(str(tmp_path), ok)
  ok.evals.val.batch_size = 64
  with pytest.raises(ValueError, match=r'1 key\(s\): evals.val.batch_size'):
    resume_check.check_resume_config(str(tmp_path), ok)


def test_a_key_a_newer_version_added_at_its_default_still_resumes(tmp_path):
  """config.json of an older version lacks keys added since (accumulate,
  mesh.num_slices): at their defaults they are the same recipe."""
  stored = quickstart.get_config('steps=100').to_dict()
  del stored['accumulate'], stored['mesh']['num_slices']
  (tmp_path / 'checkpoints' / '10').mkdir(parents=True)
  (tmp_path / 'config.json').write_text(json.dumps(stored, default=str))
  resume_check.check_resume_config(str(tmp_path), quickstart.get_config('steps=100'))
  changed = quickstart.get_config('steps=100')
  changed.accumulate = 'reduced'
  with pytest.raises(ValueError, match=r'1 key\(s\): accumulate\)'):
    resume_check.check_resume_config(str(tmp_path), changed)


def test_no_checkpoint_means_nothing_to_compare(tmp_path):
  (tmp_path / 'config.json').write_text(json.dumps({'seed': 1}))
  resume_check.check_resume_config(str(tmp_path), quickstart.get_config('steps=5'))
