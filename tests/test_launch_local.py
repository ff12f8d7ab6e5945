"""launch.local: joined processes on localhost, prefixed output, worst status, no orphans."""

import io
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from launch import local

REPO = pathlib.Path(__file__).resolve().parents[1]

# A child without jax: per-process behaviour from flags like --exit=0,3 (one value per process id).
FAKE_CHILD = textwrap.dedent('''\
    import os, signal, sys, time
    flags = dict(a[2:].split('=', 1) for a in sys.argv[1:] if a.startswith('--') and '=' in a)
    pid = int(flags['process_id'])
    pick = lambda name, default: flags[name].split(',')[pid] if name in flags else default
    if pick('on_term', 'die') == 'ignore':
      signal.signal(signal.SIGTERM, signal.SIG_IGN)
    elif pick('on_term', 'die') == 'exit0':
      signal.signal(signal.SIGTERM, lambda *_: (print('got SIGTERM', flush=True), sys.exit(0)))
    print('pid', os.getpid(), 'args', ' '.join(sys.argv[1:]), flush=True)
    print('env', os.environ['JAX_PLATFORMS'], os.environ['XLA_FLAGS'], flush=True)
    time.sleep(float(pick('sleep', '0')))
    print('partial line without newline', end='', flush=True) if 'partial' in flags else None
    sys.exit(int(pick('exit', '0')))
''')


@pytest.fixture()
def fake_env(tmp_path):
  (tmp_path / 'fake_child.py').write_text(FAKE_CHILD)
  env = dict(os.environ, PYTHONPATH=f'{tmp_path}{os.pathsep}{REPO}')
  env['XLA_FLAGS'] = '--xla_cpu_enable_fast_math=false --xla_force_host_platform_device_count=8'
  return env


def run_fake(env, flags, num_processes=2, **kwargs):
  out = io.StringIO()
  start = time.monotonic()
  result = local.run(flags, num_processes=num_processes, devices_per_process=3, module='fake_child',
                     env=env, output=out, **kwargs)
  return result, out.getvalue(), time.monotonic() - start


def test_children_get_flags_env_and_prefixes(fake_env):
  result, out, _ = run_fake(fake_env, ['--config=configs/x.py:a=1', '--workdir=/tmp/w', '--partial=1'],
                            num_processes=3, port=12345)
  assert result.returncode == 0 and result.process_returncodes == [0, 0, 0]
  for i in range(3):
    assert (f'[{i}] pid ' in out and f'args --config=configs/x.py:a=1 --workdir=/tmp/w --partial=1 '
            f'--coordinator_address=127.0.0.1:12345 --num_processes=3 --process_id={i}\n' in out)
    # Our device count replaces the inherited one; other XLA flags are kept.
    assert f'[{i}] env cpu --xla_cpu_enable_fast_math=false --xla_force_host_platform_device_count=3\n' in out
  assert all(f'[{i}] partial line without newline\n' in out for i in range(3))
  assert all(line[:4] in ('[0] ', '[1] ', '[2] ') for line in out.splitlines())


def test_failure_stops_the_others_and_sets_status(fake_env):
  result, out, elapsed = run_fake(fake_env, ['--exit=0,3', '--sleep=60,0.2'])
  assert result.first_failure == 1
  assert result.returncode == 3
  assert result.process_returncodes == [128 + signal.SIGTERM, 3]
  assert elapsed < 20, out


def test_sigkill_after_grace_when_sigterm_is_ignored(fake_env):
  result, _, elapsed = run_fake(fake_env, ['--exit=0,5', '--sleep=60,0.2', '--on_term=ignore,die'],
                                grace_s=0.5)
  assert result.returncode == 5
  assert result.process_returncodes == [128 + signal.SIGKILL, 5]
  assert elapsed < 20


def test_budget_cap_is_an_orderly_stop(fake_env):
  # Process 0 hits the cap first; process 1 must be left to finish, not killed.
  result, _, _ = run_fake(fake_env, ['--exit=75,75', '--sleep=0,1.0'])
  assert result.process_returncodes == [75, 75]
  assert result.returncode == 75 and result.first_failure is None


def test_timeout_stops_everything(fake_env):
  result, _, elapsed = run_fake(fake_env, ['--sleep=60,60'], timeout_s=0.5, grace_s=1)
  assert result.returncode == local.TIMEOUT_EXIT
  assert result.process_returncodes == [128 + signal.SIGTERM] * 2
  assert elapsed < 20


@pytest.mark.parametrize('statuses,first,want', [
    ([0, 0], None, 0), ([0, 75], None, 75), ([75, 1], None, 1),
    ([143, 2], 1, 2), ([137, 75], None, 137)])
def test_worst_status(statuses, first, want):
  assert local.worst_status(statuses, first) == want


def _launcher(env, *args):
  return subprocess.Popen([sys.executable, '-m', 'launch.local', *args], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_children(proc, n):
  """Reads the launcher's output until n children printed their pid; returns the pids."""
  pids = []
  while len(pids) < n:
    line = proc.stdout.readline()
    assert line, 'launcher ended before its children started'
    if ' pid ' in line:
      pids.append(int(line.split()[2]))
  return pids


def _gone(pid, timeout_s=10.0):
  """True once `pid` no longer runs (absent, or a zombie nobody reaped)."""
  end = time.monotonic() + timeout_s
  while time.monotonic() < end:
    try:
      state = pathlib.Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
      return True
    if state in ('Z', 'X'):
      return True
    time.sleep(0.05)
  return False


def test_sigterm_to_launcher_is_forwarded(fake_env):
  proc = _launcher(fake_env, '--num_processes=2', '--module=fake_child', '--',
                   '--sleep=60,60', '--on_term=exit0,exit0')
  pids = _wait_for_children(proc, 2)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=30)
  # The children checkpoint-and-exit 0 on SIGTERM, so the launcher exits 0 too.
  assert proc.returncode == 0, out
  assert '[0] got SIGTERM' in out and '[1] got SIGTERM' in out
  assert all(_gone(p) for p in pids)


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='parent-death signal is Linux-only')
def test_no_orphans_when_launcher_is_killed(fake_env):
  proc = _launcher(fake_env, '--num_processes=2', '--module=fake_child', '--', '--sleep=60,60')
  pids = _wait_for_children(proc, 2)
  proc.kill()
  proc.wait(timeout=10)
  assert all(_gone(p) for p in pids)


@pytest.mark.parametrize('args,message', [
    (['--num_processes=0', '--', '--workdir=w'], '--num_processes=0 must be at least 1'),
    (['--num_processes=2', '--', '--process_id=1'], '--process_id is set by the launcher'),
    (['--num_processes=2', '--module=not a module'], 'is not a dotted module name'),
    (['--num_processes=2', '--port=70000'], 'is not a TCP port')])
def test_cli_rejects_bad_input_in_one_line(args, message):
  proc = subprocess.run([sys.executable, '-m', 'launch.local', *args], cwd=REPO, capture_output=True,
                        text=True, timeout=60)
  assert proc.returncode == 2
  assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.parametrize('num_processes,devices,want', [(2, 4, 12036), (4, 2, 36012)])
def test_collectives_across_processes(num_processes, devices, want):
  """launch.check over real jax.distributed + gloo: the global sum needs every process's rows."""
  out = io.StringIO()
  result = local.run([], num_processes=num_processes, devices_per_process=devices,
                     module='launch.check', cwd=str(REPO), output=out, timeout_s=120)
  assert result.returncode == 0, out.getvalue()
  for i in range(num_processes):
    assert (f'[{i}] process {i}/{num_processes} platform=cpu devices local={devices} '
            f'global={num_processes * devices} sum={want} expected={want} '
            f'process_ids={list(range(num_processes))} OK' in out.getvalue())
