"""vit_jax.workdir: the one definition of a workdir's layout, and its checks."""

import ast
import os
import pathlib

import pytest

from vit_jax import workdir as workdir_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAYOUT = {workdir_lib.CONFIG, workdir_lib.CLASS_NAMES, workdir_lib.LOCK, workdir_lib.METRICS,
          workdir_lib.CHECKPOINTS, workdir_lib.CHECKPOINTS_ASIDE, workdir_lib.PARAMS}


def test_the_layout_is_spelled_in_workdir_py_only():
  assert LAYOUT == {'config.json', 'class_names.json', 'lock', 'metrics.jsonl', 'checkpoints',
                    'checkpoints_aside', 'params.npz'}
  spelled = []
  for path in sorted((ROOT / 'vit_jax').rglob('*.py')):
    rel = path.relative_to(ROOT).as_posix()
    if rel == 'vit_jax/workdir.py' or rel.startswith('vit_jax/hf_interop/'):
      continue  # hf_interop's config.json is a transformers directory's.
    for node in ast.walk(ast.parse(path.read_text(), rel)):
      if isinstance(node, ast.Constant) and node.value in LAYOUT:
        spelled.append(f'{rel}:{node.lineno}: {node.value!r}')
  assert not spelled, 'name these through vit_jax.workdir: ' + '; '.join(spelled)


def test_check_workdir_gives_the_absolute_path_and_makes_checkpoints(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert workdir_lib.check_workdir('runs/a') == str(tmp_path / 'runs' / 'a')
  assert sorted(os.listdir(tmp_path / 'runs' / 'a')) == ['checkpoints']
  # A results-only workdir (evaluate) gets no checkpoints/.
  assert workdir_lib.writable('runs/b') == str(tmp_path / 'runs' / 'b')
  assert os.listdir(tmp_path / 'runs' / 'b') == []


def test_a_file_where_a_directory_should_be_is_one_line(tmp_path):
  (tmp_path / 'checkpoints').write_text('not a directory')
  with pytest.raises(ValueError) as e:
    workdir_lib.check_workdir(str(tmp_path))
  assert str(e.value) == (f'{tmp_path}/checkpoints is a file, not a directory: move it away '
                          f'or choose another --workdir.')
  (tmp_path / 'file').write_text('')
  with pytest.raises(ValueError) as e:
    workdir_lib.writable(str(tmp_path / 'file'))
  assert str(e.value) == (f'--workdir={tmp_path}/file cannot be written (File exists); '
                          f'choose a directory you can write to.')


def test_a_uri_is_left_to_its_store(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  for check in (workdir_lib.absolute, workdir_lib.writable, workdir_lib.check_workdir):
    assert check('gs://bucket/runs/a') == 'gs://bucket/runs/a'
  assert os.listdir(tmp_path) == []
