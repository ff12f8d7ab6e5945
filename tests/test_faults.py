"""Faults injected into real (tiny) quickstart runs: damaged checkpoints, full disk, rollback, SIGTERM."""

import glob
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from vit_jax import train, train_checkpoint
from vit_jax import workdir as workdir_lib

import cpu_devices
import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import quickstart  # pylint: disable=wrong-import-position

ROW_KEYS = ('train_loss', 'grad_norm', 'learning_rate')


def _config(total_steps=20, **overrides):
  """The quickstart, tiny: batch 32, checkpoints at 10 and 20, no evaluator."""
  config = quickstart.get_config('steps=20,batch=32')
  config.unlock()
  config.evals = ml_collections.ConfigDict()
  config.checkpoint_every, config.log_every = 10, 5
  config.total_steps = total_steps
  for key, value in {**tiny.OVERRIDES, **overrides}.items():
    *parents, leaf = key.split('.')
    target = config
    for p in parents:
      target = target[p]
    target[leaf] = value
  return config


def _rows(workdir):
  return [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]


def _host(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _final_params(workdir):
  """The parameters of the workdir's newest good checkpoint, as the readers see them."""
  return _host(train_checkpoint.read_params(workdir).params)


@pytest.fixture(scope='module')
def base(tmp_path_factory):
  """An uninterrupted run to step 20: (workdir, params, metrics rows)."""
  workdir = str(tmp_path_factory.mktemp('base'))
  result = train.train_and_evaluate(_config(), workdir)
  assert result.step == 20 and sorted(os.listdir(os.path.join(
      workdir, 'checkpoints'))) == ['10', '20']
  return workdir, _final_params(workdir), _rows(workdir)


def test_a_run_writes_what_the_workdir_layout_names(base):
  names = set(os.listdir(base[0]))
  events = {n for n in names if n.startswith('events.out.tfevents.')}  # TensorBoard's
  assert len(events) == 1
  # The digits name no classes (no class_names.json); nothing was moved aside.
  assert names - events == {workdir_lib.CONFIG, workdir_lib.LOCK, workdir_lib.METRICS,
                            workdir_lib.CHECKPOINTS, workdir_lib.PARAMS}


def _copy(base_dir, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(base_dir, workdir)
  return workdir


def _data_files(step_dir):
  return sorted(glob.glob(os.path.join(step_dir, 'state', '**', 'd', '*'),
                          recursive=True), key=os.path.getsize)


def _truncate_data(step_dir):
  for path in _data_files(step_dir):
    os.truncate(path, os.path.getsize(path) // 2)


def _empty(step_dir):
  shutil.rmtree(step_dir)
  os.mkdir(step_dir)


def _no_marker_and_truncated(step_dir):
  os.remove(os.path.join(step_dir, 'commit_success.txt'))
  _truncate_data(step_dir)


DAMAGE = {
    'truncated data file': (_truncate_data, '/20/state/'),
    'deleted manifest': (lambda d: os.remove(os.path.join(d, 'state', 'manifest.ocdbt')),
                         'does not exist'),
    'garbage meta': (lambda d: open(os.path.join(d, 'meta', 'metadata'), 'w').write('{garbage'),
                     'JSONDecodeError'),
    'deleted state': (lambda d: shutil.rmtree(os.path.join(d, 'state')), '/20/state: missing'),
    'empty step directory': (_empty, '/20/state: missing'),
    'no completion marker, truncated': (_no_marker_and_truncated, '/20/state/'),
}


@pytest.mark.parametrize('case', list(DAMAGE))
def test_damaged_latest_checkpoint_is_moved_aside_and_the_previous_one_resumes(
    base, tmp_path, caplog, case):
  damage, reason = DAMAGE[case]
  workdir = _copy(base[0], tmp_path)
  damage(os.path.join(workdir, 'checkpoints', '20'))
  caplog.set_level(logging.WARNING)
  # total_steps=10: resuming at step 10 finds the run complete (no training).
  result = train.train_and_evaluate(_config(total_steps=10), workdir)
  assert result.step == 10
  aside = os.listdir(os.path.join(workdir, 'checkpoints_aside'))
  assert len(aside) == 1 and aside[0].startswith('20.damaged.')
  assert os.listdir(os.path.join(workdir, 'checkpoints')) == ['10']
  warning = next(r.getMessage() for r in caplog.records
                 if 'Checkpoint step 20 is damaged' in r.getMessage())
  assert os.path.join(workdir, 'checkpoints', '20') in warning and reason in warning, warning
  assert aside[0] in warning


def _plain_read(checkpoints, step=20):
  """The state at `step` read by orbax's standard handler alone (no
  verification), or None if it fails."""
  manager = ocp.CheckpointManager(
      checkpoints, options=ocp.CheckpointManagerOptions(read_only=True),
      item_handlers={'state': ocp.StandardCheckpointHandler()})
  try:
    tree = manager.item_metadata(step)['state']
    tree = getattr(tree, 'tree', tree)
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(
        m.shape, m.dtype, sharding=jax.sharding.SingleDeviceSharding(jax.local_devices()[0])), tree)
    return manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))['state']
  except Exception:  # pylint: disable=broad-except
    return None
  finally:
    manager.close()


_SILENT = {}  # Where a flip went unnoticed in a copy of `base`: the copies agree.


def _flip(path, frac):
  data = bytearray(open(path, 'rb').read())
  data[int(len(data) * frac)] ^= 0x40
  open(path, 'wb').write(bytes(data))


def _corrupt_silently(workdir):
  """Flips one byte of step 20 that orbax reads back without an error but
  with other values (compressed chunks without their own checksum)."""
  checkpoints = os.path.join(workdir, 'checkpoints')
  step_dir = os.path.join(checkpoints, '20')
  pristine = _host(_plain_read(checkpoints))

  def changed():
    """None: the read failed; otherwise whether any value differs."""
    read = _plain_read(checkpoints)
    return None if read is None else any(
        (a != b).any() for a, b in zip(_host(read), pristine))

  def silent():
    return changed() is True
  if _SILENT:
    _flip(os.path.join(step_dir, _SILENT['path']), _SILENT['frac'])
    assert silent()
    return
  fracs = np.arange(0.01, 1.0, 0.03)  # Most bytes are checked or unused.
  for path in reversed(_data_files(step_dir)):
    # A file none of whose bytes orbax reads is skipped after one read (the
    # largest ones typically are: 4 of 18 files, 132 reads when each byte
    # was tried alone).
    for frac in fracs:
      _flip(path, frac)
    unread = changed() is False
    for frac in fracs:
      _flip(path, frac)  # Flipped back.
    if unread:
      continue
    for frac in fracs:
      _flip(path, frac)
      if silent():
        _SILENT.update(path=os.path.relpath(path, step_dir), frac=frac)
        return
      _flip(path, frac)  # Flipped back.
  raise AssertionError('no silent corruption found to inject')


def test_silent_corruption_is_caught_by_the_checksum_and_the_resume_is_exact(
    base, tmp_path, caplog):
  workdir = _copy(base[0], tmp_path)
  _corrupt_silently(workdir)
  caplog.set_level(logging.WARNING)
  result = train.train_and_evaluate(_config(), workdir)
  warning = next(r.getMessage() for r in caplog.records
                 if 'Checkpoint step 20 is damaged' in r.getMessage())
  assert 'fails its checksum' in warning, warning
  assert result.step == 20  # Resumed from 10 and trained again to 20 ...
  for a, b in zip(_final_params(workdir), base[1]):  # ... bit-identically.
    np.testing.assert_array_equal(a, b)
  assert [r['step'] for r in _rows(workdir)] == [5, 10, 15, 20]


def test_init_from_skips_a_silently_damaged_step_and_moves_nothing(
    base, tmp_path, caplog):
  """read_params (init_from, evaluators) verifies what it reads."""
  workdir = _copy(base[0], tmp_path)
  checkpoints = os.path.join(workdir, 'checkpoints')
  step_10 = _plain_read(checkpoints, 10)['params']
  _corrupt_silently(workdir)
  caplog.set_level(logging.WARNING)
  params = train_checkpoint.read_params(workdir).params
  for a, b in zip(_host(params), _host(step_10)):
    np.testing.assert_array_equal(a, b)
  warning = next(r.getMessage() for r in caplog.records
                 if 'Skipped damaged checkpoints' in r.getMessage())
  assert 'step 20: CheckpointDamage' in warning and 'fails its checksum' in warning
  assert warning.endswith('read step 10 instead.'), warning
  # Another run's directory is only read: nothing moved aside.
  assert sorted(os.listdir(checkpoints)) == ['10', '20']
  assert not os.path.exists(os.path.join(workdir, 'checkpoints_aside'))
  for step in ('10', '20'):
    _truncate_data(os.path.join(checkpoints, step))
  with pytest.raises(ValueError, match='no good checkpoint in') as e:
    train_checkpoint.read_params(workdir)
  assert '\n' not in str(e.value) and 'step 10: ' in str(e.value)


def test_no_good_checkpoint_is_one_line(base, tmp_path):
  workdir = _copy(base[0], tmp_path)
  for step in ('10', '20'):
    _truncate_data(os.path.join(workdir, 'checkpoints', step))
  with pytest.raises(ValueError, match='no good checkpoint') as e:
    train.train_and_evaluate(_config(), workdir)
  assert '\n' not in str(e.value)
  assert sorted(n.split('.')[0] for n in os.listdir(
      os.path.join(workdir, 'checkpoints_aside'))) == ['10', '20']


def test_verify_reports_non_finite_and_checksum_mismatch():
  state = {'a': np.arange(4, dtype=np.float32), 'b': np.ones(3, np.float32)}
  sums = train_checkpoint.array_checksums(state)
  assert train_checkpoint.verify(state, sums) is None
  assert 'array a fails its checksum' == train_checkpoint.verify(
      {**state, 'a': state['a'] + 1}, sums)
  bad = {**state, 'b': np.array([1, np.nan, 1], np.float32)}
  assert train_checkpoint.verify(bad, train_checkpoint.array_checksums(bad)) == (
      'array b holds non-finite values')
  assert 'no checksums' in train_checkpoint.verify(state, None)


def test_rollback_moves_later_steps_aside_and_retrains_exactly(base, tmp_path, caplog):
  workdir = _copy(base[0], tmp_path)
  caplog.set_level(logging.WARNING)
  config = _config(resume_from_step=10)
  result = train.train_and_evaluate(config, workdir)
  aside = os.listdir(os.path.join(workdir, 'checkpoints_aside'))
  assert len(aside) == 1 and aside[0].startswith('20.rolled-back.')
  assert any('Rolling back to step 10: moved step 20 aside' in r.getMessage()
             for r in caplog.records)
  assert result.step == 20
  for a, b in zip(_final_params(workdir), base[1]):
    np.testing.assert_array_equal(a, b)
  # The same command again does not roll back a second time.
  again = train.train_and_evaluate(config, workdir)
  assert again.step == 20
  assert len(os.listdir(os.path.join(workdir, 'checkpoints_aside'))) == 1
  with pytest.raises(ValueError, match=r'resume_from_step=15: no checkpoint of that step .*'
                     r'kept steps: 10, 20'):
    train.train_and_evaluate(_config(resume_from_step=15), workdir)


def test_sigterm_mid_window_resumes_with_equal_metrics_rows(base, tmp_path, monkeypatch):
  workdir = str(tmp_path / 'run')
  push = train._Window.push

  def push_and_preempt_at_13(self, step, metrics):
    if step == 13:
      os.kill(os.getpid(), signal.SIGTERM)
    push(self, step, metrics)
  monkeypatch.setattr(train._Window, 'push', push_and_preempt_at_13)
  result = train.train_and_evaluate(_config(), workdir)
  assert result.status == 'preempted' and result.step == 13
  monkeypatch.setattr(train._Window, 'push', push)
  result = train.train_and_evaluate(_config(), workdir)
  assert result.status == 'done' and result.step == 20
  rows = _rows(workdir)
  assert [r['step'] for r in rows] == [r['step'] for r in base[2]]
  for row, want in zip(rows, base[2]):
    assert {k: row[k] for k in ROW_KEYS} == {k: want[k] for k in ROW_KEYS}, row['step']
  for a, b in zip(_final_params(workdir), base[1]):
    np.testing.assert_array_equal(a, b)


def test_a_file_where_checkpoints_should_be_fails_before_compiling(tmp_path):
  (tmp_path / 'checkpoints').write_text('not a directory')
  start = time.monotonic()
  with pytest.raises(ValueError, match='checkpoints is a file, not a directory'):
    train.train_and_evaluate(_config(), str(tmp_path))
  assert time.monotonic() - start < 60  # orbax used to wait ~5 minutes


def _mount_tmpfs(path, options):
  os.makedirs(path, exist_ok=True)
  proc = subprocess.run(['mount', '-t', 'tmpfs', '-o', options, 'tmpfs', str(path)],
                        capture_output=True, text=True)
  if proc.returncode != 0:
    pytest.skip(f'cannot mount a tmpfs here: {proc.stderr.strip()}')


def test_a_read_only_checkpoints_directory_fails_before_compiling(tmp_path):
  path = tmp_path / 'checkpoints'
  _mount_tmpfs(path, 'ro,size=1m')
  try:
    with pytest.raises(ValueError, match='checkpoints cannot be written \\(Read-only file system\\)'):
      train.train_and_evaluate(_config(), str(tmp_path))
  finally:
    subprocess.run(['umount', str(path)], check=False)


def _main(workdir, *flags, steps=40):
  env = dict(os.environ, PYTHONUNBUFFERED='1',
             XLA_FLAGS=cpu_devices.xla_flags(2))
  cmd = [sys.executable, '-m', 'vit_jax.main', f'--config=configs/quickstart.py:steps={steps},batch=32',
         f'--workdir={workdir}', '--config.checkpoint_every=10', '--config.log_every=5',
         *tiny.FLAGS, *flags]
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def test_full_disk_fails_fast_with_its_own_status_and_one_line(tmp_path):
  disk = tmp_path / 'disk'
  _mount_tmpfs(disk, 'size=16m')
  try:
    workdir = disk / 'run'
    proc = _main(str(workdir), steps=60)
    deadline = time.time() + 300
    while not (workdir / 'checkpoints' / '10').is_dir():
      assert proc.poll() is None and time.time() < deadline, proc.communicate()
      time.sleep(0.05)
    try:  # Fill the disk after step 10's save.
      with open(disk / 'filler', 'wb') as f:
        while True:
          f.write(b'\0' * 65536)
    except OSError:
      pass  # Full (on a loaded machine the run's own saves may take the last bytes).
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == train.EXIT_SAVE_FAILED == 74, err
    errors = [l for l in err.splitlines() if l.startswith('error:')]
    assert len(errors) == 1 and 'No space left on device [errno 28]' in errors[0], err
    assert 'Traceback' not in err and 'No space left' not in err.replace(errors[0], '')
    saved = sorted(int(d) for d in os.listdir(workdir / 'checkpoints') if d.isdigit())
    assert saved[0] == 10
    # The save after the last good one failed (step 20, or 30 when the filler
    # lost the race on a loaded machine). It is written in the background:
    # the steps run meanwhile are not saved, and the run stops at the latest
    # when the next save would start, long before its 60 steps.
    assert max(r['step'] for r in _rows(workdir)) <= saved[-1] + 20 < 60
    if (disk / 'filler').exists():
      os.remove(disk / 'filler')
    params = train_checkpoint.read_params(str(workdir)).params  # step 10 is intact
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))
  finally:
    subprocess.run(['umount', str(disk)], check=False)


def test_sigterm_before_the_first_step_exits_zero_with_a_line(tmp_path):
  proc = _main(str(tmp_path))
  deadline = time.time() + 120
  while not ((tmp_path / 'lock').exists() and (tmp_path / 'lock').read_text()):
    assert proc.poll() is None and time.time() < deadline, proc.communicate()
    time.sleep(0.02)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err
  assert 'SIGTERM before the first step: nothing was trained' in err
  assert 'status=preempted' in out and 'steps=0/40' in out
  assert not os.path.exists(tmp_path / 'metrics.jsonl') or not _rows(tmp_path)
  assert not any(d.isdigit() for d in os.listdir(tmp_path / 'checkpoints'))


def test_a_config_file_whose_get_config_raises_is_one_line(tmp_path):
  (tmp_path / 'bad.py').write_text('def get_config(arg=None):\n  return 1 / 0\n')
  proc = subprocess.run([sys.executable, '-m', 'vit_jax.main', f'--config={tmp_path}/bad.py',
                         f'--workdir={tmp_path}/w'], cwd=ROOT, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip() == (f'error: {tmp_path}/bad.py:2: the config file raised '
                                 'ZeroDivisionError: division by zero; fix the config file or its '
                                 'arguments.')
