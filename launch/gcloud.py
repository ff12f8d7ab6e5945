"""The gcloud command lines (and the shell scripts they run on TPU workers) for one TPU slice.

Every function returns a `Command`: the argv to execute plus a `kind` that
says what it is for, so a runner can print it (dry run), execute it, or, in
tests, answer it. Nothing here runs anything. Credentials and the project
come from gcloud's own configuration unless `--project` is given.

On each worker the layout is:
  ~/vit_jax          the source tree (from `git archive` of --source, or a git clone)
  ~/vit_jax_venv     its virtual environment, with jax[tpu]
  ~/vit_jax_run/     log, pid (process group of the running job), exit_code
  ~/.vit_jax_env     the job's --env variables (mode 0600), sourced by the job

Values passed with --env are secrets: they never appear in a command line
(here, in `ps` on the workers, or in an echo or dry run). The runner writes
them into a local file of mode 0600, `upload_env` copies it to the workers
(scp keeps the mode) and the job's wrapper sources it.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import tempfile
from typing import Optional, Sequence

SRC = '"$HOME/vit_jax"'
VENV = '"$HOME/vit_jax_venv"'
RUN = '"$HOME/vit_jax_run"'
REMOTE_BUNDLE = 'vit_jax.tar.gz'  # relative to the worker's home directory
# A job runs while its wrapper lives and has not recorded an exit status (the wrapper lingers a
# moment after writing it).
_RUNNING = (f'[ ! -f {RUN}/exit_code ] && [ -f {RUN}/pid ] && kill -0 "$(cat {RUN}/pid)" 2>/dev/null')
METADATA_ATTRIBUTES = 'http://metadata.google.internal/computeMetadata/v1/instance/attributes'


@dataclasses.dataclass(frozen=True)
class Command:
  kind: str              # create, describe, delete, bundle, upload, upload_env, install, start, status, stop, logs
  argv: tuple[str, ...]
  # (local path, content) the runner writes with mode 0600 before running argv and removes after;
  # never printed.
  secret_file: Optional[tuple[str, str]] = dataclasses.field(default=None, repr=False, compare=False)

  def __str__(self) -> str:
    return shlex.join(self.argv)


@dataclasses.dataclass(frozen=True)
class Target:
  """Which slice: a TPU VM (`tpu-vm create`) or a queued resource of the same name."""
  name: str
  zone: str
  project: Optional[str] = None
  queued: bool = False
  #: Multislice: one queued resource of this many slices (nodes NAME-0, NAME-1, ...) joined by DCN.
  num_slices: int = 1

  def flags(self) -> list[str]:
    return [f'--zone={self.zone}'] + ([f'--project={self.project}'] if self.project else [])

  def nodes(self) -> list[str]:
    """The TPU VMs: the slice, or the multislice queued resource's nodes (`--node-prefix=NAME`)."""
    if self.num_slices == 1:
      return [self.name]
    return [f'{self.name}-{i}' for i in range(self.num_slices)]


def _tpus(target: Target, group: str, verb: str, positional: Sequence[str], *flags: str
          ) -> tuple[str, ...]:
  """`gcloud compute tpus GROUP VERB POSITIONAL... --zone=Z [--project=P] FLAGS...`."""
  return ('gcloud', 'compute', 'tpus', group, verb, *positional, *target.flags(), *flags)


def create(target: Target, accelerator_type: str, runtime_version: str, spot: bool) -> Command:
  spot_flag = ('--spot',) if spot else ()
  if target.num_slices > 1:  # one queued resource, gang-scheduled: all slices or none
    return Command('create', _tpus(target, 'queued-resources', 'create', [target.name],
                                   f'--node-count={target.num_slices}', f'--node-prefix={target.name}',
                                   f'--accelerator-type={accelerator_type}',
                                   f'--runtime-version={runtime_version}', *spot_flag))
  if target.queued:
    return Command('create', _tpus(target, 'queued-resources', 'create', [target.name],
                                   f'--node-id={target.name}', f'--accelerator-type={accelerator_type}',
                                   f'--runtime-version={runtime_version}', *spot_flag))
  return Command('create', _tpus(target, 'tpu-vm', 'create', [target.name],
                                 f'--accelerator-type={accelerator_type}',
                                 f'--version={runtime_version}', *spot_flag))


def describe_state(target: Target) -> Command:
  if target.queued:
    return Command('describe', _tpus(target, 'queued-resources', 'describe', [target.name],
                                     '--format=value(state.state)'))
  return Command('describe', _tpus(target, 'tpu-vm', 'describe', [target.name], '--format=value(state)'))


def delete(target: Target) -> Command:
  if target.queued:  # --force also deletes the TPU VM the queued resource holds
    return Command('delete', _tpus(target, 'queued-resources', 'delete', [target.name], '--force',
                                   '--quiet'))
  return Command('delete', _tpus(target, 'tpu-vm', 'delete', [target.name], '--quiet'))


def ssh(target: Target, kind: str, script: str, worker: str = 'all',
        scripts: Optional[Sequence[str]] = None) -> Command:
  """`script` on the workers; on a multislice target on every node in turn (`scripts`: one per
  slice), status lines named `worker=SLICE-I`, logs from slice 0 only; the status is the last failure's."""
  if target.num_slices == 1 or kind == 'logs':
    return Command(kind, _tpus(target, 'tpu-vm', 'ssh', [target.nodes()[0]], f'--worker={worker}',
                               '--quiet', f'--command={(scripts or [script])[0]}'))
  lines = []
  for i, (node, each) in enumerate(zip(target.nodes(), scripts or [script] * target.num_slices)):
    if kind == 'status':
      each = f'{{ {each}; }} | sed "s/^worker=/worker={i}-/"'
    lines.append(shlex.join(_tpus(target, 'tpu-vm', 'ssh', [node], f'--worker={worker}', '--quiet',
                                  f'--command={each}')) + ' || rc=$?')
  return Command(kind, ('bash', '-c', '; '.join(['rc=0', *lines, 'exit $rc'])))


def _to_every_node(target: Target, kind: str, path: str, remote: str, **extra) -> Command:
  """`tpu-vm scp PATH NODE:REMOTE --worker=all` to the slice, or to each node of a multislice."""
  argvs = [_tpus(target, 'tpu-vm', 'scp', [path, f'{node}:{remote}'], '--worker=all', '--quiet')
           for node in target.nodes()]
  if len(argvs) == 1:
    return Command(kind, argvs[0], **extra)
  return Command(kind, ('bash', '-c', '; '.join(['set -e', *map(shlex.join, argvs)])), **extra)


def local_bundle(target: Target) -> str:
  return os.path.join(tempfile.gettempdir(), f'vit_jax-{target.name}.tar.gz')


def bundle(source: str, path: str) -> Command:
  """A local command: the committed HEAD of `source` as a tarball."""
  return Command('bundle', ('git', '-C', source, 'archive', '--format=tar.gz', '-o', path, 'HEAD'))


def upload(target: Target, path: str) -> Command:
  return _to_every_node(target, 'upload', path, REMOTE_BUNDLE)


REMOTE_ENV = '.vit_jax_env'  # relative to the worker's home directory


def env_name(entry: str) -> str:
  """`KEY` of a KEY=VALUE --env entry: what may be printed of it."""
  return entry.split('=', 1)[0]


def masked_env(env: Sequence[str]) -> str:
  return ' '.join(f'{env_name(e)}=***' for e in env)


def env_file_content(env: Sequence[str]) -> str:
  """`export KEY='VALUE'` lines for bash to source."""
  return ''.join(f'export {env_name(e)}={shlex.quote(e.split("=", 1)[1])}\n' for e in env)


def upload_env(target: Target, env: Sequence[str]) -> Command:
  """Copies the --env variables to every worker as ~/.vit_jax_env (mode 0600, written locally first)."""
  path = os.path.join(tempfile.gettempdir(), f'vit_jax-{target.name}.env')
  return _to_every_node(target, 'upload_env', path, REMOTE_ENV,
                        secret_file=(path, env_file_content(env)))


def _refuse_if_running(what: str) -> str:
  return (f'if {_RUNNING}; then echo "a job is running on $(hostname): stop it before {what}" >&2; exit 1; fi')


def install_script(python: str = 'python3.11', git_url: Optional[str] = None,
                   git_ref: Optional[str] = None) -> str:
  """Unpacks (or clones) the source and installs it with jax[tpu] into ~/vit_jax_venv."""
  if git_url:
    fetch = f'git clone -q {shlex.quote(git_url)} {SRC}'
    if git_ref:
      fetch += f' && git -C {SRC} checkout -q {shlex.quote(git_ref)}'
  else:
    fetch = f'mkdir -p {SRC} && tar -xzf "$HOME/{REMOTE_BUNDLE}" -C {SRC}'
  py = shlex.quote(python)
  return ' && '.join([
      'set -eu', _refuse_if_running('installing'),
      # Ubuntu 22.04 TPU images ship Python 3.10; vit_jax needs >= 3.11.
      f'(command -v {py} >/dev/null || (sudo apt-get update -qq && '
      f'sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {py} {py}-venv))',
      f'rm -rf {SRC} {VENV}', fetch, f'{py} -m venv {VENV}',
      f'{VENV}/bin/pip install -q --upgrade pip',
      f'cd {SRC} && {VENV}/bin/pip install -q -c constraints.txt -e ".[all]" "jax[tpu]"',
      f'touch {SRC}/.installed'])


COORDINATOR_PORT = 8482  # the port jax's own Cloud TPU detection uses
MEGASCALE_PORT = 8081    # the multislice (megascale) runtime's port, as Ray's TPU support sets it


def _metadata(key: str) -> str:
  return f'curl -sf -m 10 -H "Metadata-Flavor: Google" {METADATA_ATTRIBUTES}/{key}'


def multislice_env(target: Target, slice_id: int) -> list[str]:
  """Shell lines exporting what multislice JAX reads on a worker of slice `slice_id`: the
  MEGASCALE_* variables (jax's Cloud TPU cluster reads them from the environment before the
  `tpu-env` metadata), the coordinator being worker 0 of slice 0 (from `tpu-env`, which Cloud TPU
  fills for a multislice queued resource, else from gcloud), and `$coord` for the jax flags."""
  describe = ' '.join([*_tpus(target, 'tpu-vm', 'describe', [target.nodes()[0]]),
                       '"--format=value(networkEndpoints[0].ipAddress)"'])
  return [
      f'coord=$({_metadata("tpu-env")} | grep "^MEGASCALE_COORDINATOR_ADDRESS" | cut -d: -f2 | '
      'tr -dc "0-9A-Za-z.-")',
      f'if [ -z "$coord" ]; then coord=$({describe}); fi',
      f'export MEGASCALE_COORDINATOR_ADDRESS="$coord:{MEGASCALE_PORT}" '
      f'MEGASCALE_NUM_SLICES={target.num_slices} MEGASCALE_SLICE_ID={slice_id} '
      f'MEGASCALE_PORT={MEGASCALE_PORT}']


def start_script(module: str, flags: Sequence[str], hosts: int = 1, env_file: bool = False,
                 target: Optional[Target] = None, slice_id: int = 0) -> str:
  """Starts `python -m module flags` detached; the exit status lands in ~/vit_jax_run/exit_code.

  On a multi-host slice each worker passes the three distributed flags, read
  from the TPU metadata the way jax's Cloud TPU detection reads them: process
  id = agent-worker-number, coordinator = the first of worker-network-endpoints
  (entries are `host` or `name:id:ip`). The wrapper traps SIGTERM so that
  `stop` reaches the job (which checkpoints and exits) and the wrapper still
  records the job's exit status. With `env_file` the job's variables come from
  ~/.vit_jax_env (uploaded by `upload_env`), so no value is on a command line.
  """
  job = ' '.join([f'{VENV}/bin/python', '-m', module, *(shlex.quote(f) for f in flags)])
  if target is not None and target.num_slices > 1:  # process ids run slice by slice, as jax's
    job = ' && '.join([
        f'w=$({_metadata("agent-worker-number")})', *multislice_env(target, slice_id),
        f'{job} --coordinator_address="$coord:{COORDINATOR_PORT}" '
        f'--num_processes={hosts * target.num_slices} --process_id="$(({slice_id * hosts} + w))"'])
  elif hosts > 1:
    job = ' && '.join([
        f'w=$({_metadata("agent-worker-number")})', f'first=$({_metadata("worker-network-endpoints")})',
        'first=${first%%,*}',
        f'{job} --coordinator_address="${{first##*:}}:{COORDINATOR_PORT}" --num_processes={hosts} '
        '--process_id="$w"'])
  source_env = ([f'chmod 600 "$HOME/{REMOTE_ENV}"', 'set -a', f'. "$HOME/{REMOTE_ENV}"', 'set +a']
                if env_file else [])
  wrapper = '; '.join([
      'trap : TERM INT', f'echo $$ > {RUN}/pid', *source_env, f'cd {SRC}',
      f'echo "=== $(date -u +%FT%TZ) $(hostname) start" >> {RUN}/log',
      f'{{ {job}; }} >> {RUN}/log 2>&1', 'code=$?',
      f'echo $code > {RUN}/exit_code.tmp', f'mv {RUN}/exit_code.tmp {RUN}/exit_code'])
  return '; '.join([
      'set -eu', _refuse_if_running('starting another'), f'mkdir -p {RUN}',
      f'rm -f {RUN}/exit_code',
      f'setsid nohup bash -c {shlex.quote(wrapper)} >/dev/null 2>&1 </dev/null & echo "started on $(hostname)"'])


def status_script() -> str:
  """Prints `worker=I STATUS`: exit:N, running, not-started or not-installed."""
  return '; '.join([
      f'w=$({_metadata("agent-worker-number")} || hostname)',
      f'if [ -f {RUN}/exit_code ]; then s="exit:$(cat {RUN}/exit_code)"; '
      f'elif {_RUNNING}; then s=running; '
      f'elif [ -f {SRC}/.installed ]; then s=not-started; else s=not-installed; fi',
      'echo "worker=$w $s"'])


def stop_script() -> str:
  """SIGTERM to the job's process group: vit_jax.main checkpoints and exits 0."""
  return (f'if {_RUNNING}; then kill -TERM -- "-$(cat {RUN}/pid)"; echo "stopping on $(hostname)"; '
          'else echo "nothing running on $(hostname)"; fi')


def logs_script(lines: int = 100) -> str:
  return f'tail -n {int(lines)} -F {RUN}/log'
