"""`report` and `plot` on workdirs written the way the training loop writes them."""

import json
import os

import pytest
from PIL import Image

from vit_jax import budget
from vit_jax.planner import report
from vit_jax.planner.__main__ import main

STEP_SECONDS = 36.          # 8 v3 cores x 36 s = 0.08 core-hours per step
CORE_HOURS_PER_STEP = 0.08
EVAL_CORE_HOURS = 8 * 20. / 3600  # an evaluation holds the 8 cores too
# Rows at step 200: 200 steps and the evaluations at 50, 100 and 150.
AT_200 = 200 * CORE_HOURS_PER_STEP + 3 * EVAL_CORE_HOURS
# The projection's slope: rows 110..200, with the evaluation at 150.
PROJECTED = AT_200 + 100 * (90 * CORE_HOURS_PER_STEP + EVAL_CORE_HOURS) / 90
FLOPS_PER_IMAGE = budget.train_flops_per_image('ViT-B/16', 224)


class FakeClock:

  def __init__(self):
    self.now = 0.

  def __call__(self):
    return self.now


def _process(rows, state, first_step, last_step, checkpoints, *, truncate=False):
  """One training process: steps first..last, a row every 10 steps, an eval
  every 50 (a 20 s pause), checkpoints at `checkpoints`. Returns the saved
  tracker states by step."""
  clock = FakeClock()
  tracker = budget.CoreHoursTracker('TPU v3', 8, clock=clock,
                                    flops_per_image=FLOPS_PER_IMAGE)
  tracker.load_state_dict(state)
  if truncate:  # the training loop drops rows past the restored step
    rows[:] = [r for r in rows if r['step'] <= first_step - 1]
  tracker.start_training()
  saved = {}
  for step in range(first_step, last_step + 1):
    clock.now += STEP_SECONDS
    tracker.add_images(64)
    if step % 10 == 0:
      row = {'step': step, 'train_loss': 10. / step, 'learning_rate': 1e-3,
             'grad_norm': 1.0, **tracker.metrics()}
      if step % 50 == 0:
        with tracker.paused('eval'):
          clock.now += 20.
          row['val/top1'] = step / 1000.
      rows.append(row)
    if step in checkpoints:
      saved[step] = json.loads(json.dumps(tracker.state_dict()))
  return saved


def _write_run(path, *, truncate=False, max_core_hours=30.):
  """A 300-step run killed after step 130 and resumed from step 100."""
  rows = []
  saved = _process(rows, {}, 1, 130, {50, 100})
  _process(rows, saved[100], 101, 200, set(), truncate=truncate)
  os.makedirs(path)
  with open(os.path.join(path, 'metrics.jsonl'), 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in rows)
  config = {'model': {'name': 'ViT-B/16'}, 'total_steps': 300,
            'batch_size': 64, 'budget': {'max_core_hours': max_core_hours,
                                         'max_core_days': None,
                                         'plan_core_hours': 25.0}}
  with open(os.path.join(path, 'config.json'), 'w') as f:
    json.dump(config, f)
  return str(path)


def test_report_across_a_preemption(tmp_path):
  r = report.summarize(_write_run(tmp_path / 'b16'))
  assert (r.model, r.step, r.total_steps, r.restarts) == ('ViT-B/16', 200, 300, 1)
  assert r.core_hours == pytest.approx(AT_200)
  assert r.core_hours_by_kind == pytest.approx({'tpu_v3': AT_200})
  # Steps 101-130 ran twice: the first time was lost with the process.
  assert r.lost_core_hours == pytest.approx(30 * CORE_HOURS_PER_STEP)
  assert r.projected_core_hours == pytest.approx(PROJECTED)
  assert (r.plan_core_hours, r.max_core_hours) == (25.0, 30.0)
  # Evaluation pauses: steps 50 and 100 (restored from the checkpoint) and
  # 150; step 200's evaluation runs after its row is logged, as in the loop.
  assert r.pause_hours == pytest.approx({'eval': 3 * 20 / 3600})
  assert r.img_per_sec_per_core == pytest.approx(64 / STEP_SECONDS / 8)
  assert r.mfu == pytest.approx(64 / STEP_SECONDS * FLOPS_PER_IMAGE / (8 * 61.5e12))
  assert (r.eval_metric, r.best_eval) == ('val/top1', 0.2)
  assert r.train_loss == pytest.approx(10. / 200)
  kept = report.trajectory(report.read_metrics(str(tmp_path / 'b16')))
  assert [row['step'] for row in kept] == list(range(10, 201, 10))


def test_report_when_the_loop_truncated_the_lost_rows(tmp_path):
  r = report.summarize(_write_run(tmp_path / 'b16', truncate=True))
  assert r.restarts == 1                 # seen from session_core_hours
  assert r.core_hours == pytest.approx(AT_200)
  assert r.lost_core_hours == 0.0        # the evidence was truncated
  assert r.projected_core_hours == pytest.approx(PROJECTED)


def test_compare_runs_and_cli(tmp_path, capsys):
  a = _write_run(tmp_path / 'run_a')
  rows = [{'step': 100, 'core_hours': 3.0, 'train_loss': 1.0, 'val/top1': 0.5}]
  os.makedirs(tmp_path / 'run_b')
  (tmp_path / 'run_b' / 'metrics.jsonl').write_text(json.dumps(rows[0]) + '\n')
  assert main(['report', a, str(tmp_path / 'run_b')]) == 0
  out = capsys.readouterr().out.splitlines()
  assert out[1].startswith('run_b') and out[2].startswith('run_a')  # by cost
  assert f'{AT_200:.2f}' in out[2] and f'{PROJECTED:.2f}' in out[2]
  assert '2.40' in out[2]
  assert f'tpu_v3 {AT_200:.2f}' in out[4] and 'restarts: 1' in out[4]
  # The held wall time and its breakdown: 200 x 36 s of training, 3 x 20 s
  # of evaluation, nothing else.
  assert ('wall hours held (all counted): 2.02 = training 2.00 (input wait '
          '0.00), eval 0.02, other 0.00') in out[4]
  assert main(['report', '--json', a]) == 0
  (data,) = json.loads(capsys.readouterr().out)
  assert data['name'] == 'run_a' and data['core_hours'] == pytest.approx(AT_200)
  assert main(['report', str(tmp_path / 'missing')]) == 2
  err = capsys.readouterr().err
  assert 'missing does not exist; pass the --workdir' in err and err.count('\n') == 1


def test_bad_metrics_files(tmp_path):
  os.makedirs(tmp_path / 'r')
  (tmp_path / 'r' / 'metrics.jsonl').write_text('{"step": 1}\n{oops\n')
  with pytest.raises(ValueError, match='line 2 is not JSON'):
    report.read_metrics(str(tmp_path / 'r'))
  (tmp_path / 'r' / 'metrics.jsonl').write_text('{"loss": 1}\n')
  with pytest.raises(ValueError, match='line 1 has no numeric "step"'):
    report.read_metrics(str(tmp_path / 'r'))


def test_plot_accuracy_and_loss_against_core_hours(tmp_path, capsys):
  a = _write_run(tmp_path / 'run_a')
  b = _write_run(tmp_path / 'run_b', truncate=True)
  out = str(tmp_path / 'plots' / 'compute.png')
  assert main(['plot', a, b, '--out', out, '--logx']) == 0
  assert capsys.readouterr().out.strip() == f'wrote {out}'
  with Image.open(out) as image:
    assert image.format == 'PNG' and image.size == (1210, 462)
  assert os.listdir(tmp_path / 'plots') == ['compute.png']  # no temp files
  assert main(['plot', a, '--out', str(tmp_path / 'x.pdf')]) == 2
  assert 'ending in .png' in capsys.readouterr().err


def test_report_skips_paths_that_are_not_runs(tmp_path, capsys):
  a = _write_run(tmp_path / 'run_a')
  os.makedirs(tmp_path / 'plots')                       # a directory without metrics.jsonl
  (tmp_path / 'notes.txt').write_text('not a run')     # a file, as `runs/*` would list it
  assert main(['report', a, str(tmp_path / 'plots'), str(tmp_path / 'notes.txt')]) == 0
  captured = capsys.readouterr()
  out = captured.out.splitlines()
  assert len(out) == 3 and out[1].startswith('run_a') and f'{AT_200:.2f}' in out[1]
  assert captured.err.splitlines() == [
      f'python -m vit_jax.planner report: warning: skipped: no metrics.jsonl in '
      f'{tmp_path / "plots"}; is it the --workdir of a training run?',
      f'python -m vit_jax.planner report: warning: skipped: {tmp_path / "notes.txt"} is not '
      'a directory; pass the --workdir of a training run.']
  reports, skipped = report.summarize_runs([str(tmp_path / 'plots'), a])
  assert [r.name for r in reports] == ['run_a'] and len(skipped) == 1
  # Nothing to report: one error line, exit 2. A broken run is still an error.
  assert main(['report', str(tmp_path / 'plots'), str(tmp_path / 'notes.txt')]) == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and 'none of the 2 paths is the --workdir' in err
  os.makedirs(tmp_path / 'broken')
  (tmp_path / 'broken' / 'metrics.jsonl').write_text('{oops\n')
  assert main(['report', a, str(tmp_path / 'broken')]) == 2
  assert 'line 1 is not JSON' in capsys.readouterr().err


def test_the_model_column_holds_the_whole_name(tmp_path, capsys):
  """A custom model's name was cut to 'custom ViT (wi'."""
  a = _write_run(tmp_path / 'run_a')
  config = json.loads(open(os.path.join(a, 'config.json')).read())
  config['model'] = {'name': 'ViT-Ti/16', 'hidden_size': 64, 'num_layers': 4,
                     'mlp_dim': 128, 'num_heads': 4, 'patch_size': 4}
  with open(os.path.join(a, 'config.json'), 'w') as f:
    json.dump(config, f)
  b = _write_run(tmp_path / 'run_b')
  assert main(['report', a, b]) == 0
  header, row_a, row_b = capsys.readouterr().out.splitlines()[:3]
  name = ('custom ViT (width 64, depth 4, mlp 128, heads 4, patch 4; from '
          'ViT-Ti/16)')
  assert row_a.split()[0] == 'run_a' and f' {name} ' in row_a
  assert row_b.split()[:2] == ['run_b', 'ViT-B/16']
  # One column: the step column starts at the same place in every row.
  step = header.index('step') + len('step')
  assert row_a[:step].endswith('200/300') and row_b[:step].endswith('200/300')
