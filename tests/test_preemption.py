"""SIGTERM has one handler (vit_jax/preemption.py): recorded, read by the loop and the composer."""

import os
import pathlib
import re
import signal
import subprocess
import sys

from vit_jax import preemption

_ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_sigterm_inside_is_recorded_and_forgotten_on_leaving():
  before = signal.getsignal(signal.SIGTERM)
  with preemption.handled():
    with preemption.handled():  # Nested (the composer around the loop): one handler.
      assert not preemption.requested()
      os.kill(os.getpid(), signal.SIGTERM)
      assert preemption.requested() and preemption.reached(3)
    assert preemption.requested()  # The inner `with` did not forget it.
  assert not preemption.requested()
  assert signal.getsignal(signal.SIGTERM) is before


def test_only_preemption_py_installs_a_sigterm_handler():
  """main, the loop and the composer once had a handler each."""
  found = []
  for path in (_ROOT / 'vit_jax').rglob('*.py'):
    text = path.read_text()
    if re.search(r'signal\.signal\(\s*signal\.SIGTERM', text):
      found.append(path.relative_to(_ROOT).as_posix())
  assert found == ['vit_jax/preemption.py']


def test_hand_to_jax_after_a_sigterm_exits_zero_with_a_line():
  """Several processes: a SIGTERM that came before jax.distributed started
  ends the process at once (its peers would otherwise wait for it)."""
  code = ('import os, signal\n'
          'from vit_jax import preemption\n'
          'with preemption.handled():\n'
          '  os.kill(os.getpid(), signal.SIGTERM)\n'
          '  preemption.hand_to_jax()\n'
          '  print("not reached")\n')
  proc = subprocess.run([sys.executable, '-c', code], capture_output=True,
                        text=True, cwd=_ROOT, timeout=60, check=False)
  assert proc.returncode == 0, proc.stderr
  assert 'not reached' not in proc.stdout
  assert proc.stderr.strip() == preemption.BEFORE_TRAINING


def test_hand_to_jax_leaves_sigterm_to_jax():
  code = ('import signal\n'
          'from vit_jax import preemption\n'
          'with preemption.handled():\n'
          '  preemption.hand_to_jax()\n'
          '  with preemption.handled():\n'  # The loop's: installs nothing now.
          '    print(signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)\n'
          'print(signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)\n')
  proc = subprocess.run([sys.executable, '-c', code], capture_output=True,
                        text=True, cwd=_ROOT, timeout=60, check=False)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.split() == ['True', 'True']
