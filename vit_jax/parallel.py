"""Device mesh, sharding rules, host<->global arrays and multi-host start-up.

One path for parallelism: `jax.jit` over a `Mesh` with axes (data, fsdp,
model). Data parallelism is a mesh whose only non-trivial axis is `data`;
FSDP and tensor parallelism are sharding rules over parameter names.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import signal
import socket
import sys
import threading
import time
from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vit_jax import preemption
from vit_jax import rules as rules_lib

MESH_AXES = ('data', 'fsdp', 'model')
#: The batch dimension is split over both data-parallel axes.
BATCH_AXES = ('data', 'fsdp')

#: Exit status of a process whose peer was lost (sysexits' EX_PROTOCOL).
PEER_LOST_EXIT = 76
#: --heartbeat_timeout_s's default (vit_jax/cli.py); docs/launch.md has the
#: measurements behind it.
DEFAULT_HEARTBEAT_TIMEOUT_S = 30
_POLL_S = 1.0              # PeerWatch asks the service this often.
_EXIT_BARRIER_S = 300      # at the end, how long a process waits for the others
_RERUN = 'rerun all processes to resume from the last checkpoint'


def initialize_distributed(coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None,
                           heartbeat_timeout_s: int = DEFAULT_HEARTBEAT_TIMEOUT_S
                           ) -> None:
  """Starts jax.distributed when this is one process of several.

  Explicit flags win; otherwise Cloud TPU VMs with several hosts and SLURM jobs
  with several tasks are detected from their environment (jax reads the
  details itself); otherwise this is a single-process run and nothing happens.

  With several processes, a peer that sends no heartbeat for
  `heartbeat_timeout_s` seconds (killed, crashed, its host gone) is lost: every
  survivor prints one line naming it and exits PEER_LOST_EXIT (see PeerWatch).
  """
  explicit = [coordinator_address, num_processes, process_id]
  if heartbeat_timeout_s < 1:
    raise ValueError(f'--heartbeat_timeout_s={heartbeat_timeout_s} must be at '
                     f'least 1 (seconds); the default is '
                     f'{DEFAULT_HEARTBEAT_TIMEOUT_S}.')
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise ValueError('--coordinator_address, --num_processes and '
                       '--process_id go together: pass all three or none.')
    if not 0 <= process_id < num_processes:
      raise ValueError(f'--process_id={process_id} is outside [0, '
                       f'{num_processes}); ids count from 0.')
    if num_processes > 1:  # A lost peer is reported to PeerWatch, not fatal.
      jax.config.update('jax_enable_recoverability', True)
      preemption.hand_to_jax()  # jax's preemption sync takes SIGTERM.
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes,
                               process_id=process_id,
                               heartbeat_timeout_seconds=heartbeat_timeout_s)
  elif on_cloud_tpu() or int(os.environ.get('SLURM_NTASKS', '1')) > 1:
    jax.config.update('jax_enable_recoverability', True)
    preemption.hand_to_jax()  # jax's preemption sync takes SIGTERM.
    # jax reads the cluster from its metadata.
    jax.distributed.initialize(heartbeat_timeout_seconds=heartbeat_timeout_s)
  else:
    return
  if jax.process_count() > 1:
    PeerWatch.start(heartbeat_timeout_s)


# --- Lost peers --------------------------------------------------------------
#
# jax's coordination service (in process 0) declares a process dead when it
# sent no heartbeat for the heartbeat timeout; by default it then makes XLA
# abort every other process (SIGABRT and a C++ trace). In recoverable mode it
# only stops listing the process as alive, and PeerWatch turns that into one
# line and PEER_LOST_EXIT. Only process 0's own loss still reaches XLA first
# (its client aborts the moment the coordinator's connection closes; the
# Python hook for that, missed_heartbeat_callback, fails in jaxlib 0.10.2 with
# std::bad_cast): a SIGABRT handler then prints the line and exits with the
# same status, after XLA's message, and only if the coordinator is gone.


class PeerWatch:
  """Ends this process, with one line and PEER_LOST_EXIT, when a peer is lost.

  A daemon thread asks the coordination service every second which processes
  are alive (`get_live_nodes`, answered once every live process has asked, so
  the threads keep step with each other; the main thread is never held). A
  process missing from the answer, or a coordinator that cannot be reached,
  is a lost peer: this process prints `error: process I of N was lost (...)`
  and exits at once, wherever its main thread is (typically blocked in a
  collective that will never complete). Before exiting, a survivor other than
  process 0 disconnects and process 0 waits (a few seconds at most) for the
  others to leave, so that no survivor sees the coordinator vanish first.

  Every process leaves through an exit barrier, having said how it ends
  (`vit_jax/left/I` in the service: `done`, or `failed` for an error of its
  own, see `lost_peer_explains_errors`): processes that end together (done,
  the cap, the same non-finite loss) leave together, and a peer that left
  `done` is not lost. A process that fails alone waits for the others a
  short while only (`max(10 s, heartbeat timeout)`, as long as a
  simultaneous failure of the others may take to arrive), then leaves; the
  others then stop with PEER_LOST_EXIT, naming it, while its own status
  says why. So does one whose barrier times out (the others never came):
  leaving `done`, it would leave them waiting for it forever.
  """

  current: Optional['PeerWatch'] = None

  def __init__(self, client, process_id: int, num_processes: int,
               heartbeat_timeout_s: int, coordinator: Optional[str]):
    self.client, self.process_id = client, process_id
    self.num_processes, self.heartbeat_timeout_s = num_processes, heartbeat_timeout_s
    self.coordinator = coordinator
    self.ending: Optional[str] = None  # None while running, then done|failed
    self._stop = threading.Event()
    self._leave = threading.Event()  # the exit barrier passed, or a peer left
    self._rounds = 0
    self._round_done = threading.Condition()
    self._thread = threading.Thread(target=self._run, name='PeerWatch',
                                    daemon=True)

  @classmethod
  def start(cls, heartbeat_timeout_s: int) -> 'PeerWatch':
    from jax._src import distributed  # pylint: disable=g-import-not-at-top
    state = distributed.global_state
    watch = cls(state.client, jax.process_index(), jax.process_count(),
                heartbeat_timeout_s, state.coordinator_address)
    cls.current = watch
    watch._thread.start()
    atexit.register(watch._at_exit)  # Runs before jax's own shutdown.
    if watch.process_id != 0:
      _abort_becomes_peer_lost(watch)
    return watch

  def lost_message(self, gone: Mapping[int, Optional[str]] = None,
                   unreachable: bool = False) -> str:
    """The line for peers `gone` ({process: how it left, None: unknown})."""
    n = self.num_processes
    gone = dict(gone or {})
    if unreachable or (0 in gone and gone[0] is None):
      how = ('cannot be reached' if unreachable else
             f'sent no heartbeat for {self.heartbeat_timeout_s} s')
      return (f'process 0 of {n} (the coordinator, {self.coordinator}) was '
              f'lost: it {how}; {_RERUN}.')
    failed = [i for i, how in sorted(gone.items()) if how == 'failed']
    if failed and len(failed) == len(gone):
      return (f'{_processes(failed)} of {n} stopped on an error of its own '
              f'(its log and exit status say which); this one stops too.')
    verb = 'was' if len(gone) == 1 else 'were'
    return (f'{_processes(sorted(gone))} of {n} {verb} lost: no heartbeat for '
            f'{self.heartbeat_timeout_s} s (killed, crashed, or its host '
            f'failed); {_RERUN}.')

  def _run(self) -> None:
    everyone = list(range(self.num_processes))
    while not self._stop.is_set():
      try:
        alive = self.client.get_live_nodes(everyone)
      except Exception:  # pylint: disable=broad-except
        self._peer_gone(unreachable=True)
        return
      if self._stop.is_set():
        return
      gone = {i: self._how_left(i) for i in everyone if i not in alive}
      gone = {i: how for i, how in gone.items() if how != 'done'}
      if gone:
        self._peer_gone(gone)
        return
      with self._round_done:
        self._rounds += 1
        self._round_done.notify_all()
      self._stop.wait(_POLL_S)

  def _how_left(self, process: int) -> Optional[str]:
    """'done' or 'failed' as `process` said before leaving; None: it did not."""
    try:
      return self.client.key_value_try_get(f'vit_jax/left/{process}')
    except Exception:  # pylint: disable=broad-except
      return None

  def _peer_gone(self, gone=None, unreachable: bool = False) -> None:
    if self._stop.is_set():
      return
    if self.ending is not None:  # This process is leaving anyway, with its own status.
      self._leave.set()
      return
    _report_lost(self.lost_message(gone, unreachable))
    if self.process_id == 0:
      _within(5.0, self._until_alone)  # The others first (they need process 0).
    elif not unreachable:
      _within(2.0, self.client.shutdown)  # Tells process 0 that this one left.
    os._exit(PEER_LOST_EXIT)  # pylint: disable=protected-access

  def _until_alone(self) -> None:
    while set(self.client.get_live_nodes(list(range(self.num_processes)))) != {0}:
      time.sleep(0.1)

  def check(self) -> None:
    """Returns once two rounds found every peer alive; exits if one is lost.

    The second round starts after the call, so it sees a peer that had died
    before the call. Waits at most the heartbeat timeout and a few rounds.
    """
    with self._round_done:
      target = self._rounds + 2
      self._round_done.wait_for(lambda: self._rounds >= target,
                                timeout=self.heartbeat_timeout_s + 10 * _POLL_S)

  def failed(self) -> None:
    """This process ends on an error of its own (its status will say which)."""
    self.ending = 'failed'
    self._say_how_left()

  def _say_how_left(self) -> None:
    try:
      self.client.key_value_set(f'vit_jax/left/{self.process_id}', self.ending,
                                allow_overwrite=True)
    except Exception:  # pylint: disable=broad-except
      pass  # The service is gone: the others find out themselves.

  def _at_exit(self) -> None:
    if self.ending is None:
      self.ending = 'done'
      self._say_how_left()
    wait_s = (_EXIT_BARRIER_S if self.ending == 'done' else
              max(10, self.heartbeat_timeout_s))

    passed = []

    def barrier():
      try:
        self.client.wait_at_barrier('vit_jax_exit', int(wait_s * 1000))
        passed.append(True)
      except Exception:  # pylint: disable=broad-except
        pass  # A peer did not arrive: its own status says why.
      self._leave.set()
    threading.Thread(target=barrier, daemon=True).start()
    self._leave.wait(wait_s + 5)
    if not passed and self.ending == 'done':
      # The others are still at work and would wait for this process forever.
      self.ending = 'failed'
      self._say_how_left()
    self._stop.set()
    # The watch thread may be inside get_live_nodes, which returns once every
    # live process has asked or left; if jax's shutdown (after this hook)
    # closed the client under it, the process could die in C++ at exit
    # ("terminate called recursively"). Bounded: a call answered by no one
    # is left to the shutdown, as before.
    self._thread.join(timeout=2 * _POLL_S + 1)
    if self.process_id == 0:  # The service lives here: the others leave first.
      _within(max(10, self.heartbeat_timeout_s), self._until_alone)


_reported = threading.Lock()


def _report_lost(message: str) -> None:
  """Prints the lost-peer line once, whoever finds out first (watch or abort)."""
  if _reported.acquire(blocking=False):
    sys.stdout.flush()
    sys.stderr.flush()
    os.write(sys.stderr.fileno(), f'error: {message}\n'.encode())  # One write: XLA may log meanwhile.


def _processes(ids: Sequence[int]) -> str:
  return ('process ' if len(ids) == 1 else 'processes ') + ', '.join(map(str, ids))


def _within(seconds: float, fn) -> None:
  """Calls fn in a daemon thread and waits for it at most `seconds`."""
  thread = threading.Thread(target=fn, daemon=True)
  thread.start()
  thread.join(seconds)


@contextlib.contextmanager
def lost_peer_explains_errors():
  """Around a multi-process run: an error that a lost peer explains is reported as the lost peer.

  A peer's death surfaces in a survivor as whatever was running: a collective
  that failed ("Gloo ... Connection closed by peer"), a barrier, a save. The
  watch is asked first: a lost peer ends the process (its line,
  PEER_LOST_EXIT) before the error is reported; otherwise the error is this
  process's own and propagates, and the process leaves without waiting long
  for the others (PeerWatch).
  """
  try:
    yield
  except (Exception, KeyboardInterrupt):
    watch = PeerWatch.current
    if watch is not None and watch.ending is None:
      watch.check()
      watch.failed()
    raise


_ABORT_HANDLER = None  # Kept alive: the C library holds a pointer to it.


def _abort_becomes_peer_lost(watch: PeerWatch) -> None:
  """SIGABRT when the coordinator is gone: the lost-peer line and status.

  XLA aborts a process whose coordinator connection closed; this handler then
  connects to the coordinator itself. Refused or timed out: process 0 was
  lost, and the process exits PEER_LOST_EXIT after the line. Reachable: the
  abort is this process's own, and it proceeds (faulthandler's dump, 134).
  """
  global _ABORT_HANDLER
  if not sys.platform.startswith('linux') or not watch.coordinator:
    return
  import ctypes  # pylint: disable=g-import-not-at-top
  import faulthandler  # pylint: disable=g-import-not-at-top
  host, port = watch.coordinator.rsplit(':', 1)
  handler_type = ctypes.CFUNCTYPE(None, ctypes.c_int)
  libc = ctypes.CDLL(None, use_errno=True)
  libc.signal.restype = ctypes.c_void_p
  libc.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]

  def on_abort(signum):
    try:
      socket.create_connection((host.strip('[]'), int(port)), timeout=2).close()
    except OSError:
      _report_lost(watch.lost_message(unreachable=True))
      os._exit(PEER_LOST_EXIT)  # pylint: disable=protected-access
    libc.signal(signum, 0)  # SIG_DFL: abort() goes on and ends the process.
    if faulthandler.is_enabled():
      faulthandler.dump_traceback(all_threads=True)

  _ABORT_HANDLER = handler_type(on_abort)
  libc.signal(signal.SIGABRT, ctypes.cast(_ABORT_HANDLER, ctypes.c_void_p))


def on_cloud_tpu() -> bool:
  """True on a Cloud TPU VM (GKE sets TPU_WORKER_HOSTNAMES; a VM made with
  `gcloud compute tpus tpu-vm create` has TPU device files but not that
  variable). jax.distributed then finds the hosts from the TPU metadata; a
  single-host slice becomes a one-process cluster."""
  if os.environ.get('TPU_WORKER_HOSTNAMES'):
    return True
  return any(os.path.exists(p) for p in ('/dev/accel0', '/dev/vfio/0'))


def configure_cpu() -> None:
  """Synchronous dispatch on CPU backends.

  With several simulated CPU devices on few cores, executions in flight
  together deadlock in the collectives' rendezvous; one at a time they do not.
  Accelerators keep asynchronous dispatch.
  """
  if jax.default_backend() == 'cpu':
    jax.config.update('jax_cpu_enable_async_dispatch', False)


def mesh_shape(axis_sizes: Mapping[str, int], num_devices: int
               ) -> tuple[int, int, int]:
  """Resolves {'data': -1, 'fsdp': 2, 'model': 1} against the device count."""
  unknown = set(axis_sizes) - set(MESH_AXES)
  if unknown:
    raise ValueError(f'unknown mesh axes {sorted(unknown)}; the mesh axes are '
                     f'{MESH_AXES}.')
  sizes = [int(axis_sizes.get(a, 1)) for a in MESH_AXES]
  if sum(s == -1 for s in sizes) > 1:
    raise ValueError(f'at most one mesh axis may be -1 (the rest), got '
                     f'{dict(zip(MESH_AXES, sizes))}.')
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f'mesh axis sizes must be positive or -1, got '
                     f'{dict(zip(MESH_AXES, sizes))}.')
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(f'mesh {dict(zip(MESH_AXES, sizes))} does not divide '
                       f'the {num_devices} devices; choose axis sizes whose '
                       f'product divides {num_devices}.')
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(f'mesh {dict(zip(MESH_AXES, sizes))} has '
                     f'{math.prod(sizes)} devices but {num_devices} are present;'
                     f' set one axis to -1 or make the product {num_devices}.')
  return tuple(sizes)


#: config.mesh keys that are not axes: the slices joined by the data-centre
#: network (DCN) and the axis that crosses them (docs/launch.md, multislice).
SLICE_KEYS = ('num_slices', 'dcn_axis')


class _InSlice:
  """A device with the slice index `create_hybrid_device_mesh` reads; every
  other attribute (coords, device_kind, ...) is the device's own."""
  __slots__ = ('device', 'slice_index')

  def __init__(self, device, slice_index: int):
    self.device, self.slice_index = device, slice_index

  def __getattr__(self, name):
    return getattr(self.device, name)


def device_slices(devices: Sequence[Any]) -> list[int]:
  """Each device's slice (`slice_index`; 0 where a device has none)."""
  return [int(getattr(d, 'slice_index', 0) or 0) for d in devices]


def slice_shape(axis_sizes: Mapping[str, Any], num_devices: int
                ) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
  """(ICI shape inside one slice, DCN shape across slices) of a config.mesh.

  The DCN shape is `num_slices` on `dcn_axis` (default 'data') and 1 on the
  others; the mesh's shape is their product, axis by axis.
  """
  sizes = dict(axis_sizes)
  num_slices = int(sizes.pop('num_slices', 1) or 1)
  dcn_axis = sizes.pop('dcn_axis', 'data') or 'data'
  if num_slices < 1:
    raise ValueError(f'mesh.num_slices={num_slices} must be at least 1.')
  if dcn_axis not in MESH_AXES:
    raise ValueError(f'mesh.dcn_axis={dcn_axis!r} is not a mesh axis; use one '
                     f'of {MESH_AXES} (data: data parallelism across slices).')
  shape = mesh_shape(sizes, num_devices)
  axis = MESH_AXES.index(dcn_axis)
  if shape[axis] % num_slices:
    raise ValueError(
        f'mesh {dict(zip(MESH_AXES, shape))} does not divide into '
        f'{num_slices} slices: mesh.{dcn_axis}={shape[axis]} is not a multiple '
        f'of mesh.num_slices={num_slices}; make it one (or -1).')
  dcn = tuple(num_slices if i == axis else 1 for i in range(3))
  ici = tuple(s // d for s, d in zip(shape, dcn))
  return ici, dcn


def make_mesh(axis_sizes: Mapping[str, Any],
              devices: Optional[Sequence[jax.Device]] = None, *,
              slices: Optional[Sequence[int]] = None) -> Mesh:
  """A Mesh over all devices (or `devices`) with axes (data, fsdp, model).

  `axis_sizes` is config.mesh: the axes, and for several slices joined by
  DCN `num_slices` and `dcn_axis`. The slices are the devices'
  `slice_index` (`slices`: one index per device, for simulated slices);
  the mesh is jax's hybrid mesh, the slices outermost on `dcn_axis`, so
  every collective over the other axes stays inside a slice (on ICI).
  """
  devices = list(jax.devices() if devices is None else devices)
  num_slices = int(dict(axis_sizes).get('num_slices', 1) or 1)
  ici, dcn = slice_shape(axis_sizes, len(devices))
  index = list(slices) if slices is not None else device_slices(devices)
  if len(index) != len(devices):
    raise ValueError(f'{len(index)} slice indices for {len(devices)} devices; '
                     f'give one per device.')
  found = sorted(set(index))
  if len(found) != num_slices:
    raise ValueError(
        f'the {len(devices)} devices are {len(found)} slice(s) (their '
        f'slice_index) but mesh.num_slices={num_slices}; set '
        f'--config.mesh.num_slices={len(found)}.')
  if num_slices == 1:
    try:
      grid = mesh_utils.create_device_mesh(ici, devices,
                                           allow_split_physical_axes=True)
    except (ValueError, NotImplementedError, AssertionError):
      grid = np.asarray(devices).reshape(ici)
    return Mesh(grid, MESH_AXES)
  per_slice = {i: index.count(i) for i in found}
  if len(set(per_slice.values())) != 1:
    raise ValueError(f'the slices have different numbers of devices '
                     f'({per_slice}); a multislice job needs slices of one '
                     f'type and size.')
  wrapped = [_InSlice(d, i) for d, i in zip(devices, index)]
  try:
    grid = mesh_utils.create_hybrid_device_mesh(
        ici, dcn, wrapped, allow_split_physical_axes=True)
  except (ValueError, NotImplementedError, AssertionError):
    # The devices' physical layout is unknown (CPU): each slice in order.
    blocks = np.empty(dcn, dtype=object)
    for k, i in enumerate(found):
      blocks.flat[k] = np.asarray(
          [w for w in wrapped if w.slice_index == i]).reshape(ici)
    grid = np.block(blocks.tolist())
  grid = np.vectorize(lambda w: w.device, otypes=[object])(grid)
  return Mesh(grid, MESH_AXES)


def _fsdp_axis(shape, spec, fsdp_size):
  """Largest dimension not yet sharded and divisible by the fsdp size."""
  best = None
  for i in np.argsort(shape)[::-1]:
    if spec[i] is None and shape[i] % fsdp_size == 0:
      best = int(i)
      break
  return best


def spec_for(name: str, shape: Sequence[int], rules: Sequence[tuple[str, Any]],
             mesh: Mesh, fsdp_min_size: int = 2**16) -> P:
  """PartitionSpec of one array by the first rule that matches `name`.

  Patterns follow vit_jax.rules (whole name or a '/'-bounded suffix).

  A rule's value is 'replicate', 'fsdp' (shard the largest divisible dimension
  over `fsdp` when the array has at least `fsdp_min_size` elements), or a
  tuple of axis names / None for the trailing dimensions (tensor
  parallelism; leading dimensions such as the layer axis of scanned blocks
  stay unsharded), optionally followed by FSDP when the tuple ends with
  '+fsdp'. An axis of size 1 in the
  mesh is dropped, so the same rules serve every mesh.
  """
  shape = tuple(shape)
  if not isinstance(rules, rules_lib.Rules):
    rules = sharding_rules(rules)
  i = rules.index(name)
  pattern, rule = rules.rules[i] if i is not None else ('', 'replicate')
  add_fsdp = False
  if rule == 'replicate':
    spec = [None] * len(shape)
  elif rule == 'fsdp':
    spec, add_fsdp = [None] * len(shape), True
  else:
    rule = list(rule)
    if rule and rule[-1] == '+fsdp':
      rule, add_fsdp = rule[:-1], True
    if len(rule) > len(shape):
      raise ValueError(f'sharding rule {pattern!r} -> {tuple(rule)} has '
                       f'{len(rule)} entries but {name} has shape {shape}; '
                       f'give at most one entry per dimension.')
    # A rule names the trailing dimensions; leading ones (the layer axis of
    # scanned blocks) stay unsharded.
    rule = [None] * (len(shape) - len(rule)) + rule
    spec = []
    for axis, dim in zip(rule, shape):
      if axis is not None and axis not in MESH_AXES:
        raise ValueError(f'sharding rule {pattern!r} names axis {axis!r}; '
                         f'mesh axes are {MESH_AXES}.')
      size = mesh.shape[axis] if axis else 1
      if size > 1 and dim % size:
        raise ValueError(f'{name} dimension {dim} is not divisible by mesh '
                         f'axis {axis!r} of size {size}; change the mesh or '
                         f'the rule {pattern!r}.')
      spec.append(axis if size > 1 else None)
  fsdp = mesh.shape['fsdp']
  if add_fsdp and fsdp > 1 and math.prod(shape) >= fsdp_min_size:
    axis = _fsdp_axis(shape, spec, fsdp)
    if axis is not None:
      spec[axis] = 'fsdp'
  return P(*spec)


def sharding_rules(rules: Sequence[tuple[str, Any]]) -> rules_lib.Rules:
  """`config.sharding.rules` in the rule dialect of vit_jax.rules."""
  return rules_lib.Rules(rules, what='sharding.rules', default='replicate')


def tree_shardings(tree: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]],
                   fsdp_min_size: int = 2**16) -> Any:
  """NamedShardings for every leaf of `tree` (arrays or ShapeDtypeStructs).

  Every rule must match some leaf of `tree` (vit_jax.rules).
  """
  rules = sharding_rules(rules)
  rules.check_used([name for name, _ in rules_lib.named_leaves(tree)])
  def one(path, x):
    shape = getattr(x, 'shape', ())
    return NamedSharding(mesh, spec_for(rules_lib.path_name(path), shape,
                                        rules, mesh, fsdp_min_size))
  return jax.tree_util.tree_map_with_path(one, tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension over (data, fsdp); the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def host_to_global(batch: Any, mesh: Mesh) -> Any:
  """Turns this host's slice of a batch into global arrays sharded by batch.

  Every host passes its own `global_batch / process_count` rows; the result
  has the global batch as its leading dimension.
  """
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      batch)


def global_to_host(tree: Any) -> Any:
  """Fully replicated copy of every array on every host, as numpy."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def check_batch_divisible(global_batch: int, accum_steps: int, mesh: Mesh
                          ) -> None:
  """Raises a clear error when the batch cannot be split as configured."""
  shards = mesh.shape['data'] * mesh.shape['fsdp']
  procs = jax.process_count()
  if global_batch <= 0 or accum_steps <= 0:
    raise ValueError(f'batch_size={global_batch} and accum_steps={accum_steps} '
                     f'must be positive.')
  if global_batch % procs:
    raise ValueError(f'batch_size={global_batch} is not divisible by the '
                     f'{procs} processes; use a multiple of {procs}.')
  if global_batch % (accum_steps * shards):
    raise ValueError(
        f'batch_size={global_batch} is not divisible by accum_steps '
        f'({accum_steps}) x data-parallel shards ({shards} = data x fsdp); '
        f'use a multiple of {accum_steps * shards}.')


def put_sharded(tree: Any, shardings: Any) -> Any:
  """Places host values (identical on every host) with the given shardings.

  Each device receives only its own shard, so a tree larger than one device's
  memory can be placed as long as each host holds it in host memory.
  """
  def one(x, sharding):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
  return jax.tree.map(one, tree, shardings)
