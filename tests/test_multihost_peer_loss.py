"""parallel.PeerWatch in real processes: the coordinator lost, a peer's own error, a clean end.

Each case is two bare jax processes (one CPU device each) joined by
`parallel.initialize_distributed` with the pod's flags and gathering across
processes in a loop, as a training step does; no launcher watches them. A
peer killed mid-run, with vit_jax.main, is tests/test_multihost.py's `two`.
"""

import pathlib
import signal
import subprocess
import sys
import time

from launch import local

REPO = pathlib.Path(__file__).resolve().parents[1]
HEARTBEAT_S = 2
WORKER = '''
import sys, time
import numpy as np
from jax.experimental import multihost_utils
from vit_jax import parallel
process, port, case = int(sys.argv[1]), sys.argv[2], sys.argv[3]
parallel.initialize_distributed(f'127.0.0.1:{port}', 2, process, heartbeat_timeout_s=%d)
with parallel.lost_peer_explains_errors():
  for i in range(40):
    multihost_utils.process_allgather(np.array([i]))
    if i == 3:
      print('gathering', flush=True)
    if case == 'fails' and process == 1 and i == 5:
      raise RuntimeError('an error of its own')
    time.sleep(0.05)
if case == 'ends' and process == 1:
  time.sleep(3)  # process 0, which holds the coordination service, ends first
print('end', flush=True)
''' % HEARTBEAT_S


def _start(case):
  port = local.free_port()
  env = dict(local.child_env(1), PYTHONPATH=str(REPO))
  return [subprocess.Popen([sys.executable, '-c', WORKER, str(i), str(port), case], cwd=REPO, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
          for i in range(2)]


def _wait_for_line(proc, want, timeout_s=120):
  end = time.monotonic() + timeout_s
  while time.monotonic() < end:
    line = proc.stdout.readline()
    if line.strip() == want:
      return
    assert line or proc.poll() is None, proc.stderr.read()[-3000:]
  raise AssertionError(f'no {want!r} within {timeout_s} s')


def test_losing_the_coordinator_ends_the_other_process_at_once_with_the_line():
  procs = _start('killed')
  _wait_for_line(procs[1], 'gathering')
  procs[0].send_signal(signal.SIGKILL)
  killed = time.monotonic()
  status = procs[1].wait(timeout=60)
  seconds = time.monotonic() - killed
  err = procs[1].stderr.read()
  procs[0].wait()
  # XLA's client may log first (the coordination service died with process 0); the status and
  # the last line are ours.
  assert status == 76, err[-3000:]
  assert seconds < 10, seconds
  assert err.strip().splitlines()[-1].startswith(
      'error: process 0 of 2 (the coordinator, 127.0.0.1:'), err[-3000:]
  assert err.strip().endswith('was lost: it cannot be reached; rerun all processes to resume from '
                              'the last checkpoint.'), err[-3000:]


def test_a_peers_own_error_is_its_status_and_the_other_names_it():
  procs = _start('fails')
  statuses = [proc.wait(timeout=120) for proc in procs]
  errs = [proc.stderr.read() for proc in procs]
  assert statuses == [76, 1], errs
  assert errs[1].strip().endswith('RuntimeError: an error of its own'), errs[1][-3000:]
  assert errs[0].strip().splitlines() == [
      'error: process 1 of 2 stopped on an error of its own (its log and exit status say which); '
      'this one stops too.'], errs[0][-3000:]


def test_processes_that_end_at_different_times_all_exit_0():
  """Recoverable mode alone would let process 0 take the service away while process 1 still runs."""
  procs = _start('ends')
  statuses = [proc.wait(timeout=120) for proc in procs]
  outs = [proc.communicate() for proc in procs]
  assert statuses == [0, 0], outs
  assert all(out.splitlines()[-1] == 'end' and 'error' not in err for out, err in outs), outs
