"""What a user hits first at the command line (issue 22, items 3 and 6).

Sizes and models that do not fit are refused in one line with exit status 2
before anything compiles, and a refused command leaves its workdir as it
found it; reading a run directory says nothing about orbax's read-only mode.
"""

import json
import logging
import os
import subprocess
import sys
import time

import jax
import numpy as np
from PIL import Image
import pytest

from vit_jax import files, models, predict, train_checkpoint
from vit_jax.visualize.__main__ import main as visualize_main

import cpu_devices

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import quickstart  # pylint: disable=wrong-import-position

RUN_MODEL = ('custom ViT (width 64, depth 4, mlp 128, heads 4, patch 4; '
             'from ViT-Ti/16)')


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  """A quickstart-shaped run (width 64, 4x4 patches, 16 px) as training
  leaves it: config.json and an orbax checkpoint, without training."""
  root = tmp_path_factory.mktemp('cli_checks')
  run = root / 'run'
  config = quickstart.get_config('steps=2')
  model, _ = models.build(config.model, 10)
  params = jax.tree.map(np.asarray, model.init(
      jax.random.key(0), np.zeros((1, 16, 16, 3), np.float32))['params'])
  files.write_json(str(run / 'config.json'), config.to_dict())
  checkpointer = train_checkpoint.TrainCheckpointer(str(run))
  checkpointer.save(2, {'params': params, 'step': np.int32(2)}, {'step': 2})
  checkpointer.wait()
  checkpointer.close()
  digit = (np.arange(256, dtype=np.uint8).reshape(16, 16) * 7)
  Image.fromarray(digit).convert('RGB').save(root / 'digit.png')
  return run


def _listing(path):
  return sorted(os.path.relpath(os.path.join(d, f), path)
                for d, dirs, names in os.walk(path) for f in names + dirs)


def _main(workdir, *flags):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu',
         'XLA_FLAGS': cpu_devices.xla_flags(8)}
  start = time.perf_counter()
  out = subprocess.run(
      [sys.executable, '-m', 'vit_jax.main', '--config=configs/quickstart.py',
       f'--workdir={workdir}', *flags], cwd=ROOT, env=env,
      capture_output=True, text=True, timeout=600)
  return out, time.perf_counter() - start


@pytest.mark.parametrize('flags,message', [
    # The quickstart's resize(16) against a 32 px model: was a 38-line
    # TypeError (exit 1) after 20 s of compiling, with config.json,
    # checkpoints/ and lock left behind.
    (['--config.image_size=32'],
     "error: input.pp 'resize(16)|value_range(-1, 1)|onehot(10)' makes "
     '16x16x3 images but image_size=32 (the model takes 32x32x3); make them '
     'agree: the size in input.pp, or image_size=16.'),
    # 18 px on 4x4 patches: trained silently on 16 px of each image.
    (['--config.image_size=18',
      '--config.input.pp=resize(18)|value_range(-1, 1)|onehot(10)',
      '--config.evals.val.pp=resize(18)|value_range(-1, 1)|onehot(10)'],
     f'error: image_size=18 does not divide into the 4x4-pixel tokens of '
     f'{RUN_MODEL}: the last 2 pixels of each side would be dropped; use a '
     f'multiple of 4 (e.g. 16 or 20).'),
    # The training data fits, the evaluator's does not: a shape error at
    # step 200 otherwise.
    (['--config.image_size=32',
      '--config.input.pp=resize(32)|value_range(-1, 1)|onehot(10)'],
     "error: evals.val.pp 'resize(16)|value_range(-1, 1)|onehot(10)' makes "
     '16x16x3 images but image_size=32 (the model takes 32x32x3); make them '
     'agree: the size in evals.val.pp, or image_size=16.'),
    # An evaluator off the log steps: skipped until step 150 otherwise.
    (['--config.evals.val.every=30'],
     'error: evals.val.every=30 is not a multiple of log_every=50: '
     'evaluators run at log steps, so it would first run at step 150; set '
     'evals.val.every to a multiple of 50 (e.g. 50) or log_every to a '
     'divisor of 30 (e.g. 10).'),
])
def test_main_refuses_before_compiling_and_leaves_the_workdir(
    tmp_path, flags, message):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / 'notes.txt').write_text('mine\n')
  out, seconds = _main(workdir, *flags)
  assert out.returncode == 2, out.stderr[-2000:]
  assert out.stderr.strip().splitlines() == [message]
  assert _listing(workdir) == ['notes.txt']  # No config.json, checkpoints/, lock.
  print(f'refused in {seconds:.1f} s')


def test_predict_refuses_a_size_off_the_patches_and_another_model(
    run_dir, tmp_path, capsys):
  image = run_dir.parent / 'digit.png'
  assert predict.main(['--checkpoint', str(run_dir), str(image)]) == 0
  capsys.readouterr()
  assert predict.main(['--checkpoint', str(run_dir), '--image_size', '18',
                       str(image)]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1] == (
      f'error: --image_size 18 does not divide into the 4x4-pixel tokens of '
      f'{RUN_MODEL}: the last 2 pixels of each side would be dropped; use a '
      f'multiple of 4 (e.g. 16 or 20).')
  assert predict.main(['--checkpoint', str(run_dir), '--model', 'ViT-B/16',
                       str(image)]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1] == (
      f'error: the model ViT-B/16 given is not the model of {run_dir}, whose '
      f'config.json says {RUN_MODEL}: leave the model out (the run names '
      f'it), or pass a checkpoint of ViT-B/16.')
  # The run's own name (its config.json's) is no disagreement.
  assert predict.main(['--checkpoint', str(run_dir), '--model', 'ViT-Ti_16',
                       str(image)]) == 0


def test_visualize_refuses_another_model_and_an_out_under_a_file(
    run_dir, tmp_path, capsys):
  out = tmp_path / 'vis'
  assert visualize_main(['posemb', '--checkpoint', str(run_dir), '--model',
                         'ViT-B/16', '--out', str(out)]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1].startswith('error: the model ViT-B/16 given is not the '
                            f'model of {run_dir}, whose config.json says '
                            f'{RUN_MODEL}')
  assert not out.exists()
  a_file = tmp_path / 'notes.txt'
  a_file.write_text('not a directory\n')
  # Was a NotADirectoryError traceback after the picture was computed.
  assert visualize_main(['posemb', '--checkpoint', str(run_dir), '--out',
                         str(a_file / 'x')]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err == [f'error: --out {a_file / "x"}: {a_file} is a file, not a '
                 f'directory; choose another --out.']
  assert visualize_main(['posemb', '--checkpoint', str(run_dir), '--out',
                         str(out)]) == 0
  assert sorted(os.listdir(out)) == ['posemb.json', 'posemb.png']


def _evaluate(*args):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu',
         'XLA_FLAGS': cpu_devices.xla_flags(8)}
  return subprocess.run([sys.executable, '-m', 'vit_jax.evaluate', *args],
                        cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=300)


def test_evaluate_refuses_a_size_off_the_patches_and_another_model(
    run_dir, tmp_path):
  workdir = tmp_path / 'eval'
  out = _evaluate('--config=configs/evaluate.py:evals=classify,'
                  'dataset=digits,image_size=18', f'--checkpoint={run_dir}',
                  f'--workdir={workdir}')
  assert out.returncode == 2, out.stderr[-2000:]
  assert out.stderr.strip().splitlines()[-1] == (
      f'error: image_size=18 does not divide into the 4x4-pixel tokens of '
      f'{RUN_MODEL}: the last 2 pixels of each side would be dropped; use a '
      f'multiple of 4 (e.g. 16 or 20).')
  assert not workdir.exists()  # Refused: nothing written.
  out = _evaluate('--config=configs/evaluate.py:evals=classify,'
                  'dataset=digits,model=ViT-B/16', f'--checkpoint={run_dir}',
                  f'--workdir={workdir}')
  assert out.returncode == 2, out.stderr[-2000:]
  assert out.stderr.strip().splitlines()[-1].startswith(
      f'error: the model ViT-B/16 given is not the model of {run_dir}, '
      f'whose config.json says {RUN_MODEL}')
  assert not workdir.exists()


def test_reading_a_run_directory_hides_only_orbax_read_only_notice(
    run_dir, caplog):
  with caplog.at_level(logging.WARNING):
    params = train_checkpoint.read_params(str(run_dir)).params
  assert params['embedding']['kernel'].shape == (4, 4, 3, 64)
  shown = [r.getMessage() for r in caplog.records]
  # Were: 'CheckpointManagerOptions.read_only=True, setting
  # save_interval_steps=0.' and 'Given directory is read only=...'.
  assert not [m for m in shown if 'read only' in m or 'read_only' in m], shown
  # Only that notice: orbax's other warnings still show, and only while
  # reading.
  absl = logging.getLogger('absl')
  with caplog.at_level(logging.WARNING):
    with train_checkpoint._ExpectedReadOnlyWarning.around():  # pylint: disable=protected-access
      absl.warning('Given directory is read only=%s', run_dir)
      absl.warning('CheckpointManagerOptions.read_only=True, setting '
                   'max_to_keep=None.')
    absl.warning('Given directory is read only=%s', run_dir)
  shown = [r.getMessage() for r in caplog.records]
  assert shown[-2:] == [
      'CheckpointManagerOptions.read_only=True, setting max_to_keep=None.',
      f'Given directory is read only={run_dir}']
