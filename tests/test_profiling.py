"""The profile window: a jax.profiler trace of chosen steps in WORKDIR/plugins/profile."""

import glob
import os
import sys

import jax
import jax.numpy as jnp
import pytest

from vit_jax import profiling, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import quickstart  # pylint: disable=wrong-import-position


def _traces(logdir):
  return glob.glob(os.path.join(logdir, 'plugins', 'profile', '*',
                                '*.xplane.pb'))


def test_window_traces_exactly_its_steps(tmp_path):
  window = profiling.ProfileWindow(str(tmp_path), start_step=2, num_steps=3)
  f = jax.jit(lambda x: jnp.sin(x) @ x)
  x = jnp.ones((64, 64))
  active = []
  for step in range(8):
    window.before(step)
    active.append(window.active)
    x = f(x)
    window.after(step, x)
  window.stop()
  assert active == [False, False, True, True, True, False, False, False]
  files = _traces(tmp_path)
  assert len(files) == 1 and os.path.getsize(files[0]) > 1000


def test_no_window_and_a_window_already_passed_write_nothing(tmp_path):
  for window in (profiling.ProfileWindow(str(tmp_path)),
                 profiling.ProfileWindow(str(tmp_path), start_step=5)):
    for step in range(10, 13):
      window.before(step)
      assert not window.active
      window.after(step)
  assert not os.path.exists(tmp_path / 'plugins')


def test_bad_windows_are_one_line_errors(tmp_path):
  with pytest.raises(ValueError, match='num_steps >= 1'):
    profiling.ProfileWindow(str(tmp_path), start_step=0, num_steps=0)
  with pytest.raises(ValueError, match='unknown config.profile key'):
    profiling.ProfileWindow.from_config({'start': 3}, str(tmp_path))


def test_training_run_writes_the_trace_of_its_window(tmp_path):
  config = quickstart.get_config('steps=6,batch=32')
  config.unlock()
  config.profile.start_step = 1
  config.profile.num_steps = 3
  config.evals = {}
  config.export_npz = False
  result = train.train_and_evaluate(config, str(tmp_path))
  assert result.step == 6
  files = _traces(tmp_path)
  assert len(files) == 1 and os.path.getsize(files[0]) > 1000
