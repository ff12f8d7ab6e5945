"""Core-hours tracker arithmetic (pauses, megacore chips, preemption) and the cap."""

import json
import re

import pytest

from vit_jax import budget

HOUR = 3600.


class FakeClock:
  """A monotonic clock the test moves by hand."""

  def __init__(self, start=1_000.):
    self.now = start

  def __call__(self):
    return self.now

  def advance(self, seconds):
    self.now += seconds


def _tracker(kind='TPU v3', devices=8, clock=None, **kw):
  return budget.CoreHoursTracker(kind, devices, clock=clock or FakeClock(), **kw)


def test_every_held_second_counts_with_its_breakdown():
  clock = FakeClock()
  t = _tracker(clock=clock)
  t.hold()                             # first device use
  clock.advance(30)                    # setup: restore, init
  with t.paused('compile'):
    clock.advance(120)
  t.start_training()
  clock.advance(1 * HOUR)
  with t.paused('eval'):
    clock.advance(600)
  clock.advance(0.5 * HOUR)            # back on the training clock
  t.pause('checkpoint')
  clock.advance(60)
  t.start_training()
  with t.waiting_for_input():
    clock.advance(90)                  # a starved step: part of training
  clock.advance(0.25 * HOUR - 90)
  t.stop()
  clock.advance(5 * HOUR)              # nothing runs after stop()
  held = 1.75 + (30 + 120 + 600 + 60) / HOUR
  assert t.training_hours == pytest.approx(1.75)
  assert t.held_hours == pytest.approx(held)
  assert t.core_hours == pytest.approx(8 * held)   # v3: a device is a core
  assert t.device_hours == pytest.approx(8 * held)
  assert t.pause_hours() == pytest.approx(
      {'checkpoint': 60 / HOUR, 'compile': 120 / HOUR, 'eval': 600 / HOUR})
  assert t.breakdown_hours() == pytest.approx(
      {'training': 1.75, 'checkpoint': 60 / HOUR, 'compile': 120 / HOUR,
       'eval': 600 / HOUR, 'other': 30 / HOUR})
  assert t.metrics()['input_wait_hours'] == pytest.approx(90 / HOUR)
  assert t.core_hours_by_kind() == pytest.approx({'tpu_v3': 8 * held})


def test_megacore_device_is_two_cores():
  clock = FakeClock()
  t = _tracker('TPU v4', 4, clock)
  t.start_training()
  clock.advance(HOUR)
  assert t.device_hours == pytest.approx(4.0)
  assert t.core_hours == pytest.approx(8.0)
  gpu = _tracker('NVIDIA H100 80GB HBM3', 8, clock)
  gpu.start_training()
  clock.advance(HOUR)
  assert gpu.core_hours == pytest.approx(8.0)      # one GPU, one "core"


def test_metrics_rates_mfu_and_intervals():
  clock = FakeClock()
  fpi = budget.train_flops_per_image('ViT-B/16', 224)
  t = _tracker('TPU v3', 8, clock, flops_per_image=fpi)
  t.start_training()
  for _ in range(10):                  # 10 steps of 4096 images, 2 s each
    clock.advance(2.0)
    t.add_images(4096)
  m = t.metrics()
  assert m['img_per_sec'] == pytest.approx(2048.)
  assert m['img_per_sec_per_core'] == pytest.approx(256.)
  assert m['mfu'] == pytest.approx(2048 * fpi / (8 * 61.5e12))
  assert m['core_hours'] == pytest.approx(8 * 20 / HOUR)
  with t.paused('eval'):               # pauses count, but not in the rate
    clock.advance(100.)
  for _ in range(5):
    clock.advance(4.0)
    t.add_images(4096)
  m = t.metrics()
  assert m['img_per_sec'] == pytest.approx(1024.)
  assert m['pause_hours/eval'] == pytest.approx(100 / HOUR)
  assert m['core_hours/tpu_v3'] == pytest.approx(8 * 140 / HOUR)
  assert t.mfu() == pytest.approx(15 * 4096 * fpi / (140 * 8 * 61.5e12))
  assert json.loads(json.dumps(m)) == m  # loggable as is


def test_unknown_device_has_no_mfu():
  clock = FakeClock()
  t = _tracker('cpu', 8, clock, flops_per_image=1e9)
  t.start_training()
  clock.advance(10.)
  t.add_images(80)
  m = t.metrics()
  assert 'mfu' not in m and t.mfu() is None
  assert m['img_per_sec'] == pytest.approx(8.0)
  assert m['core_hours'] == pytest.approx(80 / HOUR)


def test_simulated_preemption_resumes_the_count():
  clock = FakeClock()
  first = _tracker('TPU v3', 8, clock)
  first.start_training()
  clock.advance(1.5 * HOUR)
  saved = json.loads(json.dumps(first.state_dict()))   # the checkpoint
  clock.advance(0.5 * HOUR)            # work after the checkpoint is lost
  assert first.core_hours == pytest.approx(16.0)
  del first                            # the process dies

  clock2 = FakeClock(start=50.)        # a new process, a new monotonic clock
  second = _tracker('TPU v4', 4, clock2)   # resumed on another slice
  second.pause('compile')              # a clock running across the restore
  clock2.advance(300.)
  second.load_state_dict(saved)
  clock2.advance(60.)
  second.start_training()
  clock2.advance(HOUR)
  # v4: 4 two-core chips held for the compile (360 s) and an hour.
  v4 = 8 * (1 + 360 / HOUR)
  assert second.core_hours_by_kind() == pytest.approx(
      {'tpu_v3': 12.0, 'tpu_v4': v4})
  assert second.core_hours == pytest.approx(12.0 + v4)
  assert second.training_hours == pytest.approx(2.5)
  assert second.session_core_hours == pytest.approx(v4)
  # The running compile clock carried over the restore, whole.
  assert second.pause_hours() == pytest.approx({'compile': 360 / HOUR})

  third = _tracker('TPU v3', 8, FakeClock())
  third.load_state_dict(json.loads(json.dumps(second.state_dict())))
  assert third.core_hours == pytest.approx(12.0 + v4)  # no clock ran between


def test_state_dict_is_flat_floats_with_plain_keys():
  clock = FakeClock()
  t = _tracker('NVIDIA H100 80GB HBM3', 2, clock, flops_per_image=5.)
  t.start_training()
  clock.advance(7.)
  t.add_images(3)
  with t.paused('eval'):
    clock.advance(1.)
  state = t.state_dict()
  assert all(isinstance(v, float) for v in state.values())
  assert all(re.fullmatch(r'[a-z0-9_]+', k) for k in state)
  assert state['device_seconds__nvidia_h100_80gb_hbm3'] == 16.0  # 2 x 8 s held
  assert state['flops__nvidia_h100_80gb_hbm3'] == 15.0
  assert state['pause_seconds__eval'] == 1.0


def test_load_rejects_other_states_and_ignores_empty():
  t = _tracker()
  with pytest.raises(ValueError, match=r"unexpected keys \['step'\]"):
    t.load_state_dict({'version': 1.0, 'images': 0., 'training_seconds': 0.,
                       'step': 3.})
  with pytest.raises(ValueError, match='version 2.0'):
    t.load_state_dict({'version': 2.0, 'images': 0., 'training_seconds': 0.})
  t.load_state_dict({})
  assert t.core_hours == 0.0


def test_bad_tracker_inputs():
  with pytest.raises(ValueError, match='num_devices must be a positive'):
    budget.CoreHoursTracker('TPU v3', 0)
  with pytest.raises(ValueError, match='pause reason'):
    _tracker().pause('Eval time')
  with pytest.raises(ValueError, match='flops_per_image'):
    budget.CoreHoursTracker('TPU v3', 8, flops_per_image=0)


def test_cap_warns_once_then_stops():
  cap = budget.BudgetCap(10.)
  assert [cap.check(h) for h in (0., 5., 7.99, 8., 8.5, 9.99, 10., 12.)] == [
      'ok', 'ok', 'ok', 'warn', 'ok', 'ok', 'stop', 'stop']
  straight = budget.BudgetCap(10.)
  assert straight.check(11.) == 'stop'
  assert budget.BudgetCap(None).check(1e9) == 'ok'
  assert '80%' in cap.warn_message(8.)


def test_cap_stops_a_run_and_resumes_it_when_raised():
  """A unit-level run: steps of 0.1 core-hours until the cap says stop."""
  def run(cap, state):
    clock = FakeClock()
    tracker = _tracker('TPU v3', 1, clock)
    tracker.load_state_dict(state)
    tracker.start_training()
    steps = 0
    while True:
      verdict = cap.check(tracker.core_hours)
      if verdict == 'stop':
        return tracker.state_dict(), steps
      clock.advance(0.1 * HOUR)       # one step on one core
      steps += 1

  state, steps = run(budget.BudgetCap(1.0), {})
  assert steps == 10
  assert budget.CoreHoursTracker('TPU v3', 1).core_hours == 0.0
  again, _ = run(budget.BudgetCap(1.0), state)   # not raised: stops at once
  assert again['device_seconds__tpu_v3'] == pytest.approx(HOUR)
  state, more = run(budget.BudgetCap(2.5), state)   # raised: 15 more steps
  assert more == 15
  assert state['device_seconds__tpu_v3'] == pytest.approx(2.5 * HOUR)


def test_stop_message_says_how_to_go_on():
  cap = budget.BudgetCap(100.)
  msg = cap.stop_message(100.4, '/runs/l16')
  assert '--config.budget.max_core_hours=200' in msg
  assert '--workdir=/runs/l16' in msg
  assert str(budget.EXIT_BUDGET_EXHAUSTED) in msg and '\n' not in msg
  msg = cap.stop_message(100.4, projected_core_hours=180.)
  assert '--config.budget.max_core_hours=189' in msg
  assert 'the same --workdir' in msg
  assert budget.EXIT_BUDGET_EXHAUSTED == 75


def test_cap_from_config():
  assert budget.BudgetCap.from_config({'max_core_hours': 5.}).max_core_hours == 5.
  assert budget.BudgetCap.from_config(
      {'max_core_hours': None, 'max_core_days': 2}).max_core_hours == 48.
  assert not budget.BudgetCap.from_config({'max_core_hours': None}).enabled
  assert not budget.BudgetCap.from_config(None).enabled
  with pytest.raises(ValueError, match='not both'):
    budget.BudgetCap.from_config({'max_core_hours': 5., 'max_core_days': 1.})
  with pytest.raises(ValueError, match='positive number of core-hours'):
    budget.BudgetCap.from_config({'max_core_hours': -5.})
  with pytest.raises(ValueError, match='max_core_days must be a positive'):
    budget.BudgetCap.from_config({'max_core_days': -1.})
