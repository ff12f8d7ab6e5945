"""TensorBoard scalars of a local run, written without TensorFlow and read back by TensorBoard."""

import json
import os
import pathlib
import subprocess
import sys

from vit_jax import metrics

REPO = pathlib.Path(__file__).resolve().parents[1]

_WRITE = r'''
import json, sys
from vit_jax import metrics
writer = metrics.MetricWriter(sys.argv[1], is_primary=True)
writer.write(10, {'train_loss': 2.5, 'learning_rate': 1e-3, 'note': 'text is not a scalar'})
writer.write(20, {'train_loss': 1.25, 'learning_rate': 5e-4, 'mfu': None})
writer.close()
print(json.dumps({'tensorflow': 'tensorflow' in sys.modules}))
'''


def test_a_local_run_writes_tensorboard_scalars_without_tensorflow(tmp_path):
  proc = subprocess.run([sys.executable, '-c', _WRITE, str(tmp_path)],
                        capture_output=True, text=True, cwd=REPO, timeout=120,
                        check=False, env={**os.environ, 'PYTHONPATH': str(REPO)})
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert json.loads(proc.stdout.strip().splitlines()[-1]) == {'tensorflow': False}
  events = [p.name for p in tmp_path.iterdir() if p.name.startswith('events.out.tfevents.')]
  assert len(events) == 1, events
  rows = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in rows] == [10, 20]

  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  acc = event_accumulator.EventAccumulator(str(tmp_path))
  acc.Reload()
  assert sorted(acc.Tags()['scalars']) == ['learning_rate', 'train_loss']
  assert [(e.step, e.value) for e in acc.Scalars('train_loss')] == [(10, 2.5), (20, 1.25)]
  assert [(e.step, round(e.value, 9)) for e in acc.Scalars('learning_rate')] == [
      (10, 1e-3), (20, 5e-4)]


def test_two_writers_in_one_directory_keep_two_files(tmp_path):
  first, second = metrics.EventFile(str(tmp_path)), metrics.EventFile(str(tmp_path))
  first.write_scalars(1, {'a': 1.0})
  second.write_scalars(2, {'a': 2.0})
  first.close()
  second.close()
  second.close()  # Closing twice is harmless (ExitStack and an error path).
  assert len(list(tmp_path.iterdir())) == 2
