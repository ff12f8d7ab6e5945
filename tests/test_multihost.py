"""Multi-host correctness: 1, 2 and 4 processes train alike; N->M restore; a lost peer.

The quickstart (configs/quickstart.py: the digits, its preprocessing, optimizer
and schedule; a narrower ViT to keep it quick) with a global batch of 64 on the
first 300 training digits: every step is another batch of the seeded global
order, and the epoch rolls over inside step 5 (positions 256..319).
The global batch of step s must not depend on the process count, so the
losses of 1, 2 and 4 processes must agree to float rounding, which they
cannot if the hosts shuffle their own shares, if a host trains on its own
gradient alone, or if it sees another host's examples twice. Each run is
`python -m vit_jax.main` with the flags of a pod's processes
(--coordinator_address/--num_processes/--process_id), started by launch.local
or, for `two`, by the test itself, so that nothing but the processes
themselves handles a lost peer.

Runs (slow: each starts jax in every process):
  one   1 process x 8 devices, 6 steps: the reference
  two   2 processes x 4 devices, 6 steps, checkpoints at 3 and 6: process 1
        is SIGKILLed when process 0 logs step 5; process 0 must exit 76 with
        one line within the heartbeat timeout (3 s here) and a few seconds;
        both are started again and resume from step 3
  four  from two's step-3 checkpoint, 4 processes x 2 devices, checkpoints every step
  back  from four's step-4 checkpoint, 1 process x 8 devices
"""

import io
import json
import pathlib
import re
import shutil
import signal
import subprocess
import threading
import time

import numpy as np
import pytest

from launch import local

import tiny

REPO = pathlib.Path(__file__).resolve().parents[1]
BATCH, TRAIN_DIGITS, TEST_DIGITS = 64, 300, 45  # 45: no host count or host batch divides it
FLAGS = (
    f'--config=configs/quickstart.py:steps=6,batch={BATCH}',
    f'--config.input.data.split=train[:{TRAIN_DIGITS}]',
    f'--config.evals.val.data.split=test[:{TEST_DIGITS}]',
    '--config.evals.val.batch_size=16',
    '--config.evals.val.every=3',
    '--config.log_every=1',
    '--config.checkpoint_every=3',
    '--config.keep_checkpoints=10',
    '--config.export_npz=False',
    *tiny.FLAGS,
)
HEARTBEAT_S = 3  # --heartbeat_timeout_s of `two`; vit_jax's default is 30
LOST_WITHIN_S = HEARTBEAT_S + 5  # docs/launch.md: the heartbeat timeout and a few seconds


def _train(workdir, num_processes, devices_per_process, *flags):
  out = io.StringIO()
  result = local.run([*FLAGS, f'--workdir={workdir}', *flags],
                     num_processes=num_processes, devices_per_process=devices_per_process,
                     cwd=str(REPO), output=out, timeout_s=600)
  assert result.returncode == 0, out.getvalue()[-5000:]
  return out.getvalue()


class _Processes:
  """`vit_jax.main` in 2 processes started here with the pod's flags: no launcher watches them."""

  def __init__(self, workdir, *flags):
    port = local.free_port()
    env = local.child_env(4)
    self.lines = [[], []]  # (monotonic time, line) per process
    self.procs = [subprocess.Popen(
        local.child_command('vit_jax.main', [*FLAGS, f'--workdir={workdir}',
                                             f'--heartbeat_timeout_s={HEARTBEAT_S}', *flags],
                            port=port, num_processes=2, process_id=i),
        cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True) for i in range(2)]
    self.pumps = [threading.Thread(target=self._pump, args=(i,), daemon=True) for i in range(2)]
    for pump in self.pumps:
      pump.start()

  def _pump(self, i):
    for line in self.procs[i].stdout:
      self.lines[i].append((time.monotonic(), line.rstrip('\n')))

  def wait_for(self, process, pattern, timeout_s=300):
    end = time.monotonic() + timeout_s
    while not any(re.search(pattern, line) for _, line in self.lines[process]):
      assert time.monotonic() < end and self.procs[process].poll() is None, self.output()[-5000:]
      time.sleep(0.02)

  def wait(self, timeout_s=300):
    codes = [proc.wait(timeout=timeout_s) for proc in self.procs]
    for pump in self.pumps:
      pump.join(timeout=10)
    return codes

  def output(self):
    return ''.join(f'[{i}] {line}\n' for i in range(2) for _, line in self.lines[i])


def _two_through_a_lost_peer(workdir):
  """`two`, with process 1 SIGKILLed at step 5; then both again: the resumed run's output."""
  first = _Processes(workdir)
  first.wait_for(0, r'\bstep 5/6\b')
  first.procs[1].send_signal(signal.SIGKILL)
  killed = time.monotonic()
  survivor = first.procs[0].wait(timeout=120)
  lost = {'seconds': time.monotonic() - killed, 'status': survivor,
          'lines': [line for t, line in first.lines[0] if t >= killed], 'output': first.output()}
  first.wait()
  again = _Processes(workdir)
  codes = again.wait()
  assert codes == [0, 0], again.output()[-5000:]
  return again.output(), lost


def _metrics(workdir):
  """metrics.jsonl as a list of records, in file order."""
  return [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]


def _resume_copy(src, dst, keep_through):
  """`src` without its checkpoints after step `keep_through` and without its logs."""
  shutil.copytree(src, dst)
  for step_dir in (dst / 'checkpoints').iterdir():
    if step_dir.name.isdigit() and int(step_dir.name) > keep_through:
      shutil.rmtree(step_dir)
  for log in [dst / 'metrics.jsonl', *dst.glob('events.out.tfevents.*')]:
    log.unlink()
  return dst


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  base = tmp_path_factory.mktemp('runs')
  made = {}

  def get(name):
    if name not in made:
      if name == 'one':
        made[name] = (base / name, _train(base / name, 1, 8))
      elif name == 'two':
        output, made['lost'] = _two_through_a_lost_peer(base / name)
        made[name] = (base / name, output)
      elif name == 'four':
        workdir = _resume_copy(get('two')[0], base / name, keep_through=3)
        made[name] = (workdir, _train(workdir, 4, 2, '--config.checkpoint_every=1'))
      elif name == 'back':
        workdir = _resume_copy(get('four')[0], base / name, keep_through=4)
        made[name] = (workdir, _train(workdir, 1, 8))
    return made[name]
  return get


def test_a_lost_peer_stops_the_survivor_in_seconds_and_both_resume(runs):
  """Process 1 SIGKILLed mid-run: process 0 alone (no launcher) exits 76 with one line, soon."""
  workdir, output = runs('two')
  lost = runs('lost')
  assert lost['status'] == 76, lost['output'][-5000:]
  assert lost['seconds'] < LOST_WITHIN_S, lost
  assert lost['lines'] == [
      f'error: process 1 of 2 was lost: no heartbeat for {HEARTBEAT_S} s (killed, crashed, or its '
      'host failed); rerun all processes to resume from the last checkpoint.'], lost['lines']
  # Rerun: both resume from the last checkpoint (step 3) and finish; the metrics equal the
  # reference's (test_two_processes_train_like_one).
  assert re.search(r'^\[0\] .*Resumed from step 3 in ', output, re.M), output[-3000:]
  assert [r['step'] for r in _metrics(workdir)] == [1, 2, 3, 4, 5, 6]


def _assert_same_training(records, reference):
  by_step = {r['step']: r for r in reference}
  for record in records:
    want = by_step[record['step']]
    for key in ('train_loss', 'grad_norm', 'learning_rate'):
      np.testing.assert_allclose(record[key], want[key], rtol=2e-5, err_msg=f'{key} at step {record["step"]}')
    for key in [k for k in want if k.startswith('val/')]:
      np.testing.assert_allclose(record[key], want[key], rtol=1e-6, err_msg=f'{key} at step {record["step"]}')


def test_two_processes_train_like_one(runs):
  one, two = _metrics(runs('one')[0]), _metrics(runs('two')[0])
  assert [r['step'] for r in one] == [1, 2, 3, 4, 5, 6]
  assert one[0]['grad_norm'] > 0 and one[-1]['train_loss'] < one[0]['train_loss']  # it trains
  _assert_same_training(two, one)
  assert [r['step'] for r in two] == [1, 2, 3, 4, 5, 6]


def test_evaluation_counts_each_example_once(runs):
  for name in ('one', 'two', 'four'):
    evals = [r for r in _metrics(runs(name)[0]) if 'val/num_examples' in r]
    assert evals and all(r['val/num_examples'] == TEST_DIGITS for r in evals), name


def test_only_process_zero_writes_metrics(runs):
  workdir, output = runs('two')
  assert [r['step'] for r in _metrics(workdir)] == [1, 2, 3, 4, 5, 6]  # no line twice
  assert len(list(workdir.glob('events.out.tfevents.*'))) == 2  # one per run (killed, resumed)
  summaries = [line for line in output.splitlines() if 'SUMMARY status=done' in line]
  assert len(summaries) == 1 and summaries[0].startswith('[0] ')
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit()) == ['3', '6']


def test_checkpoint_of_two_processes_resumes_on_four(runs):
  workdir, output = runs('four')
  assert '[3] ' in output  # four processes ran
  records = _metrics(workdir)
  assert [r['step'] for r in records] == [4, 5, 6]
  _assert_same_training(records, _metrics(runs('one')[0]))


def test_checkpoint_of_four_processes_resumes_on_one(runs):
  workdir, _ = runs('back')
  records = _metrics(workdir)
  assert [r['step'] for r in records] == [5, 6]
  _assert_same_training(records, _metrics(runs('one')[0]))


def test_sigterm_to_every_process_saves_and_exits_zero(tmp_path):
  """A pod's preemption notice: SIGTERM to both processes of `two` (started with the pod's
  flags, no launcher): jax's preemption sync picks one step, both save it and exit 0, and
  the checkpoint is there to resume from. (main.py once reset SIGTERM after jax installed
  its handler: the processes died with 143 and saved nothing.)"""
  procs = _Processes(tmp_path, '--config.total_steps=200')
  procs.wait_for(0, r'\bstep 2/200\b')
  for proc in procs.procs:
    proc.send_signal(signal.SIGTERM)
  assert procs.wait() == [0, 0], procs.output()[-5000:]
  saved = [int(p.name) for p in (tmp_path / 'checkpoints').iterdir() if p.name.isdigit()]
  assert saved and 2 <= max(saved) < 200, saved
  assert re.search(r'^\[0\] .*Preemption requested: saved step \d+', procs.output(), re.M)
