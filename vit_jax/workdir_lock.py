"""One run per workdir: a lock file naming its owner, held for the run's lifetime.

WORKDIR/lock holds JSON {host, pid, start, heartbeat}. On a local disk the
lock is an exclusive `flock` on that file: the kernel drops it when the owner
dies, however it dies, so a leftover file of a dead run is never in the way.
On object stores (gs://...), which have no locks, the owner rewrites the
heartbeat every `heartbeat_s` seconds and a lock whose heartbeat is older
than `stale_after_s` is stale and taken over (the usual rule there; two runs
started within the same second can still race). A multi-host run takes one
lock: process 0 holds it and every process learns whether it got it.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
import threading
import time
from typing import Optional

import jax
import numpy as np
from etils import epath

from vit_jax import workdir as workdir_lib


def _owner_text(owner: Optional[dict]) -> str:
  if not owner:
    return 'an unknown owner'
  return (f'host {owner.get("host")}, pid {owner.get("pid")}, started '
          f'{owner.get("start")}')


def _refusal(workdir: str, owner: Optional[dict]) -> str:
  return (f'another run holds the lock of --workdir={workdir} '
          f'({_owner_text(owner)}); wait for it to end, stop it, or use '
          f'another --workdir.')


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).strftime(
      '%Y-%m-%dT%H:%M:%SZ')


class _LocalLock:
  """flock on WORKDIR/lock, with the owner written into the file."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.path = os.path.join(workdir, workdir_lib.LOCK)
    self._fd: Optional[int] = None

  def acquire(self, owner: dict) -> None:
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      try:
        held = json.loads(os.pread(fd, 4096, 0).decode() or 'null')
      except ValueError:
        held = None
      os.close(fd)
      raise ValueError(_refusal(self.workdir, held)) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(owner).encode(), 0)
    os.fsync(fd)
    self._fd = fd

  def release(self) -> None:
    if self._fd is not None:
      os.ftruncate(self._fd, 0)  # The file stays; an empty one is free.
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None


class _HeartbeatLock:
  """Owner file with a heartbeat, for storage without locks (gs://)."""

  def __init__(self, workdir: str, heartbeat_s: float, stale_after_s: float,
               settle_s: float):
    self.workdir = workdir
    self.settle_s = settle_s
    self.path = epath.Path(workdir) / workdir_lib.LOCK
    self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None
    self._owner: Optional[dict] = None

  def _read(self) -> Optional[dict]:
    try:
      return json.loads(self.path.read_text())
    except (FileNotFoundError, ValueError):
      return None

  def acquire(self, owner: dict) -> None:
    held = self._read()
    if held and time.time() - held.get('heartbeat', 0) < self.stale_after_s:
      raise ValueError(_refusal(self.workdir, held))
    self._owner = dict(owner, heartbeat=time.time())
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self.path.write_text(json.dumps(self._owner))
    time.sleep(self.settle_s)  # A writer racing us would show up by now.
    if (self._read() or {}).get('nonce') != owner['nonce']:
      raise ValueError(_refusal(self.workdir, self._read()))
    self._thread = threading.Thread(target=self._beat, daemon=True,
                                    name='vit_jax_workdir_lock')
    self._thread.start()

  def _beat(self) -> None:
    while not self._stop.wait(self.heartbeat_s):
      held = self._read()
      if held and held.get('nonce') != self._owner['nonce']:
        return  # Taken over after we looked stale; nothing to refresh.
      self._owner['heartbeat'] = time.time()
      self.path.write_text(json.dumps(self._owner))

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    if self._owner and (self._read() or {}).get('nonce') == self._owner['nonce']:
      self.path.unlink(missing_ok=True)
    self._owner = None


class WorkdirLock:
  """Context manager: holds the workdir's lock, or raises a one-line ValueError.

  Args:
    workdir: the run's (absolute or gs://) workdir, which exists.
    heartbeat_s, stale_after_s, settle_s: the heartbeat rule of object
      stores (`heartbeat=True` uses it on a local path too, for tests).
  """

  def __init__(self, workdir: str, *, heartbeat: Optional[bool] = None,
               heartbeat_s: float = 60.0, stale_after_s: float = 600.0,
               settle_s: float = 1.0):
    self.workdir = workdir
    if heartbeat or (heartbeat is None and '://' in workdir):
      self._lock = _HeartbeatLock(workdir, heartbeat_s, stale_after_s,
                                  settle_s)
    else:
      self._lock = _LocalLock(workdir)
    self.owner = {'host': socket.gethostname(), 'pid': os.getpid(),
                  'start': _now(), 'nonce': os.urandom(8).hex()}

  def __enter__(self) -> 'WorkdirLock':
    error = None
    if jax.process_index() == 0:
      try:
        self._lock.acquire(self.owner)
      except ValueError as e:
        error = str(e)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      held = multihost_utils.broadcast_one_to_all(np.int32(error is None))
      if not int(held) and error is None:
        error = (f'process 0 could not take the lock of --workdir='
                 f'{self.workdir} (another run holds it); see its log.')
    if error:
      raise ValueError(error)
    return self

  def __exit__(self, *exc) -> None:
    if jax.process_index() == 0:
      self._lock.release()
