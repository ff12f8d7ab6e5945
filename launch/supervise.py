"""The supervise loop: keep a TPU slice alive and the job on it running until it finishes.

Each round asks gcloud for the slice's state and, when it is up, every worker
for its job's status, then takes one step (`decide`): create or re-create the
slice (after a preemption), install, start, stop stragglers, restart after a
failure, wait, or finish. The job resumes from its `gs://` workdir on every
start. It ends when worker 0's job exits 0 (done, also after a SIGTERM
checkpoint) or 75 (the compute budget cap stopped it), or after
`max_failures` restarts for failures that were not preemptions.

A job that exits 76 lost a peer process (vit_jax.main's watch: another
worker's process died or its host went away). When every failed worker says
76, no worker failed on its own: a host was lost, usually preempted or
restarted under the job, and the whole job is started again from the last
checkpoint like after a preemption, without counting a failure. When some
worker failed with another status, that status is the failure (counted), and
the others' 76 only followed from it.

All gcloud calls go through a `runner` (see launch/tpu.py), so the loop is
tested with a scripted fake and printed in dry runs.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import time
from typing import Callable, Optional, Protocol, Sequence

from launch import gcloud

BUDGET_CAP_EXIT = 75
PEER_LOST_EXIT = 76  # vit_jax.parallel.PEER_LOST_EXIT: a peer process was lost
ORDERLY_EXITS = (0, BUDGET_CAP_EXIT)

# gcloud states -> what they mean for us. TPU VMs report `state`, queued resources `state.state`.
_READY = {'READY', 'ACTIVE'}
_PENDING = {'CREATING', 'STARTING', 'RESTARTING', 'REPAIRING', 'ACCEPTED', 'WAITING_FOR_RESOURCES',
            'PROVISIONING', 'DELETING', 'UNHIDING', 'CREATING_HIDDEN'}
_LOST = {'PREEMPTED', 'TERMINATED', 'SUSPENDING', 'SUSPENDED', 'FAILED'}
_STOPPED = {'STOPPED', 'STOPPING'}


class Action(enum.Enum):
  CREATE = 'create'
  RECREATE = 'recreate'    # preempted: delete, then create
  WAIT = 'wait'
  INSTALL = 'install'
  START = 'start'
  RESTART = 'restart'      # a worker's job failed: start again (counted)
  RESUME = 'resume'        # the job lost a peer process (76 only): start again, not counted
  STOP = 'stop'            # some workers still run while others failed or are gone
  DONE = 'done'
  GIVE_UP = 'give_up'      # a state a loop cannot fix (the slice was stopped by hand)


@dataclasses.dataclass(frozen=True)
class Decision:
  action: Action
  reason: str
  exit_code: Optional[int] = None


class Runner(Protocol):
  def run(self, command: gcloud.Command) -> tuple[int, str]: ...
  def stream(self, command: gcloud.Command) -> Callable[[], None]: ...


def parse_statuses(output: str) -> dict[str, str]:
  """`worker=I STATUS` lines (the status script's output) -> {I: STATUS}."""
  return dict(re.findall(r'^worker=(\S+) (\S+)\s*$', output, flags=re.MULTILINE))


def _exit_code(status: str) -> Optional[int]:
  return int(status[5:]) if re.fullmatch(r'exit:-?\d+', status) else None


def _workers(statuses: dict[str, int]) -> str:
  names = sorted(statuses)
  return ('worker ' if len(names) == 1 else 'workers ') + ', '.join(names)


def decide(state: Optional[str], statuses: Optional[dict[str, str]], hosts: int) -> Decision:
  """One step of the loop from the slice `state` (None: not found) and the workers' job statuses."""
  if state is None:
    return Decision(Action.CREATE, 'the slice does not exist')
  if state in _LOST:
    return Decision(Action.RECREATE, f'the slice is {state}')
  if state in _STOPPED:
    return Decision(Action.GIVE_UP, f'the slice is {state}: start it (gcloud compute tpus tpu-vm start) '
                    'or delete it, then supervise again')
  if state not in _READY:
    return Decision(Action.WAIT, f'the slice is {state or "in an unknown state"}')
  if statuses is None or len(statuses) < hosts:
    got = 0 if statuses is None else len(statuses)
    return Decision(Action.WAIT, f'{got} of {hosts} workers answered')
  values = list(statuses.values())
  codes = {w: _exit_code(s) for w, s in statuses.items()}
  failed = {w: c for w, c in codes.items() if c is not None and c not in ORDERLY_EXITS}
  running = values.count('running')
  if running and (failed or 'not-started' in values or 'not-installed' in values):
    return Decision(Action.STOP, f'{running} workers still run while others failed or lost their job')
  if running:
    return Decision(Action.WAIT, f'{running} of {hosts} workers running')
  if 'not-installed' in values:
    return Decision(Action.INSTALL, 'vit_jax is not installed on every worker')
  own = {w: c for w, c in failed.items() if c != PEER_LOST_EXIT}  # failures of their own
  if own:
    worker, code = sorted(own.items())[0]
    return Decision(Action.RESTART, f'the job on worker {worker} exited with status {code}', code)
  if failed:
    return Decision(Action.RESUME, f'the job lost a peer process (status {PEER_LOST_EXIT} on '
                    f'{_workers(failed)}): a host failed or was restarted; starting the whole job '
                    'again from the last checkpoint', PEER_LOST_EXIT)
  if 'not-started' in values:
    return Decision(Action.START, 'no job on some workers')
  code = codes.get('0', sorted(codes.items())[0][1])
  why = 'stopped by the compute budget cap' if code == BUDGET_CAP_EXIT else 'finished'
  return Decision(Action.DONE, f'the job {why} (worker 0 exit status {code})', code)


@dataclasses.dataclass
class Plan:
  """What the loop does: the target, how to create and install, what to start."""
  target: gcloud.Target
  hosts: int
  create: Optional[gcloud.Command]            # None: never create (the `run` subcommand)
  install: Sequence[gcloud.Command]           # empty: never install
  start: gcloud.Command
  max_failures: int = 3
  poll_s: float = 60.0
  delete_when_done: bool = False
  before_start: Sequence[gcloud.Command] = ()  # e.g. upload_env, before every start


class Supervisor:
  """Runs the loop of `plan` through `runner`; `log` receives one line per step."""

  def __init__(self, plan: Plan, runner: Runner, log: Callable[[str], None] = print,
               sleep: Callable[[float], None] = time.sleep):
    self.plan, self.runner, self.log, self.sleep = plan, runner, log, sleep
    self.failures = 0
    self.preemptions = 0
    self.lost_peers = 0  # restarts after exit 76, not counted as failures
    self.started = False  # exit statuses from before this supervisor started a job are stale
    self._failed_in_a_row: dict[str, int] = {}
    self._stop_logs: Optional[Callable[[], None]] = None

  def query(self) -> tuple[Optional[str], Optional[dict[str, str]]]:
    code, out = self.runner.run(gcloud.describe_state(self.plan.target))
    if code != 0:
      return None, None
    state = out.strip().splitlines()[-1].strip() if out.strip() else ''
    if state not in _READY:
      return state, None
    code, out = self.runner.run(gcloud.ssh(self.plan.target, 'status', gcloud.status_script()))
    statuses = parse_statuses(out) if code == 0 else None
    if statuses and not self.started:
      if 'running' in statuses.values():  # a job we did not start, e.g. by an earlier supervise: follow it
        self.started = True
        self._follow_logs()
      else:
        statuses = {w: 'not-started' if s.startswith('exit:') else s for w, s in statuses.items()}
    return state, statuses

  def loop(self) -> int:
    """Returns the exit status: the job's 0 or 75 when it ends well, else non-zero."""
    try:
      while True:
        decision = decide(*self.query(), hosts=self.plan.hosts)
        self.log(f'supervise: {decision.action.value}: {decision.reason}')
        result = self.step(decision)
        if result is not None:
          return result
    finally:
      self._end_logs()

  def step(self, decision: Decision) -> Optional[int]:
    """Takes one action; returns an exit status when the loop is over."""
    plan, action = self.plan, decision.action
    if action is Action.DONE:
      self.sleep(min(5.0, plan.poll_s))  # let the log stream show the last lines
      if plan.delete_when_done:
        self._must(gcloud.delete(plan.target))
      return decision.exit_code
    if action is Action.GIVE_UP:
      return 1
    if action in (Action.CREATE, Action.RECREATE):
      if plan.create is None:
        self.log(f'supervise: not re-creating: {decision.reason}; `supervise` would')
        return 1
      self._end_logs()
      if action is Action.RECREATE:
        self.preemptions += 1
        self.runner.run(gcloud.delete(plan.target))  # may already be gone
      ok = self._must(plan.create)
    elif action is Action.INSTALL:
      if not plan.install:
        self.log('supervise: not installing here: run the `install` subcommand first')
        return 1
      ok = all(self._must(command) for command in plan.install)
    elif action in (Action.START, Action.RESTART, Action.RESUME):
      if action is Action.RESUME:
        if plan.create is None:
          self.log(f'supervise: not restarting: {decision.reason}; `supervise` would')
          return decision.exit_code
        self.lost_peers += 1
      if action is Action.RESTART:
        self.failures += 1
        if self.failures > plan.max_failures:
          self.log(f'supervise: giving up after {plan.max_failures} restarts')
          return decision.exit_code
      ok = all(self._must(command) for command in plan.before_start) and self._must(plan.start)
      self.started = True
      self._follow_logs()
    elif action is Action.STOP:
      ok = self._must(gcloud.ssh(plan.target, 'stop', gcloud.stop_script()))
    else:
      ok = True
    if not ok and max(self._failed_in_a_row.values()) > plan.max_failures:
      self.log(f'supervise: giving up: the same step failed {plan.max_failures + 1} times in a row')
      return 1
    self.sleep(0 if ok and action in (Action.CREATE, Action.RECREATE, Action.INSTALL) else plan.poll_s)
    return None

  def _must(self, command: gcloud.Command) -> bool:
    """Runs `command`; on failure logs it (the next round looks at the slice again)."""
    code, out = self.runner.run(command)
    if code == 0:
      self._failed_in_a_row[command.kind] = 0
      return True
    self._failed_in_a_row[command.kind] = self._failed_in_a_row.get(command.kind, 0) + 1
    self.log(f'supervise: {command.kind} failed with status {code}: {out.strip()[-500:]}')
    return False

  def _follow_logs(self) -> None:
    self._end_logs()
    self._stop_logs = self.runner.stream(
        gcloud.ssh(self.plan.target, 'logs', gcloud.logs_script(), worker='0'))

  def _end_logs(self) -> None:
    if self._stop_logs is not None:
      self._stop_logs()
      self._stop_logs = None
