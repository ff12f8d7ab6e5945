"""launch.tpu: accelerator types, the exact gcloud commands (v3-8, v3-32), worker scripts, supervise."""

import os
import pathlib
import subprocess
import sys
import tempfile
import time

import pytest

from launch import gcloud
from launch import supervise
from launch import tpu
from launch import tpu_slice

REPO = pathlib.Path(__file__).resolve().parents[1]
ZONE = 'europe-west4-a'
JOB = ['--config=configs/pretrain.py:model=B/16,dataset=imagenet21k', '--config.total_steps=1000']
WORKDIR = 'gs://my-bucket/vit-b16-i21k'


@pytest.mark.parametrize('name,gcloud_name,chips,cores,hosts,runtime', [
    ('v2-8', 'v2-8', 4, 8, 1, 'tpu-ubuntu2204-base'),
    ('v3-8', 'v3-8', 4, 8, 1, 'tpu-ubuntu2204-base'),
    ('v3-32', 'v3-32', 16, 32, 4, 'tpu-ubuntu2204-base'),
    ('v3-2048', 'v3-2048', 1024, 2048, 256, 'tpu-ubuntu2204-base'),
    ('v4-8', 'v4-8', 4, 8, 1, 'tpu-ubuntu2204-base'),
    ('v4-32', 'v4-32', 16, 32, 4, 'tpu-ubuntu2204-base'),
    ('v5p-16', 'v5p-16', 8, 16, 2, 'v2-alpha-tpuv5'),
    ('v5e-8', 'v5litepod-8', 8, 8, 1, 'v2-alpha-tpuv5-lite'),
    ('v5litepod-16', 'v5litepod-16', 16, 16, 4, 'v2-alpha-tpuv5-lite'),
    ('v6e-4', 'v6e-4', 4, 4, 1, 'v2-alpha-tpuv6e'),
    ('v6e-8', 'v6e-8', 8, 8, 1, 'v2-alpha-tpuv6e'),
    ('v6e-256', 'v6e-256', 256, 256, 64, 'v2-alpha-tpuv6e')])
def test_slice_types(name, gcloud_name, chips, cores, hosts, runtime):
  kind = tpu_slice.parse(name)
  assert (kind.accelerator_type, kind.chips, kind.cores, kind.hosts, kind.default_runtime) == (
      gcloud_name, chips, cores, hosts, runtime)


@pytest.mark.parametrize('name,message', [
    ('v3-16', 'v3 sizes are 8, 32, 64'), ('v4-12', 'multiple of 8'), ('v6e-2', 'v6e sizes are 1, 4, 8'),
    ('tpu-8', 'unknown TPU accelerator type'), ('v3', 'unknown TPU accelerator type')])
def test_slice_type_errors(name, message):
  with pytest.raises(ValueError, match=message):
    tpu_slice.parse(name)


def _dry(argv):
  """Runs `python -m launch.tpu ARGV --dry_run` in-process; returns (status, commands, printed lines)."""
  lines = []
  args = tpu.parse_args(argv)
  kind = tpu_slice.parse(args.accelerator_type) if args.accelerator_type else None
  runner = tpu.DryRunRunner(kind.hosts if kind else 1, exists=args.command != 'supervise',
                            installed=args.command != 'supervise', out=lines.append)
  status = tpu.main([*argv, '--dry_run'] if '--' not in argv else
                    [*argv[:argv.index('--')], '--dry_run', *argv[argv.index('--'):]],
                    runner=runner, out=lines.append)
  return status, runner.commands, lines


SSH = lambda name, worker='all': ('gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', name, f'--zone={ZONE}',
                                  f'--worker={worker}', '--quiet')
DESCRIBE = lambda name: ('gcloud', 'compute', 'tpus', 'tpu-vm', 'describe', name, f'--zone={ZONE}',
                         '--format=value(state)')


@pytest.mark.parametrize('accelerator,hosts', [('v3-8', 1), ('v3-32', 4)])
def test_supervise_dry_run_prints_the_exact_commands(accelerator, hosts):
  name = f'vit-{accelerator}'
  status, commands, lines = _dry(['supervise', f'--name={name}', f'--zone={ZONE}',
                                  f'--accelerator_type={accelerator}', '--spot', f'--workdir={WORKDIR}/',
                                  '--', *JOB])
  assert status == 0
  bundle = os.path.join(tempfile.gettempdir(), f'vit_jax-{name}.tar.gz')
  status_cmd = (*SSH(name), f'--command={gcloud.status_script()}')
  start_script = gcloud.start_script('vit_jax.main', [*JOB, f'--workdir={WORKDIR}'], hosts=hosts)
  assert [c.argv for c in commands] == [
      DESCRIBE(name),
      ('gcloud', 'compute', 'tpus', 'tpu-vm', 'create', name, f'--zone={ZONE}',
       f'--accelerator-type={accelerator}', '--version=tpu-ubuntu2204-base', '--spot'),
      DESCRIBE(name), status_cmd,
      ('git', '-C', '.', 'archive', '--format=tar.gz', '-o', bundle, 'HEAD'),
      ('gcloud', 'compute', 'tpus', 'tpu-vm', 'scp', bundle, f'{name}:vit_jax.tar.gz', f'--zone={ZONE}',
       '--worker=all', '--quiet'),
      (*SSH(name), f'--command={gcloud.install_script("python3.11")}'),
      DESCRIBE(name), status_cmd,
      (*SSH(name), f'--command={start_script}'),
      (*SSH(name, worker='0'), '--command=tail -n 100 -F "$HOME/vit_jax_run"/log'),
      DESCRIBE(name), status_cmd]
  # The job inside the start script: one program on every worker; on a pod each worker adds the
  # distributed flags it reads from the TPU metadata.
  job = ('"$HOME/vit_jax_venv"/bin/python -m vit_jax.main '
         '--config=configs/pretrain.py:model=B/16,dataset=imagenet21k --config.total_steps=1000 '
         f'--workdir={WORKDIR}')
  if hosts == 1:
    assert f'{{ {job}; }} >> "$HOME/vit_jax_run"/log 2>&1' in start_script
  else:
    assert (f'{job} --coordinator_address="${{first##*:}}:8482" --num_processes={hosts} '
            '--process_id="$w"; } >> "$HOME/vit_jax_run"/log 2>&1') in start_script
  plural = 's' if hosts > 1 else ''
  assert lines[0] == f'# {accelerator}: {hosts * 4} chips ({hosts * 8} TensorCores) in {hosts} host{plural}'
  assert lines[-1] == '# supervise: done: the job finished (worker 0 exit status 0)'


@pytest.mark.parametrize('accelerator', ['v3-8', 'v3-32'])
def test_single_subcommands_exact_commands(accelerator):
  base = ['--name=vit', f'--zone={ZONE}', '--project=my-proj']
  flags = ('--zone=europe-west4-a', '--project=my-proj')
  _, commands, _ = _dry(['create', *base, f'--accelerator_type={accelerator}', '--runtime_version=rt-1'])
  assert [c.argv for c in commands] == [('gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'vit', *flags,
                                         f'--accelerator-type={accelerator}', '--version=rt-1')]
  _, commands, _ = _dry(['create', *base, f'--accelerator_type={accelerator}', '--queued', '--spot'])
  assert [c.argv for c in commands] == [
      ('gcloud', 'compute', 'tpus', 'queued-resources', 'create', 'vit', *flags, '--node-id=vit',
       f'--accelerator-type={accelerator}', '--runtime-version=tpu-ubuntu2204-base', '--spot')]
  _, commands, _ = _dry(['delete', *base])
  assert [c.argv for c in commands] == [('gcloud', 'compute', 'tpus', 'tpu-vm', 'delete', 'vit', *flags,
                                         '--quiet')]
  _, commands, _ = _dry(['delete', *base, '--queued'])
  assert [c.argv for c in commands] == [
      ('gcloud', 'compute', 'tpus', 'queued-resources', 'delete', 'vit', *flags, '--force', '--quiet')]
  ssh = ('gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'vit', *flags)
  _, commands, _ = _dry(['stop', *base])
  assert [c.argv for c in commands] == [(*ssh, '--worker=all', '--quiet', f'--command={gcloud.stop_script()}')]
  _, commands, _ = _dry(['install', *base, '--git_url=https://example.com/vit.git', '--git_ref=v1'])
  assert [c.argv for c in commands] == [(*ssh, '--worker=all', '--quiet', '--command=' + gcloud.install_script(
      'python3.11', 'https://example.com/vit.git', 'v1'))]
  assert "git clone -q https://example.com/vit.git" in commands[0].argv[-1]
  # `run` starts on an existing, installed slice and follows worker 0's log; it never creates.
  status, commands, _ = _dry(['run', *base, f'--accelerator_type={accelerator}', f'--workdir={WORKDIR}',
                              '--module=launch.check', '--env=TFDS_DATA_DIR=gs://my-bucket/tfds', '--'])
  assert status == 0
  assert [c.kind for c in commands] == ['describe', 'status', 'upload_env', 'start', 'logs', 'describe',
                                        'status']
  assert commands[2].secret_file[1] == "export TFDS_DATA_DIR=gs://my-bucket/tfds\n"
  assert (f'. "$HOME/.vit_jax_env"; set +a; cd "$HOME/vit_jax"' in commands[3].argv[-1])
  assert 'gs://my-bucket/tfds' not in ' '.join(' '.join(c.argv) for c in commands)


@pytest.mark.parametrize('argv,message', [
    (['run', '--name=vit', f'--zone={ZONE}', '--accelerator_type=v3-8', '--workdir=/tmp/w', '--', '-x'],
     "--workdir='/tmp/w': pass a gs://BUCKET/PATH"),
    (['run', '--name=vit', f'--zone={ZONE}', '--accelerator_type=v3-8', f'--workdir={WORKDIR}', '--',
      '--workdir=gs://b/x'], '--workdir after -- is set by the launcher'),
    (['run', '--name=vit', f'--zone={ZONE}', '--accelerator_type=v3-8', f'--workdir={WORKDIR}', '--',
      '--process_id=1'], '--process_id after -- is set by the launcher'),
    (['run', '--name=vit', f'--zone={ZONE}', f'--workdir={WORKDIR}'], '`run` needs --accelerator_type'),
    (['create', '--name=Vit_1', f'--zone={ZONE}', '--accelerator_type=v3-8'], "--name='Vit_1'"),
    (['create', '--name=vit', '--zone=europe', '--accelerator_type=v3-8'], "--zone='europe' is not a zone"),
    (['create', '--name=vit', f'--zone={ZONE}', '--accelerator_type=v3-12'], "'v3-12' does not exist"),
    (['run', '--name=vit', f'--zone={ZONE}', '--accelerator_type=v3-8', f'--workdir={WORKDIR}', '--env=X',
      '--', '-x'], "an --env entry (1 characters, not shown) is not KEY=VALUE")])
def test_cli_rejects_bad_input_in_one_line(argv, message):
  proc = subprocess.run([sys.executable, '-m', 'launch.tpu', *argv, '--dry_run'] if '--' not in argv else
                        [sys.executable, '-m', 'launch.tpu', *argv[:argv.index('--')], '--dry_run',
                         *argv[argv.index('--'):]], cwd=REPO, capture_output=True, text=True, timeout=60)
  assert proc.returncode == 2, proc.stdout + proc.stderr
  assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_missing_gcloud_is_one_clear_line():
  proc = subprocess.run([sys.executable, '-m', 'launch.tpu', 'delete', '--name=vit', f'--zone={ZONE}'],
                        cwd=REPO, capture_output=True, text=True, timeout=60,
                        env=dict(os.environ, PATH='/nonexistent'))
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1] == (
      'launch.tpu: gcloud is not installed: install the Google Cloud CLI '
      '(https://cloud.google.com/sdk/docs/install) and run `gcloud init`')


# --- the worker scripts, run by bash in a fake home directory ----------------------------------

FAKE_JOB = '''
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: (print('checkpoint at SIGTERM', flush=True), sys.exit(0)))
args = dict(a[2:].split('=', 1) for a in sys.argv[1:])
print('job', sys.argv[1:], flush=True)
time.sleep(float(args.get('sleep', 0)))
sys.exit(int(args.get('exit', 0)))
'''


@pytest.fixture()
def worker_home(tmp_path):
  (tmp_path / 'vit_jax').mkdir()
  (tmp_path / 'vit_jax' / 'fake_job.py').write_text(FAKE_JOB)
  (tmp_path / 'vit_jax_venv' / 'bin').mkdir(parents=True)
  (tmp_path / 'vit_jax_venv' / 'bin' / 'python').symlink_to(sys.executable)
  (tmp_path / 'bin').mkdir()
  # The metadata server: answers from files under ~/metadata, fails for missing keys.
  (tmp_path / 'bin' / 'curl').write_text('#!/bin/bash\nfor a; do :; done; cat "$HOME/metadata/${a##*/}"\n')
  (tmp_path / 'bin' / 'curl').chmod(0o755)
  (tmp_path / 'metadata').mkdir()
  (tmp_path / 'metadata' / 'agent-worker-number').write_text('0')
  return tmp_path


def _bash(home, script):
  env = dict(os.environ, HOME=str(home), PATH=f'{home}/bin:{os.environ["PATH"]}')
  return subprocess.run(['bash', '-c', script], env=env, capture_output=True, text=True, timeout=30)


def _status_becomes(home, want, timeout_s=20, worker='0'):
  end = time.monotonic() + timeout_s
  while time.monotonic() < end:
    out = _bash(home, gcloud.status_script()).stdout.strip()
    if out == f'worker={worker} {want}':
      return True
    time.sleep(0.1)
  return False


def test_worker_scripts_start_status_stop(worker_home):
  assert _bash(worker_home, gcloud.status_script()).stdout == 'worker=0 not-installed\n'
  (worker_home / 'vit_jax' / '.installed').touch()
  assert _bash(worker_home, gcloud.status_script()).stdout == 'worker=0 not-started\n'
  start = gcloud.start_script('fake_job', ['--sleep=60', "--config=configs/x.py:a=1,b='two words'"])
  proc = _bash(worker_home, start)
  assert proc.returncode == 0 and proc.stdout.startswith('started on '), proc.stderr
  assert _status_becomes(worker_home, 'running')
  again = _bash(worker_home, start)  # one job at a time
  assert again.returncode == 1 and 'stop it before starting another' in again.stderr
  log = worker_home / 'vit_jax_run' / 'log'
  end = time.monotonic() + 20
  while not (log.exists() and 'job [' in log.read_text()) and time.monotonic() < end:  # SIGTERM handler set
    time.sleep(0.05)
  assert _bash(worker_home, gcloud.stop_script()).stdout.startswith('stopping on ')
  assert _status_becomes(worker_home, 'exit:0')
  log = log.read_text()
  assert "job ['--sleep=60', \"--config=configs/x.py:a=1,b='two words'\"]" in log
  assert 'checkpoint at SIGTERM' in log
  # A failing job's status is recorded, and a new start clears the old one.
  assert _bash(worker_home, gcloud.start_script('fake_job', ['--exit=3'])).returncode == 0
  assert _status_becomes(worker_home, 'exit:3')
  assert _bash(worker_home, gcloud.stop_script()).stdout.startswith('nothing running on ')


def test_worker_script_on_a_pod_passes_the_distributed_flags(worker_home):
  (worker_home / 'vit_jax' / '.installed').touch()
  (worker_home / 'metadata' / 'agent-worker-number').write_text('3')
  (worker_home / 'metadata' / 'worker-network-endpoints').write_text(
      't1v-n-1-w-0:0:10.164.0.7,t1v-n-1-w-1:1:10.164.0.8,t1v-n-1-w-2:2:10.164.0.9,t1v-n-1-w-3:3:10.164.0.10')
  assert _bash(worker_home, gcloud.start_script('fake_job', ['--workdir=gs://b/w'], hosts=4)).returncode == 0
  assert _status_becomes(worker_home, 'exit:0', worker='3')
  log = (worker_home / 'vit_jax_run' / 'log').read_text()
  assert ("job ['--workdir=gs://b/w', '--coordinator_address=10.164.0.7:8482', '--num_processes=4', "
          "'--process_id=3']") in log
  # New-style endpoints are bare host names; without metadata the job fails and says so.
  (worker_home / 'metadata' / 'worker-network-endpoints').write_text('t1v-n-1-w-0,t1v-n-1-w-1')
  assert _bash(worker_home, gcloud.start_script('fake_job', [], hosts=2)).returncode == 0
  assert _status_becomes(worker_home, 'exit:0', worker='3')
  assert "'--coordinator_address=t1v-n-1-w-0:8482', '--num_processes=2'" in (
      worker_home / 'vit_jax_run' / 'log').read_text()
  (worker_home / 'metadata' / 'worker-network-endpoints').unlink()
  assert _bash(worker_home, gcloud.start_script('fake_job', [], hosts=2)).returncode == 0
  assert _status_becomes(worker_home, 'exit:1', worker='3')


# --- the supervise loop against a scripted cloud ----------------------------------------------

class FakeCloud:
  """A slice whose state and workers' jobs change when the supervisor sleeps (time passes)."""

  def __init__(self, hosts, state=None, workers=None, events=()):
    self.hosts, self.state = hosts, state
    self.workers = workers or ['not-installed'] * hosts
    self.events = list(events)  # applied one per sleep
    self.kinds = []
    self.streams = 0
    self.fail = {}  # kind -> number of times it fails next

  def run(self, command):
    kind = command.kind
    self.kinds.append(kind)
    assert len(self.kinds) < 200, 'the supervise loop does not end'
    if self.fail.get(kind):
      self.fail[kind] -= 1
      return 1, f'{kind} failed'
    if kind == 'describe':
      return (1, 'NOT_FOUND') if self.state is None else (0, self.state + '\n')
    if kind == 'status':
      if self.state != 'READY':
        return 255, 'ssh: connect to host: Connection refused'
      return 0, ''.join(f'worker={i} {s}\n' for i, s in enumerate(self.workers))
    if kind == 'create':
      self.state, self.workers = 'READY', ['not-installed'] * self.hosts
    elif kind == 'delete':
      self.state = None
    elif kind == 'install':
      self.workers = ['not-started'] * self.hosts
    elif kind == 'start':
      self.workers = ['running'] * self.hosts
    elif kind == 'stop':
      self.workers = ['exit:0' if s == 'running' else s for s in self.workers]
    return 0, ''

  def stream(self, command):
    assert command.kind == 'logs' and '--worker=0' in command.argv
    self.streams += 1
    return lambda: None

  def sleep(self, seconds):
    if seconds and self.events:  # time passes only when the supervisor waits
      self.events.pop(0)(self)


def _set(**changes):
  def apply(cloud):
    for key, value in changes.items():
      setattr(cloud, key, value)
  return apply


def _supervisor(cloud, create=True, max_failures=2):
  target = gcloud.Target('vit', ZONE)
  plan = supervise.Plan(
      target=target, hosts=cloud.hosts,
      create=gcloud.create(target, 'v3-32', 'tpu-ubuntu2204-base', True) if create else None,
      install=[gcloud.ssh(target, 'install', 'true')] if create else (),
      start=gcloud.ssh(target, 'start', 'true'), max_failures=max_failures, poll_s=1)
  lines = []
  return supervise.Supervisor(plan, cloud, log=lines.append, sleep=cloud.sleep), lines


def _actions(kinds):
  return [k for k in kinds if k not in ('describe', 'status')]


def test_supervise_recreates_a_preempted_slice_and_resumes():
  cloud = FakeCloud(4, events=[
      _set(),                                   # after create
      _set(), _set(),                           # running...
      _set(state='PREEMPTED'),                  # preempted mid-run
      _set(), _set(),                           # after re-create, running again
      _set(workers=['exit:0'] * 4)])            # finished
  loop, lines = _supervisor(cloud)
  assert loop.loop() == 0
  assert _actions(cloud.kinds) == ['create', 'install', 'start', 'delete', 'create', 'install', 'start']
  assert loop.preemptions == 1 and loop.failures == 0 and cloud.streams == 2
  assert 'supervise: recreate: the slice is PREEMPTED' in lines


def test_supervise_stops_at_the_budget_cap_without_restarting():
  cloud = FakeCloud(4, state='READY', workers=['not-started'] * 4,
                    events=[_set(workers=['exit:75'] * 4)])
  loop, lines = _supervisor(cloud)
  assert loop.loop() == 75
  assert _actions(cloud.kinds) == ['start']
  assert lines[-1] == 'supervise: done: the job stopped by the compute budget cap (worker 0 exit status 75)'


def test_supervise_restarts_failures_then_gives_up_with_their_status():
  crash = _set(workers=['exit:0', 'exit:0', 'exit:134', 'exit:0'])
  cloud = FakeCloud(4, state='READY', workers=['not-started'] * 4, events=[crash] * 10)
  loop, _ = _supervisor(cloud, max_failures=2)
  assert loop.loop() == 134
  assert _actions(cloud.kinds) == ['start'] * 3 and loop.failures == 3


def test_supervise_restarts_the_whole_job_after_a_lost_peer_without_counting_it():
  """Exit 76 (vit_jax.main lost a peer process) on every failed worker: like a preemption."""
  cloud = FakeCloud(4, state='READY', workers=['not-started'] * 4, events=[
      # Worker 2's host restarted under the job: its job is gone, the others lost their peer.
      _set(workers=['exit:76', 'exit:76', 'not-started', 'running']),  # worker 3 not out yet
      _set(),                                                          # stopped: checkpointed
      _set(workers=['exit:0'] * 4)])                                   # the restarted job finished
  loop, lines = _supervisor(cloud, max_failures=0)  # a counted restart would give up at once
  assert loop.loop() == 0
  assert _actions(cloud.kinds) == ['start', 'stop', 'start']
  assert (loop.failures, loop.lost_peers, loop.preemptions) == (0, 1, 0)
  assert ('supervise: resume: the job lost a peer process (status 76 on workers 0, 1): a host failed '
          'or was restarted; starting the whole job again from the last checkpoint') in lines
  # A worker that failed on its own is the failure (counted); the others' 76 followed from it.
  cloud = FakeCloud(4, state='READY', workers=['not-started'] * 4,
                    events=[_set(workers=['exit:76', 'exit:137', 'exit:76', 'exit:76'])])
  loop, lines = _supervisor(cloud, max_failures=0)
  assert loop.loop() == 137 and loop.failures == 1 and loop.lost_peers == 0
  assert 'supervise: restart: the job on worker 1 exited with status 137' in lines
  # `run` restarts nothing: it ends with the job's 76.
  cloud = FakeCloud(2, state='READY', workers=['not-started'] * 2,
                    events=[_set(workers=['exit:76', 'exit:76'])])
  loop, lines = _supervisor(cloud, create=False)
  assert loop.loop() == 76 and _actions(cloud.kinds) == ['start']
  assert lines[-1].startswith('supervise: not restarting: the job lost a peer process')


def test_supervise_stops_stragglers_when_one_worker_fails():
  cloud = FakeCloud(2, state='READY', workers=['not-started'] * 2, events=[
      _set(workers=['running', 'exit:1']),  # worker 1 crashed, worker 0 still runs
      _set(),                               # after the stop, worker 0 checkpointed and exited
      _set(workers=['exit:0', 'exit:0'])])  # the restarted job finished
  loop, _ = _supervisor(cloud)
  assert loop.loop() == 0
  assert _actions(cloud.kinds) == ['start', 'stop', 'start'] and loop.failures == 1


def test_supervise_follows_a_running_job_and_restarts_a_finished_one():
  cloud = FakeCloud(2, state='READY', workers=['running'] * 2, events=[_set(workers=['exit:0'] * 2)])
  loop, _ = _supervisor(cloud)
  assert loop.loop() == 0
  assert _actions(cloud.kinds) == [] and cloud.streams == 1  # attached, started nothing
  # Statuses from an earlier run are stale: the job is started again (it resumes from the workdir).
  cloud = FakeCloud(2, state='READY', workers=['exit:0'] * 2, events=[_set(workers=['exit:0'] * 2)])
  loop, _ = _supervisor(cloud)
  assert loop.loop() == 0 and _actions(cloud.kinds) == ['start']


def test_supervise_retries_failed_steps():
  cloud = FakeCloud(4, events=[_set(), _set(), _set(), _set(workers=['exit:0'] * 4)])
  cloud.fail = {'create': 1, 'install': 2}
  loop, lines = _supervisor(cloud, max_failures=2)
  assert loop.loop() == 0
  assert _actions(cloud.kinds) == ['create', 'create', 'install', 'install', 'install', 'start']
  assert any(line.startswith('supervise: install failed with status 1') for line in lines)
  # A step that keeps failing ends the loop.
  cloud = FakeCloud(1)
  cloud.fail = {'create': 99}
  loop, lines = _supervisor(cloud, max_failures=2)
  assert loop.loop() == 1 and _actions(cloud.kinds) == ['create'] * 3


def test_run_without_create_reports_a_lost_slice():
  cloud = FakeCloud(1, state='PREEMPTED')
  loop, lines = _supervisor(cloud, create=False)
  assert loop.loop() == 1 and _actions(cloud.kinds) == []
  assert "supervise: not re-creating: the slice is PREEMPTED; `supervise` would" in lines


@pytest.mark.parametrize('state,statuses,action', [
    (None, None, supervise.Action.CREATE),
    ('SUSPENDED', None, supervise.Action.RECREATE),
    ('STOPPED', None, supervise.Action.GIVE_UP),
    ('WAITING_FOR_RESOURCES', None, supervise.Action.WAIT),
    ('READY', {'0': 'running'}, supervise.Action.WAIT),  # 1 of 2 answered
    ('ACTIVE', {'0': 'not-installed', '1': 'not-started'}, supervise.Action.INSTALL),
    ('READY', {'0': 'running', '1': 'not-started'}, supervise.Action.STOP),
    ('READY', {'0': 'exit:0', '1': 'running'}, supervise.Action.WAIT),
    ('READY', {'0': 'exit:0', '1': 'exit:75'}, supervise.Action.DONE),
    ('READY', {'0': 'exit:76', '1': 'not-started'}, supervise.Action.RESUME),
    ('READY', {'0': 'exit:76', '1': 'exit:1'}, supervise.Action.RESTART)])
def test_decide(state, statuses, action):
  assert supervise.decide(state, statuses, hosts=2).action is action


def test_parse_statuses_ignores_other_output():
  out = 'Using ssh batch size of 1.\nworker=1 running\nworker=0 exit:0\nwarning: x\n'
  assert supervise.parse_statuses(out) == {'1': 'running', '0': 'exit:0'}


def test_run_dry_run_prints_its_own_steps_and_invents_no_ending():
  """`run --dry_run`: the commands `run` takes, in order, each step named; no made-up answers."""
  argv = ['run', '--name=vit', f'--zone={ZONE}', '--accelerator_type=v3-32', f'--workdir={WORKDIR}',
          '--poll_s=30', '--', *JOB]
  status, commands, lines = _dry(argv)
  assert status == 0
  start = gcloud.start_script('vit_jax.main', [*JOB, f'--workdir={WORKDIR}'], hosts=4)
  check = [DESCRIBE('vit'), (*SSH('vit'), f'--command={gcloud.status_script()}')]
  assert [c.argv for c in commands] == [
      *check, (*SSH('vit'), f'--command={start}'),
      (*SSH('vit', worker='0'), '--command=tail -n 100 -F "$HOME/vit_jax_run"/log'), *check]
  steps = [line for line in lines if line.startswith('# ')]
  assert [line[:5] for line in steps] == ['# v3-', '# 0. ', '# 1. ', '# 2. ', '# 3. ', '# 4. ']
  assert steps[1] == ('# 0. compile the job for v3-32 on this machine first (exit 2 stops here; '
                      '--skip_preflight skips it): -m vit_jax.main ' + ' '.join(JOB) +
                      ' --compile_only --topology=v3-32')
  assert steps[5].startswith('# 4. every 30 s until the job has ended on every worker')
  assert not any('supervise' in line or 'finished' in line or 'exit status' in line for line in lines)
  assert lines[-1] == str(commands[-1])  # ends on the poll, not on an outcome
  # As a user runs it: the same lines on stdout, nothing on stderr.
  proc = subprocess.run([sys.executable, '-m', 'launch.tpu', *argv[:6], '--dry_run', *argv[6:]],
                        capture_output=True, text=True, cwd=REPO, check=False,
                        env={**os.environ, 'PYTHONPATH': str(REPO)})
  assert (proc.returncode, proc.stderr) == (0, '')
  assert proc.stdout.splitlines() == lines


# --- secrets passed with --env: a fake gcloud records everything it is given ------------------

FAKE_GCLOUD = r'''#!/usr/bin/env python3
import json, os, stat, sys
state = os.environ['FAKE_GCLOUD_DIR']
argv = sys.argv[1:]
record = {'argv': argv}
if 'scp' in argv:  # what a worker would receive: the file's content and mode
  local = argv[argv.index('scp') + 1]
  record['mode'] = oct(stat.S_IMODE(os.stat(local).st_mode))
  record['content'] = open(local).read()
with open(os.path.join(state, 'calls.jsonl'), 'a') as f:
  f.write(json.dumps(record) + '\n')
command = next((a for a in argv if a.startswith('--command=')), '')
if 'describe' in argv:
  print('READY')
elif 'exit_code' in command and 'agent-worker-number' in command:  # the status script
  started = os.path.exists(os.path.join(state, 'started'))
  print('worker=0 ' + ('exit:0' if started else 'not-started'))
elif 'setsid nohup' in command:  # the start script
  open(os.path.join(state, 'started'), 'w').close()
'''


def test_env_secret_is_never_on_a_command_line_or_printed(tmp_path):
  secret = 'wandb-s3cr3t-7f9a'
  (tmp_path / 'bin').mkdir()
  fake = tmp_path / 'bin' / 'gcloud'
  fake.write_text(FAKE_GCLOUD)
  fake.chmod(0o755)
  env = dict(os.environ, PATH=f'{tmp_path / "bin"}:{os.environ["PATH"]}', FAKE_GCLOUD_DIR=str(tmp_path),
             TMPDIR=str(tmp_path))
  argv = ['run', '--name=vit', f'--zone={ZONE}', '--accelerator_type=v3-8', f'--workdir={WORKDIR}',
          f'--env=WANDB_API_KEY={secret}', '--env=TFDS_DATA_DIR=gs://b/tfds', '--poll_s=0.05',
          '--skip_preflight', '--', *JOB]
  proc = subprocess.run([sys.executable, '-m', 'launch.tpu', *argv], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  calls = [__import__('json').loads(l) for l in (tmp_path / 'calls.jsonl').read_text().splitlines()]
  assert secret not in proc.stdout + proc.stderr
  assert not any(secret in a for c in calls for a in c['argv'])  # never on a command line
  uploads = [c for c in calls if 'scp' in c['argv']]
  assert len(uploads) == 1 and uploads[0]['mode'] == '0o600'
  assert uploads[0]['argv'][5:] == ['vit:.vit_jax_env', f'--zone={ZONE}', '--worker=all', '--quiet']
  assert f"export WANDB_API_KEY={secret}\n" in uploads[0]['content']
  assert not (tmp_path / 'vit_jax-vit.env').exists()  # the local copy is gone
  start = [c for c in calls if any('setsid nohup' in a for a in c['argv'])]
  assert len(start) == 1 and calls.index(start[0]) == calls.index(uploads[0]) + 1
  # The dry run shows the names only.
  dry = subprocess.run([sys.executable, '-m', 'launch.tpu', *argv[:-len(JOB) - 1], '--dry_run', '--', *JOB],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
  assert dry.returncode == 0 and secret not in dry.stdout + dry.stderr
  assert 'WANDB_API_KEY=*** TFDS_DATA_DIR=***' in dry.stdout


def test_a_job_the_preflight_refuses_creates_and_starts_nothing(tmp_path):
  """`run` compiles the job for the slice first (vit_jax.main --compile_only): a job that cannot
  run there ends the launch in one line, exit 2, before any gcloud call."""
  (tmp_path / 'bin').mkdir()
  fake = tmp_path / 'bin' / 'gcloud'
  fake.write_text(FAKE_GCLOUD)
  fake.chmod(0o755)
  env = dict(os.environ, PATH=f'{tmp_path / "bin"}:{os.environ["PATH"]}', FAKE_GCLOUD_DIR=str(tmp_path))
  for command in ('run', 'supervise'):
    proc = subprocess.run(
        [sys.executable, '-m', 'launch.tpu', command, '--name=vit', f'--zone={ZONE}',
         '--accelerator_type=v3-8', f'--workdir={WORKDIR}', '--',
         '--config=configs/quickstart.py', '--config.batch_size=12'],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    refused = [l for l in proc.stderr.splitlines() if l.startswith('launch.tpu: ')]
    assert refused == [
        'launch.tpu: the preflight refused the job, nothing was created or started: '
        'batch_size=12 is not divisible by accum_steps (1) x data-parallel shards (8 = data x '
        'fsdp); use a multiple of 8. (fix the job, or pass --skip_preflight to launch it anyway)']
    assert not (tmp_path / 'calls.jsonl').exists()  # gcloud was never called


def test_worker_job_reads_the_env_file_not_its_command_line(worker_home):
  (worker_home / 'vit_jax' / '.installed').touch()
  (worker_home / 'vit_jax' / 'env_job.py').write_text(
      'import os, time\nprint("key", os.environ.get("WANDB_API_KEY"), flush=True)\n'
      'print("cmdline", open("/proc/self/cmdline").read(), flush=True)\n')
  (worker_home / '.vit_jax_env').write_text(gcloud.env_file_content(["WANDB_API_KEY=it's s3cret"]))
  script = gcloud.start_script('env_job', ['--x=1'], env_file=True)
  assert 's3cret' not in script
  assert _bash(worker_home, script).returncode == 0
  assert _status_becomes(worker_home, 'exit:0')
  log = (worker_home / 'vit_jax_run' / 'log').read_text()
  assert "key it's s3cret\n" in log
  assert 's3cret' not in log.split('cmdline', 1)[1]
  assert oct((worker_home / '.vit_jax_env').stat().st_mode & 0o777) == '0o600'
