"""Core-hours of a real (short) run: every second the devices are held counts."""

import json
import os
import sys
import time

import jax
import pytest

from vit_jax import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import quickstart  # pylint: disable=wrong-import-position


def test_core_hours_are_wall_time_times_devices(tmp_path):
  c = quickstart.get_config('steps=12,batch=64')
  c.unlock()
  c.model.num_layers, c.model.mlp_dim = 1, 64  # a smaller model: fast compile
  c.log_every = 6
  c.checkpoint_every = 6    # checkpoint pauses too
  c.evals.val.every = 6     # and evaluation pauses
  start = time.monotonic()  # imports aside: they ran before
  result = train.train_and_evaluate(c, str(tmp_path))
  wall = time.monotonic() - start
  assert result.status == 'done'
  devices = jax.device_count()
  assert devices == 8
  # CPU devices count one core each: core-hours = held hours x 8.
  held = result.core_hours * 3600 / devices
  print(f'held {held:.2f} s of {wall:.2f} s wall')
  assert held == pytest.approx(wall, rel=0.03)
  with open(tmp_path / 'metrics.jsonl') as f:
    last = [json.loads(line) for line in f][-1]
  assert last['step'] == 12
  parts = (last['training_hours'] + last['other_hours'] +
           sum(v for k, v in last.items() if k.startswith('pause_hours/')))
  assert parts == pytest.approx(last['held_hours'], rel=1e-6)
  assert last['core_hours'] == pytest.approx(8 * last['held_hours'], rel=1e-6)
  assert {'pause_hours/compile', 'pause_hours/eval',
          'pause_hours/checkpoint'} <= set(last)
  assert 0 <= last['input_wait_hours'] <= last['training_hours']
  # Held time well beyond the training clock: what used to be left out.
  assert last['held_hours'] > 1.05 * last['training_hours']
