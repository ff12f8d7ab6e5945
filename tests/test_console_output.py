"""What a person sees: evaluations on the console, where params.npz went, no third-party INFO lines."""

import json
import logging
import os
import pathlib
import re
import subprocess
import sys

import pytest
from absl import flags

from vit_jax import cli
from vit_jax import metrics

REPO = pathlib.Path(__file__).resolve().parents[1]
OUR_FILES = {p.name for p in (REPO / 'vit_jax').rglob('*.py')}
ABSL_LINE = re.compile(r'^([IWEF])\d{4} [\d:.]+ +\d+ (\S+):\d+\] (.*)$')


def test_eval_lines_group_metrics_by_evaluator():
  results = {'val/top1': 0.953333, 'val/top5': 1.0, 'val/num_examples': 300.0,
             'fewshot/mean_5shot': 0.61234, 'fewshot/digits_5shot': 0.71}
  assert metrics.eval_lines(200, results) == [
      'step 200 eval val: num_examples=300  top1=0.9533  top5=1',
      'step 200 eval fewshot: digits_5shot=0.71  mean_5shot=0.6123']
  assert metrics.eval_lines(5, {}) == []


@pytest.fixture(scope='module')
def quick_run(tmp_path_factory):
  """4 steps of the quickstart recipe, evaluated at steps 2 and 4, as a user runs it."""
  workdir = tmp_path_factory.mktemp('run') / 'quick'
  proc = subprocess.run(
      [sys.executable, '-m', 'vit_jax.main', '--config=configs/quickstart.py:steps=4,batch=32',
       f'--workdir={workdir}', '--config.log_every=2', '--config.evals.val.every=2',
       '--config.model.num_layers=1'],
      capture_output=True, text=True, cwd=REPO, timeout=600, check=False,
      env=_as_a_user_runs_it())
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, proc


def _as_a_user_runs_it() -> dict:
  """The environment of `make run` on a CPU machine: no JAX_PLATFORMS (libtpu,
  installed for the preflight, must not be tried: no TPU errors on the
  console) and one CPU device."""
  env = {k: v for k, v in os.environ.items()
         if k not in ('JAX_PLATFORMS', 'XLA_FLAGS', 'TF_CPP_MIN_LOG_LEVEL')}
  return {**env, 'PYTHONPATH': str(REPO)}


def test_a_run_prints_its_evaluations_and_where_params_went(quick_run):
  workdir, proc = quick_run
  rows = {r['step']: r for r in map(json.loads, (workdir / 'metrics.jsonl').read_text().splitlines())}
  messages = [m[3] for m in map(ABSL_LINE.match, proc.stderr.splitlines()) if m]
  evals = [m for m in messages if ' eval ' in m]
  assert evals == [f'step {s} eval val: num_examples=300  top1={rows[s]["val/top1"]:.4g}  '
                   f'top5={rows[s]["val/top5"]:.4g}' for s in (2, 4)]
  summary = proc.stdout.strip().splitlines()[-1]
  assert summary.startswith('SUMMARY status=done  steps=4/4')
  assert summary.endswith(f'params={workdir / "params.npz"}')
  assert (workdir / 'params.npz').is_file()


def test_a_run_shows_no_third_party_info_lines(quick_run):
  _, proc = quick_run
  lines = [l for l in (proc.stdout + proc.stderr).splitlines() if l.strip()]
  for line in lines:
    m = ABSL_LINE.match(line)
    if m and m[1] == 'I':  # Warnings stay: they may matter.
      assert m[2] in OUR_FILES, f'a third-party INFO line: {line}'
    assert m or line.startswith('SUMMARY '), f'a line from outside logging: {line}'
  assert any(ABSL_LINE.match(l) for l in lines)  # our own lines are there


@pytest.fixture
def restore_logging():
  names = ('', *cli.THIRD_PARTY_LOGGERS)
  levels = {n: logging.getLogger(n).level for n in names}
  present, asked = flags.FLAGS['verbosity'].present, flags.FLAGS['logger_levels'].value
  yield
  flags.FLAGS['verbosity'].present = present
  flags.FLAGS['logger_levels'].value = asked
  for n, level in levels.items():
    logging.getLogger(n).setLevel(level)


def _shown(name):
  return logging.getLogger(name).isEnabledFor(logging.INFO)


def test_third_party_info_only_when_asked_for(restore_logging):
  for name in ('', *cli.THIRD_PARTY_LOGGERS):
    logging.getLogger(name).setLevel(logging.NOTSET)
  cli.configure_logging()
  assert _shown('vit_jax.train') and _shown('')
  assert not any(_shown(n) for n in ('absl', 'jax._src.compiler', 'tensorflow'))
  # --logger_levels=absl:INFO (absl's flag) brings orbax's and clu's lines back.
  flags.FLAGS['logger_levels'].parse('absl:INFO')
  cli.configure_logging()
  assert _shown('absl') and not _shown('jax')
  # -v 1: absl set every level already; nothing is quietened.
  for name in ('absl', 'jax'):
    logging.getLogger(name).setLevel(logging.DEBUG)
  flags.FLAGS['verbosity'].present = 1
  cli.configure_logging()
  assert logging.getLogger('jax').level == logging.DEBUG


@pytest.mark.parametrize('jax_first', [False, True])
def test_a_host_without_a_tpu_starts_jax_without_tpu_errors(jax_first):
  """libtpu is installed (the preflight's compiler); on this TPU-less host jax
  must not try it, also when the entry point's package imported jax first
  (python -m vit_jax.transfer.table)."""
  code = ('import jax\n' if jax_first else '') + (
      'from vit_jax import cli\ncli.skip_absent_tpu()\nimport jax\n'
      'print(jax.default_backend())\n')
  proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                        cwd=REPO, timeout=120, check=False, env=_as_a_user_runs_it())
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (proc.stdout.strip(), proc.stderr.strip()) == ('cpu', '')
