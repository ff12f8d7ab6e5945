"""Training checkpoints: an orbax manager around the state and its counters.

A checkpoint holds two items: `state` (step, parameters, optimizer state, EMA;
sharded arrays, written by every host) and `meta` (JSON: the data iterator's
position, the compute-budget counters and the model name). orbax writes each
step into a temporary directory and renames it when complete, so a run killed
mid-save leaves the previous checkpoint as the latest one.

`meta` also holds a CRC32 of every array, computed on the host when saving.
A restore recomputes them and checks that every float is finite; a step that
cannot be read or fails this check is damaged: it is moved aside (renamed
into WORKDIR/checkpoints_aside/, never deleted) and the next older step is
tried. Rolling back to a chosen step moves the later ones aside the same way.
A save that fails raises `SaveError` (one line: the path and the OS error);
a command that trains calls `install_run_hooks()` first, which keeps the
save threads' tracebacks of that error off the console (importing this
module installs nothing).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import sys
import threading
import time
import zlib
from typing import Any, Callable, NamedTuple, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from vit_jax import rules
from vit_jax import workdir as workdir_lib

#: errno values that mean the storage is full.
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class CheckpointDamage(Exception):
  """A stored step cannot be read or fails verification (names the file)."""


class SaveError(RuntimeError):
  """Writing a checkpoint failed; `errno` is the OS error's number, if any.

  The message is what a person reads; `errno` is for a caller of
  `train_and_evaluate` that acts on a full disk (`DISK_FULL_ERRNOS`).
  """

  def __init__(self, message: str, errno_: Optional[int] = None):
    super().__init__(message)
    self.errno = errno_


def _os_error(e: BaseException) -> Optional[OSError]:
  """The first OSError in an exception's chain (orbax wraps them)."""
  seen = set()
  stack = [e]
  while stack:
    e = stack.pop()
    if e is None or id(e) in seen:
      continue
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno is not None:
      return e
    stack += [e.__cause__, e.__context__, *getattr(e, 'exceptions', ())]
  return None


def _errno_of(e: BaseException) -> tuple[Optional[int], Optional[str]]:
  """(errno, file name) of an OS error in the chain, also TensorStore's."""
  os_error = _os_error(e)
  if os_error is not None:
    return os_error.errno, os_error.filename
  code = re.search(r"os_error_code='?(\d+)", str(e))
  return (int(code[1]), None) if code else (None, None)


class _SaveErrorLog(logging.Filter):
  """Remembers the OS error (errno, file) of the last exception logged.

  orbax logs and skips a failed background save; `SaveError` names the
  error from here. A checkpointer installs it while open (`_LOGGERS`).
  """

  last: tuple[Optional[int], Optional[str]] = (None, None)

  def filter(self, record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    if exc is not None and _errno_of(exc)[0] is not None:
      self.last = _errno_of(exc)
    return True


class _QuietSaveErrors(logging.Filter):
  """Drops orbax's and asyncio's tracebacks of OS errors in save threads.

  `SaveError` reports them in one line; a full disk otherwise prints
  hundreds of lines from every thread that hit it. Installed by
  `install_run_hooks`, for a command that runs training.
  """

  def filter(self, record: logging.LogRecord) -> bool:
    _SAVE_ERRORS.filter(record)  # Before the record is dropped.
    exc = record.exc_info[1] if record.exc_info else None
    if exc is not None and _errno_of(exc)[0] is not None:
      return False
    if exc is not None and 'No space left' in str(exc):
      return False  # e.g. TensorBoard's writer on the same full disk.
    if exc is not None and 'Event loop is closed' in str(exc):
      return False  # orbax's save loop, shut down after the failed save.
    text = str(record.msg)
    return not ('os_error_code' in text or 'No space left' in text or (
        record.args and any('os_error_code' in str(a) for a in (
            record.args if isinstance(record.args, tuple) else ()))))


#: Where orbax (through absl), asyncio and clu log a failed save's errors.
_LOGGERS = ('absl', 'asyncio', 'clu')
_SAVE_ERRORS = _SaveErrorLog()
_QUIET = _QuietSaveErrors()


def _log_save_errors() -> Callable[[], None]:
  """Installs `_SAVE_ERRORS` where it is missing; returns what removes it."""
  added = [logger for logger in map(logging.getLogger, _LOGGERS)
           if _SAVE_ERRORS not in logger.filters]
  for logger in added:
    logger.addFilter(_SAVE_ERRORS)
  return lambda: [logger.removeFilter(_SAVE_ERRORS) for logger in added]


class _ExpectedReadOnlyWarning(logging.Filter):
  """Drops orbax's 'Given directory is read only' warning, and no other.

  Reading another run's checkpoints read-only is what `read_params` means
  to do; orbax warns about it on every read (predict, evaluate, init_from).
  """

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith('Given directory is read only')

  @classmethod
  @contextlib.contextmanager
  def around(cls):
    """Installed on absl's logger (orbax logs through it) while inside."""
    quiet, logger = cls(), logging.getLogger('absl')
    logger.addFilter(quiet)
    try:
      yield
    finally:
      logger.removeFilter(quiet)


def _quiet_thread_errors(args) -> None:
  """Save threads that die of the failed save (a full disk, then the closed
  event loop they report to) stay off the console: SaveError says it once."""
  exc = args.exc_value
  if exc is not None and (_errno_of(exc)[0] is not None or
                          'Event loop is closed' in str(exc) or
                          'No space left' in str(exc)):
    return
  _previous_hooks['thread'](args)


def _quiet_unraisable(args) -> None:
  """The same for errors raised in callbacks that nothing can catch."""
  exc = args.exc_value
  if exc is not None and ('Event loop is closed' in str(exc) or
                          _errno_of(exc)[0] is not None):
    return
  _previous_hooks['unraisable'](args)


_previous_hooks: dict[str, Callable[[Any], None]] = {}


def install_run_hooks() -> None:
  """What a command that trains installs before it runs (idempotent).

  A failed save (a full disk) ends the run with one line (`SaveError`,
  exit 74); without these, orbax's threads, asyncio and clu print hundreds
  of lines of tracebacks of the same error. Installs: a filter on the
  absl, asyncio and clu loggers that drops those tracebacks (and records
  the error for SaveError), and `threading.excepthook` and
  `sys.unraisablehook` wrappers that drop them and pass anything else to
  the hooks they replace. Not done on import: a library user's hooks and
  log output are theirs.
  """
  for logger in map(logging.getLogger, _LOGGERS):
    logger.addFilter(_QUIET)
  if threading.excepthook is not _quiet_thread_errors:
    _previous_hooks['thread'] = threading.excepthook
    threading.excepthook = _quiet_thread_errors
  if sys.unraisablehook is not _quiet_unraisable:
    _previous_hooks['unraisable'] = sys.unraisablehook
    sys.unraisablehook = _quiet_unraisable


def _host_array(x: Any) -> Optional[np.ndarray]:
  """The whole array on this host, or None when other hosts hold parts of it."""
  if isinstance(x, jax.Array):
    if x.is_fully_addressable:
      return np.asarray(x)
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    return None
  return np.asarray(x)


def checksum(x: np.ndarray) -> str:
  """CRC32 of the array's bytes in C order, with dtype and shape."""
  x = np.ascontiguousarray(x)
  crc = zlib.crc32(f'{x.dtype.str}{x.shape}'.encode())
  return f'{zlib.crc32(x.reshape(-1).view(np.uint8), crc):08x}'


def array_checksums(state: Any) -> dict[str, Optional[str]]:
  """{name: CRC32} of every array; None for one sharded over several hosts."""
  out = {}
  for name, x in rules.named_leaves(state):
    host = _host_array(x)
    out[name] = None if host is None else checksum(host)
  return out


def verify(state: Any, checksums: Optional[dict]) -> Optional[str]:
  """Why a restored state is damaged (checksum or non-finite), or None."""
  if checksums is None:
    return 'its meta holds no checksums (not written by a verified save)'
  for name, x in rules.named_leaves(state):
    host = _host_array(x)
    if host is None:
      continue
    want = checksums.get(name)
    if want is not None and checksum(host) != want:
      return f'array {name} fails its checksum'
    if np.issubdtype(host.dtype, np.inexact) and not np.isfinite(host).all():
      return f'array {name} holds non-finite values'
  return None


def _all_agree(ok: bool) -> bool:
  """True when `ok` holds on every process."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.min(multihost_utils.process_allgather(np.int32(ok))))


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


#: The least a replica's slice of a replicated array may hold for the
#: replicas to write that array in parallel (orbax's replica-parallel save).
#: Slicing costs one compiled program per array shape and local device: for
#: arrays below this (biases, LayerNorm scales, a small model's kernels) one
#: replica writes the array whole. ViT-B's MLP kernels (9 MiB) are still
#: written in slices by up to 9 replicas. Without this floor, the first save
#: of the quickstart on 8 CPU devices compiles 88 slices (4 CPU-s, 3.5 s).
MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL = 2**20


def _state_handler() -> ocp.PyTreeCheckpointHandler:
  """orbax's standard array handling, less replica-parallel saves of small
  arrays (MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL). The files are those of
  `ocp.StandardCheckpointHandler`, which reads them."""
  # The store is what orbax's default registry gives its jax.Array handler
  # (per-host array metadata); orbax exports no public name for it.
  from orbax.checkpoint._src.metadata import array_metadata_store  # pylint: disable=g-import-not-at-top
  arrays = ocp.type_handlers.ArrayHandler(
      min_slice_bytes_for_replica_parallel=MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL,
      array_metadata_store=array_metadata_store.Store())
  registry = ocp.type_handlers.create_type_handler_registry(
      (int, ocp.type_handlers.ScalarHandler()),
      (float, ocp.type_handlers.ScalarHandler()),
      (bytes, ocp.type_handlers.ScalarHandler()),
      (np.number, ocp.type_handlers.ScalarHandler()),
      (np.ndarray, ocp.type_handlers.NumpyHandler()),
      (jax.Array, arrays),
      (str, ocp.type_handlers.StringHandler()))
  return ocp.PyTreeCheckpointHandler(type_handler_registry=registry)


def _handlers() -> dict:
  """How each item is written; named so that a fresh process can read it."""
  return {'state': _state_handler(), 'meta': ocp.JsonCheckpointHandler()}


def _save_args(state: Any) -> ocp.args.PyTreeSave:
  return ocp.args.PyTreeSave(state)


def _restore_args(target: Any) -> ocp.args.PyTreeRestore:
  """Restores into `target`'s shapes, dtypes and shardings."""
  return ocp.args.PyTreeRestore(
      target, restore_args=ocp.checkpoint_utils.construct_restore_args(target))


class TrainCheckpointer:
  """Saves and restores (state, meta) under WORKDIR/checkpoints."""

  def __init__(self, workdir: str, *, keep: int = 2,
               keep_every: Optional[int] = None, async_save: bool = True):
    self.directory = os.path.join(workdir_lib.absolute(workdir),
                                  workdir_lib.CHECKPOINTS)
    self._saving: Optional[int] = None  # The step of the last save started.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, keep_period=keep_every,
        enable_async_checkpointing=async_save, create=True)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_handlers=_handlers())
    self._stop_logging_save_errors = _log_save_errors()

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, meta: dict, *, force: bool = True
           ) -> None:
    """Starts an (asynchronous) save; `wait()` blocks until it is complete.

    The checksums are computed here, on the host, before the write starts.
    A failure of this or an earlier save raises SaveError.
    """
    meta = dict(meta, checksums=array_checksums(state))
    self._saving = step
    self._guard(step, lambda: self._manager.save(
        step, args=ocp.args.Composite(state=_save_args(state),
                                      meta=ocp.args.JsonSave(meta)),
        force=force))

  def check_for_errors(self) -> None:
    """Raises SaveError if an asynchronous save has failed (cheap)."""
    self._guard(self._saving, self._manager.check_for_errors)
    if self._saving is not None and not self._manager.is_saving_in_progress():
      self._check_finalized()

  def wait(self) -> None:
    self._guard(self._saving, self._manager.wait_until_finished)
    self._check_finalized()

  def _check_finalized(self) -> None:
    """orbax logs and skips a failed background save; its step is then missing."""
    step, self._saving = self._saving, None
    if step is None or epath.Path(self.directory, str(step)).exists():
      return
    code, filename = _SAVE_ERRORS.last
    if code is None:
      raise SaveError(f'saving checkpoint step {step} to {self.directory} '
                      f'failed (see the log above); fix the storage, then '
                      f'rerun to resume from the last checkpoint.')
    raise self._save_error(step, code, filename)

  def close(self) -> None:
    try:
      self.wait()
      self._manager.close()
    finally:
      self._stop_logging_save_errors()

  def _guard(self, step: Optional[int], fn: Callable[[], Any]) -> Any:
    try:
      return fn()
    except Exception as e:  # pylint: disable=broad-except
      code, filename = _errno_of(e)
      what = f'saving checkpoint step {step}' if step is not None else (
          'saving a checkpoint')
      if code is None:
        text = re.split(r' See full TensorStore details| \[tensorstore_spec',
                        ' '.join(str(e).split()))[0]
        raise SaveError(f'{what} to {self.directory} failed: '
                        f'{type(e).__name__}: {text[:300]}') from e
      raise self._save_error(step, code, filename) from e

  def _save_error(self, step: Optional[int], code: int,
                  filename: Optional[str]) -> SaveError:
    what = f'saving checkpoint step {step}' if step is not None else (
        'saving a checkpoint')
    hint = ('free space (or pass another --workdir), then rerun to resume '
            'from the last checkpoint' if code in DISK_FULL_ERRNOS
            else 'fix the storage, then rerun to resume from the last '
            'checkpoint')
    return SaveError(f'{what} failed: {filename or self.directory}: '
                     f'{os.strerror(code)} [errno {code}]; {hint}.', code)

  # ------------------------------------------------------------ damage

  def _aside(self, step: int, why: str) -> str:
    """Moves step `step` into WORKDIR/checkpoints_aside/ (process 0 renames)."""
    aside = epath.Path(self.directory).parent / workdir_lib.CHECKPOINTS_ASIDE
    stamp = time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())
    target = aside / f'{step}.{why}.{stamp}'
    if jax.process_index() == 0:
      aside.mkdir(parents=True, exist_ok=True)
      n = 1
      while target.exists():
        n += 1
        target = aside / f'{step}.{why}.{stamp}.{n}'
      (epath.Path(self.directory) / str(step)).rename(target)
    _barrier(f'vit_jax_aside_{step}')
    self._manager.reload()
    return str(target)

  def _damage(self, step: int, e: BaseException) -> str:
    """'file: reason' for a failed read of `step`, naming the file if known."""
    step_dir = os.path.join(self.directory, str(step))
    missing = [name for name in ('state', 'meta', '_CHECKPOINT_METADATA')
               if not epath.Path(step_dir, name).exists()]
    if missing:
      return f'{os.path.join(step_dir, missing[0])}: missing'
    chain, seen = [], e
    while seen is not None and len(chain) < 8:
      chain.append(' '.join(str(seen).split()))
      seen = seen.__cause__ or seen.__context__
    # TensorStore appends its whole spec; the reason comes before it.
    text = re.split(r' See full TensorStore details| \[tensorstore_spec',
                    chain[0])[0]
    found = re.findall(re.escape(step_dir) + r'[^\s\'",:)\]]*',
                       ' '.join(chain))
    where = max(found, key=len) if found else step_dir
    return f'{where}: {type(e).__name__}: {text[:300]}'

  def _read_verified(self, step: int, abstract_state: Any, shardings: Any
                     ) -> tuple[Any, dict]:
    try:
      stored = self.stored_shapes(step)
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointDamage(self._damage(step, e)) from e
    check_compatible(stored, abstract_state, self.directory)
    target = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        abstract_state, shardings)
    try:
      restored = self._manager.restore(
          step, args=ocp.args.Composite(
              state=_restore_args(target),
              meta=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointDamage(self._damage(step, e)) from e
    state, meta = restored['state'], dict(restored['meta'])
    why = verify(state, meta.get('checksums'))
    if why:
      raise CheckpointDamage(
          f'{os.path.join(self.directory, str(step), "state")}: {why}')
    return state, meta

  def restore_latest_good(self, abstract_state: Any, shardings: Any
                          ) -> tuple[Optional[int], Any, Optional[dict]]:
    """(step, state, meta) of the newest step that reads and verifies.

    Damaged steps are moved aside, each logged with its file and reason;
    (None, None, None) when there is no checkpoint at all. If checkpoints
    existed but all were damaged, a one-line ValueError says what to do.
    """
    moved = []
    for step in reversed(self.all_steps()):
      damage = None
      try:
        state, meta = self._read_verified(step, abstract_state, shardings)
      except CheckpointDamage as e:
        damage = str(e)
      if _all_agree(damage is None):
        return step, state, meta
      damage = damage or 'damaged on another process'
      target = self._aside(step, 'damaged')
      moved.append(target)
      logging.warning('Checkpoint step %d is damaged (%s); moved it aside to '
                      '%s and trying the previous one.', step, damage, target)
    if moved:
      raise ValueError(f'no good checkpoint in {self.directory}: all were '
                       f'damaged and moved aside ({", ".join(moved)}); rerun '
                       f'to start from scratch, or use another --workdir.')
    return None, None, None

  def roll_back(self, step: int) -> list[str]:
    """Moves every step after `step` aside; returns where they went."""
    steps = self.all_steps()
    if step not in steps:
      raise ValueError(f'resume_from_step={step}: no checkpoint of that step '
                       f'in {self.directory} (kept steps: '
                       f'{", ".join(map(str, steps)) or "none"}).')
    moved = []
    for later in [s for s in steps if s > step]:
      moved.append(self._aside(later, 'rolled-back'))
      logging.warning('Rolling back to step %d: moved step %d aside to %s.',
                      step, later, moved[-1])
    return moved

  def restore_meta(self, step: Optional[int] = None) -> dict:
    step = self.latest_step() if step is None else step
    restored = self._manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(restored['meta'])

  def stored_shapes(self, step: int) -> dict[str, tuple[int, ...]]:
    """{name: shape} of every array of the stored state."""
    metadata = self._manager.item_metadata(step)['state']
    tree = getattr(metadata, 'tree', metadata)
    return {name: tuple(getattr(leaf, 'shape', ()) or ())
            for name, leaf in rules.named_leaves(tree)}


def check_compatible(stored: dict[str, tuple[int, ...]], abstract_state: Any,
                     where: str) -> None:
  """One error listing missing, unexpected and mismatched arrays, if any."""
  wanted = {name: tuple(x.shape) for name, x in
            rules.named_leaves(abstract_state)}
  differences = rules.describe_differences(stored, wanted,
                                           have_name='stored', limit=4)
  if differences:
    raise ValueError(f'the checkpoint in {where} does not fit this model/'
                     f'optimizer: {differences}. Use another --workdir, or '
                     f'the same model and optimizer settings as that run.')


class RestoredParams(NamedTuple):
  """The parameters a run evaluated, the step they are of, and which set."""
  params: dict
  step: int
  averaged: bool  # The Polyak-averaged (EMA) set, kept when ema_decay is set.


def read_params(workdir_or_checkpoints: str) -> RestoredParams:
  """The evaluated parameters (as numpy) of the newest good checkpoint, with its step.

  For `init_from` and the evaluators: reads the state on the host, whatever
  mesh wrote it, verifies it as a resume does (per-array checksums when the
  save wrote them, finite values) and returns its `ema_params` subtree when
  the run kept a Polyak average (`ema_decay`), else `params`: the set the
  run's evaluators scored and `params.npz` holds. A damaged step is skipped
  with a warning naming it, never moved: the directory is another run's and
  is only read.
  """
  path = workdir_lib.absolute(workdir_or_checkpoints)
  if os.path.basename(path.rstrip('/')) != workdir_lib.CHECKPOINTS:
    path = os.path.join(path, workdir_lib.CHECKPOINTS)
  if not os.path.isdir(path):
    raise FileNotFoundError(f'no checkpoints directory at {path}; pass a '
                            f'workdir of a vit_jax run or a released .npz.')
  with _ExpectedReadOnlyWarning.around():
    manager = ocp.CheckpointManager(
        path, options=ocp.CheckpointManagerOptions(
            read_only=True, create=False,
            save_interval_steps=0),  # Else orbax warns that it sets it so.
        item_handlers=_handlers())
  try:
    steps = sorted(manager.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(f'{path} holds no finished checkpoint.')
    damaged = []
    for step in steps:
      try:
        state = _read_on_host(manager, step)
      except Exception as e:  # pylint: disable=broad-except
        damaged.append(f'step {step}: {type(e).__name__}: '
                       f'{" ".join(str(e).split())[:200]}')
        continue
      if damaged:
        logging.warning('Skipped damaged checkpoints of %s (%s); read step '
                        '%d instead.', path, '; '.join(damaged), step)
      averaged = 'ema_params' in state
      params = state['ema_params'] if averaged else state['params']
      return RestoredParams(jax.tree.map(np.asarray, params), step, averaged)
  finally:
    manager.close()
  raise ValueError(f'no good checkpoint in {path}: {"; ".join(damaged)}. '
                   f'Use an earlier copy of that run, or another init_from.')


def _read_on_host(manager, step: int) -> Any:
  """The state of `step` on this host's first device, verified."""
  metadata = manager.item_metadata(step)['state']
  tree = getattr(metadata, 'tree', metadata)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=_restore_args(target), meta=ocp.args.JsonRestore()))
  checksums = dict(restored['meta'] or {}).get('checksums')
  # A checkpoint written before saves carried checksums is still read; its
  # values must be finite.
  why = verify(restored['state'], checksums or {})
  if why:
    raise CheckpointDamage(why)
  return restored['state']
