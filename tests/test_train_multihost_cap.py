"""The compute cap on several processes: every process stops at the same step."""

import io
import os

from launch import local

import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_two_processes_stop_together_at_the_cap(tmp_path):
  workdir = str(tmp_path / 'run')
  out = io.StringIO()
  result = local.run(
      ['--config=configs/quickstart.py:steps=400', f'--workdir={workdir}',
       '--config.budget.max_core_hours=0.0005', '--config.log_every=10',
       '--config.checkpoint_every=1000', *tiny.FLAGS],
      num_processes=2, devices_per_process=2, cwd=ROOT, output=out,
      timeout_s=240)
  log = out.getvalue()
  # Without an agreed verdict one process waits in the save while the other
  # trains on, and the launcher's timeout (status 124) ends the run.
  assert result.returncode == 75, log[-3000:]
  assert result.process_returncodes == [75, 75]
  assert log.count('compute budget exhausted') >= 1
  saved = [d for d in os.listdir(os.path.join(workdir, 'checkpoints'))
           if d.isdigit()]
  assert len(saved) == 1 and 0 < int(saved[0]) < 400, saved
