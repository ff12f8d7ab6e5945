"""Cloud TPU VM launcher: create a slice, install vit_jax on every worker, run, watch, re-create.

  python -m launch.tpu create    --name=vit --zone=europe-west4-a --accelerator_type=v3-32 [--spot] [--queued]
  python -m launch.tpu install   --name=vit --zone=europe-west4-a [--source=. | --git_url=URL --git_ref=REF]
  python -m launch.tpu run       --name=vit --zone=europe-west4-a --accelerator_type=v3-32 \\
                                 --workdir=gs://BUCKET/vit-b16-i21k -- --config=configs/pretrain.py:model=B/16,dataset=imagenet21k
  python -m launch.tpu logs|status|stop|delete --name=vit --zone=europe-west4-a
  python -m launch.tpu supervise (the flags of create, install and run)

`run` and `supervise` first compile the job for the slice on this machine
(`python -m vit_jax.main --compile_only --topology=ACCELERATOR_TYPE`, the
TPU compiler without a TPU) and stop with its one line, creating nothing,
when it does not compile or fit (`--skip_preflight` skips that). `run`
starts the same command on all workers (`--worker=all`). On a
multi-host slice each worker adds --coordinator_address/--num_processes/
--process_id, read from the TPU metadata as jax's own Cloud TPU detection
reads them (TPU VMs made by `gcloud compute tpus tpu-vm create` do not set
the TPU_WORKER_HOSTNAMES variable of GKE). It streams worker 0's log and
exits with worker 0's job status. `supervise` does create + install + run and keeps
going through preemptions and lost hosts (exit 76; see launch/supervise.py). `stop` sends SIGTERM:
the job checkpoints and exits. `--dry_run` prints every command (a shell
script you could run yourself) instead of running it. The project and
credentials come from `--project` or gcloud's configuration, never from files here.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from typing import Callable, Sequence

from launch import gcloud
from launch import supervise
from launch import tpu_slice

from vit_jax import help_format

_NAME_RE = re.compile(r'[a-z]([-a-z0-9]{0,61}[a-z0-9])?')
_ZONE_RE = re.compile(r'[a-z]+-[a-z]+[0-9]+-[a-z]')
_ENV_RE = re.compile(r'[A-Za-z_][A-Za-z0-9_]*=.*', flags=re.DOTALL)
_RESERVED_JOB_FLAGS = ('--workdir', '--coordinator_address', '--num_processes', '--process_id')


class SubprocessRunner:
  """Runs commands for real; queries are captured, everything else shows its output."""

  def __init__(self, echo: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)):
    self.echo = echo

  def run(self, command: gcloud.Command) -> tuple[int, str]:
    capture = command.kind in ('describe', 'status')
    if not capture:
      self.echo(f'+ {command}')
    try:
      if command.secret_file:
        _write_private(*command.secret_file)
      proc = subprocess.run(command.argv, capture_output=capture, text=True, check=False)
    except FileNotFoundError:
      raise FileNotFoundError(f'{command.argv[0]} is not installed: install the Google Cloud CLI '
                              '(https://cloud.google.com/sdk/docs/install) and run `gcloud init`') from None
    finally:
      if command.secret_file and os.path.exists(command.secret_file[0]):
        os.remove(command.secret_file[0])
    if not capture:
      return proc.returncode, ''
    return proc.returncode, proc.stdout if proc.returncode == 0 else proc.stderr

  def stream(self, command: gcloud.Command) -> Callable[[], None]:
    self.echo(f'+ {command} &')
    proc = subprocess.Popen(command.argv, stdin=subprocess.DEVNULL, start_new_session=True)

    def stop() -> None:
      if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
      proc.wait()
    return stop


def _write_private(path: str, content: str) -> None:
  """Writes `content` to a file only its owner can read (mode 0600 from the start)."""
  fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
  os.fchmod(fd, 0o600)  # An older file of that name keeps its mode otherwise.
  with os.fdopen(fd, 'w') as f:
    f.write(content)


class DryRunRunner:
  """Prints every command; answers queries as a fresh slice would on the happy path."""

  def __init__(self, hosts: int, *, exists: bool = False, installed: bool = False,
               out: Callable[[str], None] = print):
    self.hosts, self.exists, self.installed, self.started = hosts, exists, installed, False
    self.out = out
    self.commands: list[gcloud.Command] = []

  def run(self, command: gcloud.Command) -> tuple[int, str]:
    if command.secret_file:
      path, content = command.secret_file
      names = [line.split('=', 1)[0].removeprefix('export ') for line in content.splitlines()]
      self.out(f'# write {path} with mode 0600: {" ".join(f"{n}=***" for n in names)}')
    self.out(str(command))
    self.commands.append(command)
    kind = command.kind
    if kind == 'describe':
      queued = 'queued-resources' in command.argv
      return (0, 'ACTIVE' if queued else 'READY') if self.exists else (1, 'NOT_FOUND')
    if kind == 'status':
      status = 'exit:0' if self.started else 'not-started' if self.installed else 'not-installed'
      return 0, ''.join(f'worker={w} {status}\n' for w in range(self.hosts))
    self.exists = self.exists or kind == 'create'
    self.installed = self.installed or kind == 'install'
    self.started = self.started or kind == 'start'
    return 0, ''

  def stream(self, command: gcloud.Command) -> Callable[[], None]:
    self.out(f'{command} &  # streamed while the job runs')
    self.commands.append(command)
    return lambda: None


def _job_flags(args: argparse.Namespace) -> list[str]:
  if not re.fullmatch(r'gs://[a-z0-9][-_.a-z0-9]*[a-z0-9](/.*)?', args.workdir or ''):
    raise ValueError(f'--workdir={args.workdir!r}: pass a gs://BUCKET/PATH that every worker can '
                     'read and write (a re-created slice resumes from it)')
  for flag in args.job_flags:
    if flag.split('=', 1)[0] in _RESERVED_JOB_FLAGS:
      raise ValueError(f'{flag.split("=", 1)[0]} after -- is set by the launcher: use --workdir '
                       'before --; the distributed flags are added on each worker of a pod')
  for entry in args.env:
    if not _ENV_RE.fullmatch(entry):  # The value is never echoed: it may be a secret.
      raise ValueError(f'an --env entry ({len(entry)} characters, not shown) is not KEY=VALUE with KEY a '
                       'shell variable name')
  return [*_multislice_flags(args, list(args.job_flags)), f'--workdir={args.workdir.rstrip("/")}']


def _target(args: argparse.Namespace) -> gcloud.Target:
  if not _NAME_RE.fullmatch(args.name):
    raise ValueError(f'--name={args.name!r}: TPU names are lowercase letters, digits and hyphens, '
                     'starting with a letter, at most 63 characters')
  if not _ZONE_RE.fullmatch(args.zone):
    raise ValueError(f'--zone={args.zone!r} is not a zone like europe-west4-a or us-central2-b')
  if args.num_slices < 1:
    raise ValueError(f'--num_slices={args.num_slices}: a job has at least one slice')
  return gcloud.Target(args.name, args.zone, args.project, args.queued or args.num_slices > 1,
                       args.num_slices)


def _slice(args: argparse.Namespace) -> tpu_slice.SliceType:
  if not args.accelerator_type:
    raise ValueError(f'`{args.command}` needs --accelerator_type (e.g. v3-32): it sets how many '
                     'workers must answer')
  kinds = [tpu_slice.parse(t) for t in args.accelerator_type.split(',')]
  if len({k.accelerator_type for k in kinds}) > 1:
    raise ValueError(f'--accelerator_type={args.accelerator_type}: the slices of a multislice job are '
                     f'all one accelerator type; pass one, with --num_slices=N')
  if args.num_slices > 1 and kinds[0].generation in ('v2', 'v3'):
    raise ValueError(f'--num_slices={args.num_slices} with {kinds[0].accelerator_type}: multislice '
                     'needs TPU v4 or later (v4, v5p, v5litepod/v5e, v6e)')
  return kinds[0]


_MESH_FLAG = re.compile(r'--config\.mesh\.(num_slices|data|fsdp|model|dcn_axis)=(.*)')


def _multislice_flags(args: argparse.Namespace, flags: list[str]) -> list[str]:
  """The job's flags with `--config.mesh.num_slices=N` for N slices; a mesh flag that cannot
  divide into the slices is one line."""
  mesh = {m[1]: m[2] for m in map(_MESH_FLAG.fullmatch, flags) if m}
  n = args.num_slices
  if 'num_slices' in mesh and mesh['num_slices'] != str(n):
    raise ValueError(f'--config.mesh.num_slices={mesh["num_slices"]} but --num_slices={n}: pass one, '
                     'the launcher sets the other')
  axis = mesh.get('dcn_axis', 'data')
  size = mesh.get(axis)
  if n > 1 and size not in (None, '-1') and (not size.isdigit() or int(size) % n):
    raise ValueError(f'--config.mesh.{axis}={size} does not divide into --num_slices={n} slices over '
                     f'DCN: make mesh.{axis} a multiple of {n} (or -1)')
  if n > 1 and 'num_slices' not in mesh:
    flags = [*flags, f'--config.mesh.num_slices={n}']
  return flags


def create_command(args: argparse.Namespace) -> gcloud.Command:
  kind = _slice(args)
  return gcloud.create(_target(args), kind.accelerator_type, args.runtime_version or kind.default_runtime,
                       args.spot)


def install_commands(args: argparse.Namespace) -> list[gcloud.Command]:
  target = _target(args)
  script = gcloud.install_script(args.python, args.git_url, args.git_ref)
  if args.git_url:
    return [gcloud.ssh(target, 'install', script)]
  path = gcloud.local_bundle(target)
  return [gcloud.bundle(args.source, path), gcloud.upload(target, path),
          gcloud.ssh(target, 'install', script)]


def start_command(args: argparse.Namespace) -> gcloud.Command:
  target = _target(args)
  scripts = [gcloud.start_script(args.module, _job_flags(args), hosts=_slice(args).hosts,
                                 env_file=bool(args.env), target=target, slice_id=i)
             for i in range(target.num_slices)]
  return gcloud.ssh(target, 'start', scripts[0], scripts=scripts)


def plan(args: argparse.Namespace) -> supervise.Plan:
  """The supervise loop's plan; `run` is the same loop without create and install."""
  full = args.command == 'supervise'
  return supervise.Plan(
      target=_target(args), hosts=_slice(args).hosts * args.num_slices, create=create_command(args) if full else None,
      install=install_commands(args) if full else (), start=start_command(args),
      before_start=[gcloud.upload_env(_target(args), args.env)] if args.env else [],
      max_failures=args.max_failures if full else 0, poll_s=args.poll_s,
      delete_when_done=full and args.delete_when_done)


def preflight_command(args: argparse.Namespace) -> list[str]:
  """The job compiled for the slice on this machine (`vit_jax.main --compile_only`), or []
  when there is nothing to compile here (--skip_preflight, or a module other than vit_jax.main)."""
  if args.skip_preflight or args.module != 'vit_jax.main':
    return []
  return [sys.executable, '-m', 'vit_jax.main', *_multislice_flags(args, list(args.job_flags)),
          '--compile_only', f'--topology={_slice(args).accelerator_type}']


def run_preflight(args: argparse.Namespace, log: Callable[[str], None]) -> int:
  """Compiles the job for the slice before anything is created or started: 0 when it
  compiles and fits (its report is printed), 2 with the preflight's one line when not."""
  command = preflight_command(args)
  if not command:
    return 0
  log(f'preflight: compiling the job for {args.accelerator_type} on this machine '
      f'(--skip_preflight skips it)')
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  proc = subprocess.run(command, env=env, stdout=None, stderr=subprocess.PIPE, text=True,
                        check=False)
  if proc.returncode == 0:
    return 0
  errors = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
  reason = errors[-1][len('error: '):] if errors else proc.stderr.strip()[-500:]
  raise ValueError(f'the preflight refused the job, nothing was created or started: {reason} '
                   f'(fix the job, or pass --skip_preflight to launch it anyway)')


def print_run(args: argparse.Namespace, runner, log: Callable[[str], None]) -> int:
  """`run --dry_run`: the commands `run` runs, in order, and when; no answer is made up."""
  target, start = _target(args), start_command(args)  # Bad flags fail before anything is printed.
  describe, status = gcloud.describe_state(target), gcloud.ssh(target, 'status', gcloud.status_script())
  log('1. the slice must be READY with vit_jax installed on every worker (`install`); '
      'a job already running there is followed, not started again:')
  runner.run(describe)
  runner.run(status)
  if args.env:
    log('2. copy the --env variables to every worker (~/.vit_jax_env, mode 0600), start the job '
        'on every worker:')
    runner.run(gcloud.upload_env(target, args.env))
  else:
    log('2. start the job on every worker:')
  runner.run(start)
  log("3. follow worker 0's log while the job runs:")
  runner.stream(gcloud.ssh(target, 'logs', gcloud.logs_script(), worker='0'))
  log(f'4. every {args.poll_s:g} s until the job has ended on every worker; a failure on one worker '
      "stops the others; `run` exits with the job's status (0 done or checkpointed, 75 compute cap, "
      '76 a peer process was lost):')
  runner.run(describe)
  runner.run(status)
  return 0


def execute(args: argparse.Namespace, runner, log: Callable[[str], None]) -> int:
  """Runs one subcommand through `runner`; returns the exit status."""
  target = _target(args)
  if args.command == 'create':
    return runner.run(create_command(args))[0]
  if args.command == 'install':
    for command in install_commands(args):
      code, _ = runner.run(command)
      if code:
        return code
    return 0
  if args.command in ('run', 'supervise') and args.dry_run and preflight_command(args):
    log(f'0. compile the job for {args.accelerator_type} on this machine first (exit 2 stops '
        f'here; --skip_preflight skips it): {shlex.join(preflight_command(args)[1:])}')
  elif args.command in ('run', 'supervise'):
    run_preflight(args, log)
  if args.command == 'run' and args.dry_run:
    return print_run(args, runner, log)
  if args.command in ('run', 'supervise'):
    loop = supervise.Supervisor(plan(args), runner, log=log,
                                sleep=(lambda s: None) if args.dry_run else time.sleep)
    return loop.loop()
  if args.command == 'status':
    code, out = runner.run(gcloud.describe_state(target))
    log(f'slice {target.name}: {out.strip() if code == 0 else "not found"}')
    if code == 0:
      code, out = runner.run(gcloud.ssh(target, 'status', gcloud.status_script()))
      log(out.strip())
    return code
  single = {'logs': lambda: gcloud.ssh(target, 'logs', gcloud.logs_script(), worker='0'),
            'stop': lambda: gcloud.ssh(target, 'stop', gcloud.stop_script()),
            'delete': lambda: gcloud.delete(target)}
  return runner.run(single[args.command]())[0]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  argv = list(argv)
  split = argv.index('--') if '--' in argv else len(argv)
  common = argparse.ArgumentParser(add_help=False)
  common.add_argument('--name', required=True, help='TPU VM (and queued resource) name')
  common.add_argument('--zone', required=True, help='e.g. europe-west4-a')
  common.add_argument('--project', default=None, help='None: gcloud config get project')
  common.add_argument('--queued', action='store_true', help='use a queued resource of this name')
  common.add_argument('--accelerator_type', default=None, help='v3-8, v3-32, v4-32, v5p-16, v6e-16, ...')
  common.add_argument('--dry_run', action='store_true', help='print the commands, run nothing')
  common.add_argument('--num_slices', type=int, default=1,
                      help='slices joined by DCN (multislice): one queued resource of N nodes NAME-0..')
  create = argparse.ArgumentParser(add_help=False)
  create.add_argument('--runtime_version', default=None, help="None: the TPU generation's")
  create.add_argument('--spot', action='store_true', help='preemptible (Spot) capacity')
  install = argparse.ArgumentParser(add_help=False)
  install.add_argument('--source', default='.', help='git checkout whose HEAD is installed')
  install.add_argument('--git_url', default=None, help='clone this on the workers instead')
  install.add_argument('--git_ref', default=None, help='branch, tag or commit of --git_url')
  install.add_argument('--python', default='python3.11', help='interpreter for the venv on the workers')
  run = argparse.ArgumentParser(add_help=False)
  run.add_argument('--workdir', required=True, help='gs://BUCKET/PATH shared by all workers')
  run.add_argument('--module', default='vit_jax.main', help='python -m MODULE (launch.check tests the slice)')
  run.add_argument('--env', action='append', default=[], help='KEY=VALUE for the job (repeatable)')
  run.add_argument('--poll_s', type=float, default=60.0, help='seconds between status checks')
  run.add_argument('--skip_preflight', action='store_true',
                   help='do not compile the job for the slice on this machine first '
                   '(python -m vit_jax.main --compile_only --topology=ACCELERATOR_TYPE)')
  parser = argparse.ArgumentParser(prog='python -m launch.tpu', description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest='command', required=True, parser_class=functools.partial(
      argparse.ArgumentParser, formatter_class=help_format.Formatter))
  sub.add_parser('create', parents=[common, create], help='create the slice')
  sub.add_parser('install', parents=[common, install], help='install vit_jax on every worker')
  sub.add_parser('run', parents=[common, run], help='start the job on every worker, follow worker 0')
  for name, what in (('logs', "follow worker 0's log"), ('status', 'slice state and job status'),
                     ('stop', 'SIGTERM the job (it checkpoints)'), ('delete', 'delete the slice')):
    sub.add_parser(name, parents=[common], help=what)
  sup = sub.add_parser('supervise', parents=[common, create, install, run],
                       help='create, install, run; re-create after preemption until done')
  sup.add_argument('--max_failures', type=int, default=3,
                   help='restarts after job failures (a lost peer, exit 76, is not one: like a '
                   'preemption, the job starts again from its last checkpoint)')
  sup.add_argument('--delete_when_done', action='store_true', help='delete the slice at the end')
  args = parser.parse_args(argv[:split])
  args.job_flags = argv[split + 1:]
  if args.job_flags and args.command not in ('run', 'supervise'):
    parser.error(f'flags after -- are for run and supervise, not {args.command}')
  return args


def main(argv: Sequence[str], runner=None, out: Callable[[str], None] = print) -> int:
  args = parse_args(argv)
  try:
    if runner is None and args.dry_run:
      hosts = _slice(args).hosts * args.num_slices if args.accelerator_type else 1
      runner = DryRunRunner(hosts, exists=args.command != 'supervise',
                            installed=args.command != 'supervise', out=out)
    if args.dry_run and args.accelerator_type:
      kind = _slice(args)
      out(f'# {kind.accelerator_type}: {kind.chips} chips ({kind.cores} TensorCores) in {kind.hosts} '
          f'host{"s" if kind.hosts > 1 else ""}' + (
              f'; {args.num_slices} slices joined by DCN: {kind.chips * args.num_slices} chips in '
              f'{kind.hosts * args.num_slices} hosts, one job' if args.num_slices > 1 else ''))
    log = (lambda line: out(f'# {line}')) if args.dry_run else (lambda line: print(line, flush=True))
    return execute(args, runner or SubprocessRunner(), log)
  except (ValueError, FileNotFoundError) as e:
    print(f'launch.tpu: {e}', file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print(f'launch.tpu: interrupted; a started job keeps running on the slice (`python -m launch.tpu '
          f'stop --name={args.name} --zone={args.zone}` stops it)', file=sys.stderr)
    return 130


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
