"""Multi-host correctness through launch.local: 1, 2 and 4 processes train alike; N->M restore.

The quickstart (configs/quickstart.py: the digits, its preprocessing, optimizer
and schedule; a narrower ViT to keep it quick) with a global batch of 64 on the
first 300 training digits: every step is another batch of the seeded global
order, and the epoch rolls over inside step 5 (positions 256..319).
The global batch of step s must not depend on the process count, so the
losses of 1, 2 and 4 processes must agree to float rounding, which they
cannot if the hosts shuffle their own shares, if a host trains on its own
gradient alone, or if it sees another host's examples twice. Each run is
`python -m vit_jax.main` started by launch.local, the code path of a pod.

Runs (slow: each starts jax in every process):
  one   1 process x 8 devices, 6 steps: the reference
  two   2 processes x 4 devices, 6 steps, checkpoints at 3 and 6
  four  from two's step-3 checkpoint, 4 processes x 2 devices, checkpoints every step
  back  from four's step-4 checkpoint, 1 process x 8 devices
"""

import io
import json
import pathlib
import shutil

import numpy as np
import pytest

from launch import local

REPO = pathlib.Path(__file__).resolve().parents[1]
BATCH, TRAIN_DIGITS, TEST_DIGITS = 64, 300, 45  # 45: no host count or host batch divides it
FLAGS = (
    f'--config=configs/quickstart.py:steps=6,batch={BATCH}',
    f'--config.input.data.split=train[:{TRAIN_DIGITS}]',
    f'--config.evals.val.data.split=test[:{TEST_DIGITS}]',
    '--config.evals.val.batch_size=16',
    '--config.evals.val.every=3',
    '--config.log_every=1',
    '--config.checkpoint_every=3',
    '--config.keep_checkpoints=10',
    '--config.export_npz=False',
    '--config.model.hidden_size=32', '--config.model.num_layers=2',
    '--config.model.mlp_dim=64', '--config.model.num_heads=2',
)


def _train(workdir, num_processes, devices_per_process, *flags):
  out = io.StringIO()
  result = local.run([*FLAGS, f'--workdir={workdir}', *flags],
                     num_processes=num_processes, devices_per_process=devices_per_process,
                     cwd=str(REPO), output=out, timeout_s=600)
  assert result.returncode == 0, out.getvalue()[-5000:]
  return out.getvalue()


def _metrics(workdir):
  """metrics.jsonl as a list of records, in file order."""
  return [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]


def _resume_copy(src, dst, keep_through):
  """`src` without its checkpoints after step `keep_through` and without its logs."""
  shutil.copytree(src, dst)
  for step_dir in (dst / 'checkpoints').iterdir():
    if step_dir.name.isdigit() and int(step_dir.name) > keep_through:
      shutil.rmtree(step_dir)
  for log in [dst / 'metrics.jsonl', *dst.glob('events.out.tfevents.*')]:
    log.unlink()
  return dst


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  base = tmp_path_factory.mktemp('runs')
  made = {}

  def get(name):
    if name not in made:
      if name == 'one':
        made[name] = (base / name, _train(base / name, 1, 8))
      elif name == 'two':
        made[name] = (base / name, _train(base / name, 2, 4))
      elif name == 'four':
        workdir = _resume_copy(get('two')[0], base / name, keep_through=3)
        made[name] = (workdir, _train(workdir, 4, 2, '--config.checkpoint_every=1'))
      elif name == 'back':
        workdir = _resume_copy(get('four')[0], base / name, keep_through=4)
        made[name] = (workdir, _train(workdir, 1, 8))
    return made[name]
  return get


def _assert_same_training(records, reference):
  by_step = {r['step']: r for r in reference}
  for record in records:
    want = by_step[record['step']]
    for key in ('train_loss', 'grad_norm', 'learning_rate'):
      np.testing.assert_allclose(record[key], want[key], rtol=2e-5, err_msg=f'{key} at step {record["step"]}')
    for key in [k for k in want if k.startswith('val/')]:
      np.testing.assert_allclose(record[key], want[key], rtol=1e-6, err_msg=f'{key} at step {record["step"]}')


def test_two_processes_train_like_one(runs):
  one, two = _metrics(runs('one')[0]), _metrics(runs('two')[0])
  assert [r['step'] for r in one] == [1, 2, 3, 4, 5, 6]
  assert one[0]['grad_norm'] > 0 and one[-1]['train_loss'] < one[0]['train_loss']  # it trains
  _assert_same_training(two, one)
  assert [r['step'] for r in two] == [1, 2, 3, 4, 5, 6]


def test_evaluation_counts_each_example_once(runs):
  for name in ('one', 'two', 'four'):
    evals = [r for r in _metrics(runs(name)[0]) if 'val/num_examples' in r]
    assert evals and all(r['val/num_examples'] == TEST_DIGITS for r in evals), name


def test_only_process_zero_writes_metrics(runs):
  workdir, output = runs('two')
  assert [r['step'] for r in _metrics(workdir)] == [1, 2, 3, 4, 5, 6]  # no line twice
  assert len(list(workdir.glob('events.out.tfevents.*'))) == 1
  summaries = [line for line in output.splitlines() if 'SUMMARY status=done' in line]
  assert len(summaries) == 1 and summaries[0].startswith('[0] ')
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit()) == ['3', '6']


def test_checkpoint_of_two_processes_resumes_on_four(runs):
  workdir, output = runs('four')
  assert '[3] ' in output  # four processes ran
  records = _metrics(workdir)
  assert [r['step'] for r in records] == [4, 5, 6]
  _assert_same_training(records, _metrics(runs('one')[0]))


def test_checkpoint_of_four_processes_resumes_on_one(runs):
  workdir, _ = runs('back')
  records = _metrics(workdir)
  assert [r['step'] for r in records] == [5, 6]
  _assert_same_training(records, _metrics(runs('one')[0]))
