"""Local multi-process launcher: N processes on localhost, joined like the hosts of a pod.

  python -m launch.local --num_processes=2 --devices_per_process=4 -- \\
      --config=configs/quickstart.py --workdir=/tmp/run

starts N children `python -m vit_jax.main <flags> --coordinator_address=127.0.0.1:PORT
--num_processes=N --process_id=i` on simulated CPU devices (JAX_PLATFORMS=cpu,
XLA_FLAGS=--xla_force_host_platform_device_count=D). They meet at a local
coordinator and talk over gloo: the code path of a TPU pod, on one machine.

Each child's output lines are prefixed with `[i] `. When a child fails (any
exit status but 0 or 75, the budget-cap stop) the others get SIGTERM and,
after a grace period, SIGKILL. SIGINT/SIGTERM to the launcher are forwarded to
every child; a second one kills them. The launcher's exit status is the worst
child's: a failure's own status (not that of the children stopped because of
it) over 75 over 0; a child killed by signal S counts as 128+S.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import IO, Optional, Sequence

from vit_jax import help_format

# vit_jax.main's exit status when the compute budget cap stopped the run: an
# orderly stop (every process reaches the cap at the same step), not a failure.
BUDGET_CAP_EXIT = 75
ORDERLY_EXITS = (0, BUDGET_CAP_EXIT)
TIMEOUT_EXIT = 124  # as coreutils `timeout`
DISTRIBUTED_FLAGS = ('--coordinator_address', '--num_processes', '--process_id')
_MODULE_RE = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$')
_POLL_S = 0.05


@dataclasses.dataclass
class LaunchResult:
  """What run() returns: the launcher's exit status and every child's."""
  returncode: int
  process_returncodes: list[int]
  first_failure: Optional[int]  # process id of the child whose failure stopped the rest


def free_port() -> int:
  """A TCP port on 127.0.0.1 that nothing listens on right now."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def child_command(module: str, flags: Sequence[str], *, port: int, num_processes: int,
                  process_id: int, python: str = sys.executable) -> list[str]:
  """The command line of child `process_id`."""
  return [python, '-m', module, *flags, f'--coordinator_address=127.0.0.1:{port}',
          f'--num_processes={num_processes}', f'--process_id={process_id}']


def child_env(devices_per_process: int, base: Optional[dict[str, str]] = None) -> dict[str, str]:
  """`base` (default: os.environ) on simulated CPU devices, with unbuffered output."""
  env = dict(os.environ if base is None else base)
  xla_flags = re.sub(r'--xla_force_host_platform_device_count=\S*', '', env.get('XLA_FLAGS', ''))
  env['XLA_FLAGS'] = f'{xla_flags.strip()} --xla_force_host_platform_device_count={devices_per_process}'.strip()
  env['JAX_PLATFORMS'] = 'cpu'
  env['PYTHONUNBUFFERED'] = '1'
  return env


def validate(flags: Sequence[str], *, num_processes: int, devices_per_process: int, module: str,
             port: Optional[int]) -> None:
  """Raises ValueError naming the bad argument and the fix."""
  if num_processes < 1:
    raise ValueError(f'--num_processes={num_processes} must be at least 1')
  if devices_per_process < 1:
    raise ValueError(f'--devices_per_process={devices_per_process} must be at least 1')
  if port is not None and not 1 <= port <= 65535:
    raise ValueError(f'--port={port} is not a TCP port: pass 1..65535, or leave it out for a free one')
  if not _MODULE_RE.match(module):
    raise ValueError(f'--module={module!r} is not a dotted module name like vit_jax.main')
  for flag in flags:
    if flag.split('=', 1)[0] in DISTRIBUTED_FLAGS:
      raise ValueError(f'{flag.split("=", 1)[0]} is set by the launcher: remove it from the flags after --')


def exit_status(returncode: int) -> int:
  """A Popen returncode as a shell exit status (killed by signal S -> 128+S)."""
  return 128 - returncode if returncode < 0 else returncode


def worst_status(statuses: Sequence[int], first_failure: Optional[int]) -> int:
  """The launcher's exit status: the first failure's, else 75 if any child hit the cap, else 0."""
  if first_failure is not None:
    return statuses[first_failure]
  failed = [s for s in statuses if s not in ORDERLY_EXITS]
  if failed:
    return failed[0]
  return BUDGET_CAP_EXIT if BUDGET_CAP_EXIT in statuses else 0


def _parent_death_signal():
  """A pre-exec hook: the child gets SIGKILL when the launcher dies (Linux), so none is orphaned."""
  if not sys.platform.startswith('linux'):
    return None
  import ctypes  # pylint: disable=g-import-not-at-top
  prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before fork: no dlopen in the child
  pr_set_pdeathsig = 1
  return lambda: prctl(pr_set_pdeathsig, signal.SIGKILL)


def _pump(process_id: int, stream: IO[bytes], output: IO[str], lock: threading.Lock) -> None:
  """Copies one child's output to `output`, each line prefixed with `[process_id] `."""
  prefix = f'[{process_id}] '
  for raw in iter(stream.readline, b''):
    line = raw.decode('utf-8', errors='replace')
    if not line.endswith('\n'):
      line += '\n'
    with lock:
      output.write(prefix + line)
      output.flush()
  stream.close()


class _Children:
  """The running children: start, signal (whole process groups), reap."""

  def __init__(self, commands: Sequence[list[str]], env: dict[str, str], cwd: Optional[str],
               output: IO[str]):
    self.procs: list[subprocess.Popen] = []
    lock = threading.Lock()
    pre_exec = _parent_death_signal()
    try:
      for command in commands:
        self.procs.append(subprocess.Popen(
            command, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=pre_exec))
    except BaseException:
      self.signal(signal.SIGKILL)
      raise
    self.pumps = [threading.Thread(target=_pump, args=(i, p.stdout, output, lock), daemon=True)
                  for i, p in enumerate(self.procs)]
    for pump in self.pumps:
      pump.start()

  def signal(self, signum: int) -> None:
    for proc in self.procs:
      if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
          os.killpg(proc.pid, signum)

  def statuses(self) -> list[Optional[int]]:
    return [proc.poll() for proc in self.procs]

  def finish(self) -> list[int]:
    for proc in self.procs:
      proc.wait()
    for pump in self.pumps:
      pump.join(timeout=5)
    return [exit_status(proc.returncode) for proc in self.procs]


@contextlib.contextmanager
def _forwarded_signals(received: list[int]):
  """Records SIGINT/SIGTERM sent to the launcher (main thread only) instead of dying."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  handled = (signal.SIGINT, signal.SIGTERM)
  previous = {s: signal.getsignal(s) for s in handled}
  for s in handled:
    signal.signal(s, lambda signum, frame: received.append(signum))
  try:
    yield
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)


def run(flags: Sequence[str] = (), *, num_processes: int, devices_per_process: int = 1,
        module: str = 'vit_jax.main', port: Optional[int] = None, cwd: Optional[str] = None,
        env: Optional[dict[str, str]] = None, output: Optional[IO[str]] = None,
        grace_s: float = 10.0, timeout_s: Optional[float] = None) -> LaunchResult:
  """Runs `python -m module flags` as `num_processes` joined processes; waits for all of them.

  `env` replaces os.environ as the children's base environment; `output`
  (default sys.stdout) receives their prefixed lines. A failing child stops
  the others (SIGTERM, then SIGKILL after `grace_s`); so does `timeout_s`,
  which makes the exit status 124.
  """
  flags = list(flags)
  validate(flags, num_processes=num_processes, devices_per_process=devices_per_process,
           module=module, port=port)
  port = free_port() if port is None else port
  commands = [child_command(module, flags, port=port, num_processes=num_processes, process_id=i)
              for i in range(num_processes)]
  received: list[int] = []
  first_failure, stop_reason, kill_at = None, None, None
  deadline = None if timeout_s is None else time.monotonic() + timeout_s
  with _forwarded_signals(received):
    children = _Children(commands, child_env(devices_per_process, env), cwd, output or sys.stdout)
    forwarded = 0
    while None in (statuses := children.statuses()):
      now = time.monotonic()
      if stop_reason is None:
        first_failure = next((i for i, s in enumerate(statuses)
                              if s is not None and exit_status(s) not in ORDERLY_EXITS), None)
        if first_failure is not None:
          stop_reason, kill_at = 'failure', now + grace_s
          children.signal(signal.SIGTERM)
        elif deadline is not None and now >= deadline:
          stop_reason, kill_at = 'timeout', now + grace_s
          children.signal(signal.SIGTERM)
      if len(received) > forwarded:  # the first signal is forwarded, the next one kills
        children.signal(received[forwarded] if forwarded == 0 else signal.SIGKILL)
        stop_reason, forwarded = stop_reason or 'signal', len(received)
        kill_at = min(kill_at or now + grace_s, now + grace_s)
      if kill_at is not None and now >= kill_at:
        children.signal(signal.SIGKILL)
      time.sleep(_POLL_S)
    statuses = children.finish()
  if stop_reason is None:  # a failure in the last poll interval stopped no one, but is still one
    first_failure = next((i for i, s in enumerate(statuses) if s not in ORDERLY_EXITS), None)
  returncode = TIMEOUT_EXIT if stop_reason == 'timeout' else worst_status(statuses, first_failure)
  return LaunchResult(returncode, statuses, first_failure)


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
  """Splits `LAUNCHER_FLAGS -- CHILD_FLAGS`; the child flags pass through untouched."""
  argv = list(argv)
  split = argv.index('--') if '--' in argv else len(argv)
  parser = argparse.ArgumentParser(
      prog='python -m launch.local', description=__doc__.splitlines()[0],
      usage='%(prog)s --num_processes=N [--devices_per_process=D] [--module=M] [--port=P] -- FLAGS',
      formatter_class=help_format.Formatter)
  parser.add_argument('--num_processes', type=int, required=True, help='processes to start')
  parser.add_argument('--devices_per_process', type=int, default=1, help='simulated CPU devices each')
  parser.add_argument('--module', default='vit_jax.main', help='run as python -m MODULE')
  parser.add_argument('--port', type=int, default=None, help='coordinator port (None: a free one)')
  parser.add_argument('--grace_s', type=float, default=10.0,
                      help='seconds between SIGTERM and SIGKILL when stopping children')
  parser.add_argument('--timeout_s', type=float, default=None, help='stop everything after this long')
  return parser.parse_args(argv[:split]), argv[split + 1:]


def main(argv: Sequence[str]) -> int:
  args, flags = parse_args(argv)
  try:
    result = run(flags, num_processes=args.num_processes, devices_per_process=args.devices_per_process,
                 module=args.module, port=args.port, grace_s=args.grace_s, timeout_s=args.timeout_s)
  except ValueError as e:
    print(f'launch.local: {e}', file=sys.stderr)
    return 2
  if result.first_failure is not None:
    print(f'launch.local: process {result.first_failure} exited with status '
          f'{result.process_returncodes[result.first_failure]}; stopped the others', file=sys.stderr)
  return result.returncode


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
