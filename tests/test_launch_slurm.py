"""launch/slurm: the scripts parse, and start vit_jax.main with the documented flags (fake srun)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SLURM = REPO / 'launch' / 'slurm'
CONFIG = '--config=configs/pretrain.py:model=B/16,dataset=imagenet21k'
# Prints its argv (after the interpreter) and the task's SLURM_PROCID as one JSON line.
FAKE_PYTHON = f'''#!{sys.executable}
import json, os, sys
print(json.dumps({{'argv': sys.argv[1:], 'procid': os.environ.get('SLURM_PROCID')}}))
'''
# Runs the step's command once per task, as srun would (options before the command are dropped).
FAKE_SRUN = '''#!/bin/bash
echo "srun options: $(for a in "$@"; do [[ $a == --* ]] && printf '%s ' "$a"; done)" >&2
while [[ $1 == --* ]]; do shift; done
for ((i = 0; i < SLURM_NTASKS; i++)); do SLURM_PROCID=$i "$@" || exit $?; done
'''


@pytest.fixture()
def fake_cluster(tmp_path):
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  for name, text in (('python', FAKE_PYTHON), ('srun', FAKE_SRUN),
                     ('scontrol', '#!/bin/sh\nprintf "gpu-node-07\\ngpu-node-08\\n"\n')):
    (bin_dir / name).write_text(text)
    (bin_dir / name).chmod(0o755)
  env = dict(os.environ, PATH=f'{bin_dir}:{os.environ["PATH"]}', PYTHON=str(bin_dir / 'python'),
             SLURM_JOB_ID='1234', SLURM_JOB_NODELIST='gpu-node-[07-08]', SLURM_NTASKS='2',
             SLURM_SUBMIT_DIR=str(REPO), WORKDIR='/shared/runs/w')
  return env


def _run(script, env, *args, cwd=REPO):
  proc = subprocess.run(['bash', str(SLURM / script), *args], env=env, cwd=cwd, capture_output=True,
                        text=True, timeout=60)
  return proc, [json.loads(line) for line in proc.stdout.splitlines()]


@pytest.mark.parametrize('script', sorted(p.name for p in SLURM.iterdir()))
def test_scripts_are_valid_bash(script):
  assert subprocess.run(['bash', '-n', str(SLURM / script)], capture_output=True).returncode == 0


def test_per_gpu_relies_on_slurm_detection(fake_cluster):
  proc, calls = _run('pretrain_per_gpu.sbatch', fake_cluster, '--config.total_steps=10')
  assert proc.returncode == 0, proc.stderr
  assert 'srun options: --kill-on-bad-exit=1' in proc.stderr
  assert [c['argv'] for c in calls] == [
      ['-m', 'vit_jax.main', CONFIG, '--workdir=/shared/runs/w', '--config.total_steps=10']] * 2
  text = (SLURM / 'pretrain_per_gpu.sbatch').read_text()
  assert '#SBATCH --gpus-per-node=8' in text and '#SBATCH --ntasks-per-node=8' in text
  assert '#SBATCH --gpus-per-task' not in text


def test_per_node_passes_explicit_distributed_flags(fake_cluster):
  proc, calls = _run('pretrain_per_node.sbatch', fake_cluster, '--config.total_steps=10',
                     "--config.name=two words")
  assert proc.returncode == 0, proc.stderr
  assert [c['procid'] for c in calls] == ['0', '1']
  for i, call in enumerate(calls):  # port = 61440 + 1234 % 4096
    assert call['argv'] == ['-m', 'vit_jax.main', CONFIG, '--workdir=/shared/runs/w',
                            '--coordinator_address=gpu-node-07:62674', '--num_processes=2',
                            f'--process_id={i}', '--config.total_steps=10', '--config.name=two words']


def test_single_node_uses_one_local_process(fake_cluster, tmp_path):
  env = dict(fake_cluster, WORKDIR='runs/b16', PORT='23456')
  proc, calls = _run('single_node.sh', env, '--config.batch_size=256', cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr
  assert calls == [{'argv': ['-m', 'vit_jax.main', CONFIG, f'--workdir={tmp_path}/runs/b16',
                             '--coordinator_address=127.0.0.1:23456', '--num_processes=1',
                             '--process_id=0', '--config.batch_size=256'], 'procid': None}]


@pytest.mark.parametrize('script', sorted(p.name for p in SLURM.iterdir()))
def test_missing_workdir_is_a_clear_error(fake_cluster, script):
  env = {k: v for k, v in fake_cluster.items() if k != 'WORKDIR'}
  proc, calls = _run(script, env)
  assert proc.returncode != 0 and calls == []
  assert 'set WORKDIR to' in proc.stderr
