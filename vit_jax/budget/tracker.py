"""Core-hours of a training run: wall clocks per activity, kept in the checkpoint.

The paper's TPUv3-core-days are cores x wall time: every second the devices
are held counts. The held clock runs from `hold()` (the first device use; the
first `start_training()` or `pause()` starts it too) to `stop()`, and is
counted per device kind as devices x wall seconds. Core-hours = device-hours
x TensorCores per device (2 on v4/v5p, whose JAX device is a two-core chip;
1 elsewhere, and for unknown kinds). The cap sees all of it.

Beside the total, the held time is broken down by activity: training (the
step loop, of which `input_wait`: the host waiting for the next batch),
compile, eval, checkpoint (the pause clocks), and other (setup: restore,
initialisation, building evaluators; the held time no clock named).

    tracker = CoreHoursTracker(jax.devices()[0].device_kind, jax.device_count())
    tracker.hold()                           # first device use
    tracker.load_state_dict(restored)        # after a restore, if any
    with tracker.paused('compile'): step = train_step.lower(...).compile()
    tracker.start_training()
    ... with tracker.waiting_for_input(): batch = next(batches)
    ... state = step(state, batch); tracker.add_images(global_batch_size)
    with tracker.paused('eval'): ...
    writer.write_scalars(step, tracker.metrics())
    checkpoint(..., budget=tracker.state_dict())
    tracker.stop()                           # the devices are released
"""

from __future__ import annotations

import contextlib
import re
import time
from typing import Callable, Iterator, Mapping, Optional

from vit_jax.budget import hardware

STATE_VERSION = 1.0
#: Pause reasons the training loop is expected to use (any [a-z0-9_]+ works).
PAUSE_REASONS = ('compile', 'eval', 'checkpoint')
_TRAINING = 'training'
_SCALAR_KEYS = ('version', 'images', 'training_seconds')
# Written since held time counts; a state without them reads them as 0.
_OPTIONAL_KEYS = ('held_seconds', 'input_wait_seconds')
_KIND_PREFIXES = ('device_seconds__', 'num_devices__', 'flops__', 'images__')
_PAUSE_PREFIX = 'pause_seconds__'


def _check_reason(reason: str) -> str:
  if not re.fullmatch(r'[a-z0-9_]+', reason or '') or reason == _TRAINING:
    raise ValueError(f'pause reason {reason!r} must be lower-case letters, '
                     f'digits or _ (e.g. {", ".join(PAUSE_REASONS)}).')
  return reason


class CoreHoursTracker:
  """Counts training device-seconds per device kind, and pause seconds per reason.

  Clocks: at most one runs at a time, 'training' or one pause reason; none
  runs until `start_training()` or `pause(reason)`. All counters are floats in
  `state_dict()`, so they fit a JSON file and an orbax checkpoint.
  """

  def __init__(self, device_kind: str, num_devices: int, *,
               flops_per_image: Optional[float] = None,
               clock: Callable[[], float] = time.monotonic):
    if int(num_devices) != num_devices or num_devices <= 0:
      raise ValueError(f'num_devices must be a positive integer, got '
                       f'{num_devices!r}; pass jax.device_count().')
    if flops_per_image is not None and not flops_per_image > 0:
      raise ValueError(f'flops_per_image must be positive, got '
                       f'{flops_per_image!r}; see budget.train_flops_per_image.')
    self.device_kind = device_kind
    self.kind = hardware.kind_slug(device_kind)
    self.num_devices = int(num_devices)
    self.flops_per_image = flops_per_image
    self.hardware = hardware.for_device_kind(device_kind)
    self._clock = clock
    self._counters = {'version': STATE_VERSION, 'images': 0.0,
                      'training_seconds': 0.0, 'held_seconds': 0.0,
                      'input_wait_seconds': 0.0}
    self._touch_kind()
    self._session: dict[str, float] = {}  # this process only, never loaded
    self._mode: Optional[str] = None      # the running clock
    self._since = 0.0
    self._holding = False                 # the held clock runs
    self._held_since = 0.0
    self._frozen = False
    self._last_metrics = (0.0, 0.0)       # (images, training seconds)

  # Clocks.

  def _touch_kind(self) -> None:
    for prefix in _KIND_PREFIXES:
      self._counters.setdefault(prefix + self.kind, 0.0)
    self._counters['num_devices__' + self.kind] = float(self.num_devices)

  def _flush(self) -> None:
    """Moves the running clocks' elapsed time into the counters."""
    if self._frozen:  # metrics() reads one consistent snapshot
      return
    now = self._clock()
    if self._mode is not None:
      elapsed = max(now - self._since, 0.0)
      if self._mode == _TRAINING:
        self._add('training_seconds', elapsed)
      else:
        self._add(_PAUSE_PREFIX + self._mode, elapsed)
    if self._holding:
      held = max(now - self._held_since, 0.0)
      self._add('held_seconds', held)
      self._add('device_seconds__' + self.kind, held * self.num_devices)
    self._since = self._held_since = now

  def hold(self) -> None:
    """Starts the held clock (the devices are in use from now on)."""
    if not self._holding:
      self._flush()
      self._holding = True
      self._held_since = self._since

  def _add(self, key: str, value: float) -> None:
    self._counters[key] = self._counters.get(key, 0.0) + value
    self._session[key] = self._session.get(key, 0.0) + value

  def start_training(self) -> None:
    """Starts (or resumes) the training clock, stopping any pause clock."""
    self.hold()
    self._flush()
    self._mode = _TRAINING

  def pause(self, reason: str) -> None:
    """Stops the training clock and runs the clock of `reason` instead."""
    reason = _check_reason(reason)
    self.hold()
    self._flush()
    self._mode = reason

  def stop(self) -> None:
    """Stops every clock, the held one too (the devices are released)."""
    self._flush()
    self._mode = None
    self._holding = False

  @contextlib.contextmanager
  def waiting_for_input(self) -> Iterator[None]:
    """Times the block as input wait, a part of training (no clock changes)."""
    start = self._clock()
    try:
      yield
    finally:
      self._add('input_wait_seconds', max(self._clock() - start, 0.0))

  @contextlib.contextmanager
  def paused(self, reason: str) -> Iterator[None]:
    """Runs the block on the `reason` clock, then restores the previous clock."""
    previous = self._mode
    self.pause(reason)
    try:
      yield
    finally:
      self._flush()
      self._mode = previous

  def add_images(self, num_images: float) -> None:
    """Records images trained on (the global batch size per step)."""
    if num_images < 0:
      raise ValueError(f'num_images must be >= 0, got {num_images}.')
    self._add('images', float(num_images))
    self._add('images__' + self.kind, float(num_images))
    if self.flops_per_image:
      self._add('flops__' + self.kind, num_images * self.flops_per_image)

  # Totals.

  def _kinds(self) -> list[str]:
    prefix = 'device_seconds__'
    return sorted(k[len(prefix):] for k in self._counters if k.startswith(prefix))

  @staticmethod
  def _cores_per_device(kind: str) -> float:
    return hardware.cores_per_device(kind.replace('_', ' '))

  def core_hours_by_kind(self) -> dict[str, float]:
    """TensorCore-hours held per device kind (slug -> hours)."""
    self._flush()
    return {k: self._counters['device_seconds__' + k] *
               self._cores_per_device(k) / 3600. for k in self._kinds()}

  @property
  def core_hours(self) -> float:
    """TensorCore-hours held, all device kinds together."""
    return sum(self.core_hours_by_kind().values())

  @property
  def device_hours(self) -> float:
    self._flush()
    return sum(self._counters['device_seconds__' + k] for k in self._kinds()) / 3600.

  @property
  def training_hours(self) -> float:
    """Wall-clock hours on the training clock."""
    self._flush()
    return self._counters['training_seconds'] / 3600.

  @property
  def held_hours(self) -> float:
    """Wall-clock hours the devices were held (all processes of the run)."""
    self._flush()
    return self._counters['held_seconds'] / 3600.

  def breakdown_hours(self) -> dict[str, float]:
    """Held wall-clock hours by activity; the values add up to held_hours.

    training (input_wait is a part of it, reported apart and not added),
    each pause reason, and other (held time no clock named).
    """
    self._flush()
    pauses = self.pause_hours()
    out = {'training': self.training_hours, **pauses}
    out['other'] = max(self.held_hours - sum(out.values()), 0.0)
    return out

  def pause_hours(self) -> dict[str, float]:
    """Wall-clock hours on each pause clock (compile, eval, checkpoint, ...)."""
    self._flush()
    n = len(_PAUSE_PREFIX)
    return {k[n:]: v / 3600. for k, v in sorted(self._counters.items())
            if k.startswith(_PAUSE_PREFIX)}

  @property
  def session_core_hours(self) -> float:
    """Core-hours counted by this process (not restored from a checkpoint)."""
    self._flush()
    return self._session.get('device_seconds__' + self.kind, 0.0) * \
        self._cores_per_device(self.kind) / 3600.

  def mfu(self) -> Optional[float]:
    """Model FLOPs utilisation over the whole run on the current device kind."""
    self._flush()
    seconds = self._counters['device_seconds__' + self.kind]
    if not (self.hardware and self.flops_per_image and seconds):
      return None
    return self._counters['flops__' + self.kind] / (
        seconds * self.hardware.peak_flops_per_device)

  def metrics(self) -> dict[str, float]:
    """Scalars for the training log and metrics.jsonl.

    Rates (img_per_sec, img_per_sec_per_core, mfu) cover the training time
    since the previous call; counters (core_hours, ...) cover the whole run.
    `mfu` is left out where the device's peak is unknown (e.g. CPU).
    """
    self._flush()
    self._frozen = True
    try:
      return self._metrics()
    finally:
      self._frozen = False

  def _metrics(self) -> dict[str, float]:
    out = {'core_hours': self.core_hours, 'device_hours': self.device_hours,
           'held_hours': self.held_hours,
           'training_hours': self.training_hours,
           'input_wait_hours': self._counters['input_wait_seconds'] / 3600.,
           'other_hours': self.breakdown_hours()['other'],
           'session_core_hours': self.session_core_hours}
    out.update({f'core_hours/{k}': v for k, v in self.core_hours_by_kind().items()})
    out.update({f'pause_hours/{k}': v for k, v in self.pause_hours().items()})
    images, seconds = self._counters['images'], self._counters['training_seconds']
    d_images = images - self._last_metrics[0]
    d_seconds = seconds - self._last_metrics[1]
    if d_seconds > 0 and d_images > 0:
      rate = d_images / d_seconds
      out['img_per_sec'] = rate
      out['img_per_sec_per_core'] = rate / (
          self.num_devices * self._cores_per_device(self.kind))
      if self.hardware and self.flops_per_image:
        out['mfu'] = rate * self.flops_per_image / (
            self.num_devices * self.hardware.peak_flops_per_device)
    self._last_metrics = (images, seconds)
    return out

  # Checkpointing.

  def state_dict(self) -> dict[str, float]:
    """The counters up to now, as a flat dict of floats (keys [a-z0-9_])."""
    self._flush()
    return dict(self._counters)

  def load_state_dict(self, state: Mapping[str, float]) -> None:
    """Replaces the counters by those of a checkpoint; a running clock goes on.

    An empty mapping (a checkpoint written without counters) changes nothing.
    """
    if not state:
      return
    unexpected = [k for k in state if k not in _SCALAR_KEYS + _OPTIONAL_KEYS
                  and not k.startswith(_KIND_PREFIXES + (_PAUSE_PREFIX,))]
    missing = [k for k in _SCALAR_KEYS if k not in state]
    if unexpected or missing:
      raise ValueError(f'not a CoreHoursTracker state: missing keys {missing}, '
                       f'unexpected keys {unexpected}.')
    if float(state['version']) != STATE_VERSION:
      raise ValueError(f'tracker state version {state["version"]} is not '
                       f'{STATE_VERSION}; it was written by another vit_jax.')
    self._counters = {**{k: 0.0 for k in _OPTIONAL_KEYS},
                      **{k: float(v) for k, v in state.items()}}
    self._touch_kind()
    self._last_metrics = (self._counters['images'],
                          self._counters['training_seconds'])
