"""Every command line's --help: exit status 0, the module as users type it, its flags and defaults (each said once)."""

import concurrent.futures
import os
import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

# (argv after `python -m`, the name the help shows, flags it must list, defaults it must show)
CASES = [
    (['vit_jax.main'], 'python -m vit_jax.main',
     ['--config', '--workdir', '--coordinator_address', '--num_processes', '--process_id'], []),
    (['vit_jax.evaluate'], 'python -m vit_jax.evaluate',
     ['--config', '--checkpoint', '--workdir', '--coordinator_address', '--num_processes',
      '--process_id'], []),
    (['vit_jax.benchmark'], 'usage: python -m vit_jax.benchmark',
     ['--model', '--batch', '--remat_policy', '--mesh'],
     ['(default: ViT-B/16)', '(default: 256)', '(default: data=-1)']),
    (['vit_jax.planner'], 'usage: python -m vit_jax.planner', ['plan', 'paper', 'report', 'plot'], []),
    (['vit_jax.planner', 'plan'], 'usage: python -m vit_jax.planner plan',
     ['--model', '--batch-size', '--hardware', '--mfu', '--image-size'], ['(default: 224)']),
    (['vit_jax.planner', 'fit'], 'usage: python -m vit_jax.planner fit',
     ['--hardware', '--mesh', '--remat-policy', '--margin'], ["(default: the config's)"]),
    (['vit_jax.planner', 'report'], 'usage: python -m vit_jax.planner report', ['WORKDIR', '--json'],
     ['(default: False)']),
    (['vit_jax.predict'], 'usage: python -m vit_jax.predict',
     ['--model', '--checkpoint', '--labels', '--top_k', 'IMAGE'], ['(default: 5)', '(default: 32)']),
    (['vit_jax.export'], 'usage: python -m vit_jax.export', ['--format', '--checkpoint', '--out'],
     ['(default: transformers)']),
    (['vit_jax.models'], 'usage: python -m vit_jax.models', ['--image_size', '--num_classes'],
     ['(default: 224)', '(default: 1000)']),
    (['vit_jax.data.benchmark'], 'usage: python -m vit_jax.data.benchmark',
     ['--threads', '--seconds', '--batch'], ['(default: 10.0)', '(default: 64)']),
    (['launch.local'], 'usage: python -m launch.local',
     ['--num_processes', '--devices_per_process', '--module'], ['(default: vit_jax.main)']),
    (['launch.tpu'], 'usage: python -m launch.tpu', ['create', 'install', 'run', 'supervise'], []),
    (['launch.tpu', 'run'], 'usage: python -m launch.tpu run',
     ['--name', '--zone', '--workdir', '--env', '--dry_run'], ['(default: 60.0)']),
    (['launch.tpu', 'supervise'], 'usage: python -m launch.tpu supervise',
     ['--spot', '--max_failures', '--git_url'], ['(default: 3)', '(default: python3.11)']),
    (['launch.check'], 'usage: python -m launch.check', ['--coordinator_address'], []),
]


def _help(argv, flag='--help'):
  return subprocess.run([sys.executable, '-m', *argv, flag], capture_output=True, text=True,
                        cwd=REPO, timeout=180, check=False,
                        env={**os.environ, 'PYTHONPATH': str(REPO)})


@pytest.fixture(scope='module')
def helps():
  """Every case's --help, four processes at a time (most of the time is imports)."""
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    return dict(zip((' '.join(c[0]) for c in CASES), pool.map(_help, (c[0] for c in CASES))))


@pytest.mark.parametrize('argv,prog,flags,defaults', CASES, ids=[' '.join(c[0]) for c in CASES])
def test_help_exits_0_names_the_module_and_lists_flags(helps, argv, prog, flags, defaults):
  proc = helps[' '.join(argv)]
  assert proc.returncode == 0, proc.stderr
  assert proc.stderr == ''
  out = proc.stdout
  assert prog in out
  assert '__main__.py' not in out and 'benchmark.py [' not in out  # not the file's name
  for flag in flags:
    assert flag in out, f'{flag} missing from {" ".join(argv)} --help'
  for default in defaults:
    assert default in ' '.join(out.split()), f'{default} missing from {" ".join(argv)} --help'
  # A default is said once, and only where there is one (help_format.py).
  assert '(default: None)' not in out, out
  assert not re.search(r'\(default[: ][^)]*\) \(default: ', ' '.join(out.split())), out


@pytest.mark.parametrize('flag', ['-h', '--helpfull'])
def test_absl_entry_points_other_help_flags(flag):
  """absl exits 1 on its help flags and knows no -h; ours exit 0. --helpfull lists every flag."""
  proc = _help(['vit_jax.main'], flag)
  assert (proc.returncode, proc.stderr) == (0, '')
  assert '--coordinator_address' in proc.stdout and '--workdir' in proc.stdout
  assert ('--flagfile' in proc.stdout) == (flag == '--helpfull')  # absl's own flags: full help only
