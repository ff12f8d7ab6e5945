"""Importing changes nothing global: a bad flag fails before jax loads, and the hooks a run needs are main's to install."""

import errno
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(args, **kwargs):
  return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=300, check=False,
                        env={**os.environ, 'PYTHONPATH': ROOT}, **kwargs)


def _imported(importtime_stderr: str) -> set[str]:
  """Module names in `python -X importtime` output."""
  return {line.rsplit('|', 1)[1].strip() for line in importtime_stderr.splitlines()
          if line.startswith('import time:') and '|' in line}


@pytest.mark.parametrize('config', ['configs/quickstart.py', 'configs/finetune.py'])
def test_a_bad_config_flag_fails_before_jax_is_imported(config, tmp_path):
  proc = _python(['-X', 'importtime', '-m', 'vit_jax.main', f'--config={config}',
                  '--config.bogus=1', f'--workdir={tmp_path}/w'])
  assert proc.returncode == 2, proc.stderr[-2000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert errors == ["error: unknown config key 'bogus'; the keys and their types are "
                    "declared in vit_jax/config_lib.py."]
  imported = _imported(proc.stderr)
  assert 'vit_jax.config_lib' in imported and 'ml_collections' in imported  # read as parsed
  assert not {m for m in imported if m == 'jax' or m.startswith(('jax.', 'jaxlib'))}
  assert not os.path.exists(tmp_path / 'w')


_SNAPSHOT = r'''
import importlib, json, logging, pkgutil, signal, sys, threading

def snapshot():
  loggers = {'': logging.root, **{n: l for n, l in logging.root.manager.loggerDict.items()
                                  if isinstance(l, logging.Logger)}}
  return {'threading.excepthook': repr(threading.excepthook),
          'sys.unraisablehook': repr(sys.unraisablehook),
          'sys.excepthook': repr(sys.excepthook),
          'SIGTERM': repr(signal.getsignal(signal.SIGTERM)),
          'SIGINT': repr(signal.getsignal(signal.SIGINT)),
          'filters': {n: [repr(f) for f in l.filters] for n, l in loggers.items()}}

before = snapshot()
import vit_jax
imported, missing = [], []
for m in pkgutil.walk_packages(vit_jax.__path__, 'vit_jax.'):
  if m.name.endswith('__main__'):
    continue  # Entry points (they define the flags main.py defines).
  try:
    importlib.import_module(m.name)
    imported.append(m.name)
  except ModuleNotFoundError as e:  # An optional dependency (apache_beam).
    if e.name.startswith('vit_jax'):
      raise
    missing.append(e.name)
print(json.dumps({'before': before, 'after': snapshot(), 'imported': imported,
                  'missing': missing}))
'''


def test_importing_every_module_installs_no_hooks_and_no_log_filters():
  proc = _python(['-c', _SNAPSHOT])
  assert proc.returncode == 0, proc.stderr[-2000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert {'vit_jax.main', 'vit_jax.train', 'vit_jax.train_checkpoint',
          'vit_jax.transfer', 'vit_jax.evaluate', 'vit_jax.workdir'} <= set(out['imported'])
  assert set(out['missing']) <= {'apache_beam'}, out['missing']
  before, after = out['before'], out['after']
  for key in ('threading.excepthook', 'sys.unraisablehook', 'sys.excepthook', 'SIGTERM',
              'SIGINT'):
    assert after[key] == before[key], key
  changed = {name: filters for name, filters in after['filters'].items()
             if filters != before['filters'].get(name, [])}
  assert not changed, changed


# Runs main as `python -m vit_jax.main` does, with transfer.run replaced by a probe:
# what main installed before training, and what those hooks let through.
_MAIN_PROBE = r'''
import errno, json, logging, runpy, sys, threading
from vit_jax import train_checkpoint, transfer

def probe(config, workdir):
  seen = {'thread': threading.excepthook is train_checkpoint._quiet_thread_errors,
          'unraisable': sys.unraisablehook is train_checkpoint._quiet_unraisable,
          'loggers': [n for n in ('absl', 'asyncio', 'clu')
                      if train_checkpoint._QUIET in logging.getLogger(n).filters]}
  def raise_(exc):
    def run():
      raise exc
    return run
  for exc in (OSError(errno.ENOSPC, 'No space left on device', '/full/disk/x'),
              RuntimeError('Event loop is closed'), ValueError('a real bug in a thread')):
    t = threading.Thread(target=raise_(exc))
    t.start()
    t.join()
  try:
    raise OSError(errno.EDQUOT, 'Disk quota exceeded', '/quota/y')
  except OSError:
    logging.getLogger('absl').exception('save thread failed')
  logging.getLogger('absl').warning('an unrelated warning')
  seen['recorded'] = list(train_checkpoint._SAVE_ERRORS.last)
  print('PROBE ' + json.dumps(seen), flush=True)
  sys.exit(0)

transfer.run = probe
sys.argv = ['vit_jax/main.py', '--config=configs/quickstart.py', '--workdir=' + sys.argv[1]]
runpy.run_module('vit_jax.main', run_name='__main__')
'''


def test_main_installs_the_hooks_that_keep_a_failed_save_to_one_line(tmp_path):
  proc = _python(['-c', _MAIN_PROBE, str(tmp_path / 'w')])
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = next(l for l in proc.stdout.splitlines() if l.startswith('PROBE '))
  seen = json.loads(line[len('PROBE '):])
  assert seen == {'thread': True, 'unraisable': True, 'loggers': ['absl', 'asyncio', 'clu'],
                  'recorded': [errno.EDQUOT, '/quota/y']}
  # A save thread's OS error and the closed event loop are dropped; any other
  # error in a thread still reaches the console, and so do other log lines.
  assert 'No space left' not in proc.stderr and 'Event loop is closed' not in proc.stderr
  assert 'Disk quota exceeded' not in proc.stderr and 'save thread failed' not in proc.stderr
  assert 'ValueError: a real bug in a thread' in proc.stderr
  assert 'an unrelated warning' in proc.stderr



def test_the_no_jax_layer_imports_no_jax():
  """docs/architecture.md's bottom layer: what entry points use before jax loads."""
  no_jax = ('cli', 'config_lib', 'sharding_rules', 'dataset_sizes', 'preemption',
            'files', 'workdir')
  code = ('import json, sys\n' + ''.join(f'import vit_jax.{m}\n' for m in no_jax) +
          'print(json.dumps(sorted(m for m in ("jax", "flax", "numpy", "tensorflow") '
          'if m in sys.modules)))')
  proc = _python(['-c', code])
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip().splitlines()[-1] == '[]'
