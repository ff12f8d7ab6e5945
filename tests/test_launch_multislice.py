"""launch.tpu --num_slices: one queued resource of N slices, each worker's multislice environment, bad combinations."""

import os
import pathlib
import subprocess
import sys

import pytest

from launch import tpu

REPO = pathlib.Path(__file__).resolve().parents[1]
ARGS = ['--name=vit-l16', '--zone=us-west4-a', '--accelerator_type=v5e-256', '--num_slices=2',
        '--spot', '--workdir=gs://my-bucket/runs/vit-l16', '--skip_preflight']
JOB = ['--', '--config=configs/pretrain.py:model=L/16', '--config.mesh.fsdp=256']


def _dry(command, extra=(), job=JOB):
  lines = []
  status = tpu.main([command, *ARGS, *extra, '--dry_run', *job], out=lines.append)
  return status, lines


def test_supervise_dry_run_for_two_v5e_256_slices():
  status, lines = _dry('supervise')
  assert status == 0
  assert lines[0] == ('# v5litepod-256: 256 chips (256 TensorCores) in 64 hosts; 2 slices joined by '
                      'DCN: 512 chips in 128 hosts, one job')
  assert ('gcloud compute tpus queued-resources create vit-l16 --zone=us-west4-a --node-count=2 '
          '--node-prefix=vit-l16 --accelerator-type=v5litepod-256 '
          '--runtime-version=v2-alpha-tpuv5-lite --spot') in lines
  start = next(line for line in lines if 'MEGASCALE_SLICE_ID=1' in line)
  for i in (0, 1):  # each slice's workers: their slice, the process ids slice by slice
    assert f'gcloud compute tpus tpu-vm ssh vit-l16-{i} --zone=us-west4-a --worker=all' in start
    assert (f'export MEGASCALE_COORDINATOR_ADDRESS="$coord:8081" MEGASCALE_NUM_SLICES=2 '
            f'MEGASCALE_SLICE_ID={i} MEGASCALE_PORT=8081') in start
    assert (f'--config.mesh.num_slices=2 --workdir=gs://my-bucket/runs/vit-l16 '
            f'--coordinator_address="$coord:8482" --num_processes=128 '
            f'--process_id="$(({64 * i} + w))"') in start
  # One job: the queued resource's state is the job's (a lost slice re-creates all of it, and
  # the job resumes from its checkpoint); every node's workers answer the status query.
  assert lines.count("gcloud compute tpus queued-resources describe vit-l16 --zone=us-west4-a "
                     "'--format=value(state.state)'") >= 3
  status_query = next(line for line in lines if 'sed "s/^worker=/worker=1-/"' in line)
  assert 'vit-l16-0' in status_query and 'vit-l16-1' in status_query


def _worker_status(output_lines):
  """The statuses the supervisor reads from the multislice status query's output."""
  from launch import supervise  # pylint: disable=g-import-not-at-top
  return supervise.parse_statuses(output_lines)


def test_status_lines_of_two_slices_are_128_workers():
  lines = ''.join(f'worker={s}-{w} running\n' for s in range(2) for w in range(64))
  statuses = _worker_status(lines)
  assert len(statuses) == 128
  from launch import supervise  # pylint: disable=g-import-not-at-top
  assert supervise.decide('ACTIVE', statuses, hosts=128).action is supervise.Action.WAIT
  statuses['1-5'] = 'exit:1'  # one slice's worker failed: stop the others, then restart all
  assert supervise.decide('ACTIVE', statuses, hosts=128).action is supervise.Action.STOP
  # A lost slice: the queued resource is no longer ACTIVE -> re-create all slices.
  assert supervise.decide('SUSPENDED', None, hosts=128).action is supervise.Action.RECREATE


@pytest.mark.parametrize('extra, job, message', [
    (['--accelerator_type=v5e-256,v5e-128'], JOB, 'the slices of a multislice job are all one '
     'accelerator type'),
    (['--accelerator_type=v3-32'], JOB, 'multislice needs TPU v4 or later'),
    ([], [*JOB, '--config.mesh.data=3'], r'--config.mesh.data=3 does not divide into --num_slices=2'),
    ([], [*JOB, '--config.mesh.num_slices=4'], r'--config.mesh.num_slices=4 but --num_slices=2'),
    (['--num_slices=0'], JOB, 'at least one slice'),
])
def test_bad_combinations_are_one_line_exit_2(extra, job, message):
  proc = subprocess.run([sys.executable, '-m', 'launch.tpu', 'supervise', *ARGS, *extra, '--dry_run', *job],
                        cwd=REPO, capture_output=True, text=True, check=False,
                        env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.count('\n') == 1 and message in proc.stderr.replace('\\', ''), proc.stderr
  assert proc.stdout.count('gcloud') == 0
