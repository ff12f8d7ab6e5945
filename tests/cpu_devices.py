"""XLA_FLAGS for the test processes and their children: N simulated CPU devices, compiled at XLA:CPU's level 1.

Most of the suite's time is XLA:CPU compiling tiny programs (a ViT of one to
four blocks takes 2-4 s to compile and milliseconds to run). At backend
optimization level 1 (LLVM -O1 instead of -O3) XLA:CPU compiles them in
about 60-70% of the time and runs them as fast (level 0 compiles faster
still, but its code runs the 200-step quickstart test 40% slower). Its
fusions are emitted by XLA:CPU's elemental IR emitter rather than its MLIR
fusion emitters (--xla_cpu_use_fusion_emitters=false): a train step is
some 200-300 fusions, each compiled on its own, and the older emitter
takes ~12% less time for them and their code runs as fast (test_train_step
and test_models: 152 -> 124 CPU-s, 2026-12-05). The
tests check programs, not LLVM's code: every comparison in the suite (bit
identical resumes, sharded against single-device) compares runs compiled
the same way (the benchmarks' tests check what a benchmark reports, not its
speed). The TPU compiles (tpu_compile.py) and the run "as a user runs it"
(test_console_output.py) keep XLA's defaults.

    env = dict(os.environ, XLA_FLAGS=cpu_devices.xla_flags(2))
"""

import os
import re

#: What the suite adds to XLA_FLAGS besides the device count.
COMPILE_FLAGS = ('--xla_backend_optimization_level=1',
                 '--xla_cpu_use_fusion_emitters=false')
_DEVICES = re.compile(r'--xla_force_host_platform_device_count=(\d*)')


def xla_flags(devices: int | None = None) -> str:
  """$XLA_FLAGS with `devices` simulated CPU devices (None: the count it
  names, else 8) and COMPILE_FLAGS, unless it sets those options itself."""
  current = os.environ.get('XLA_FLAGS', '')
  named = _DEVICES.search(current)
  if devices is None:
    devices = int(named[1]) if named and named[1] else 8
  flags = _DEVICES.sub('', current).split()
  flags += [f for f in COMPILE_FLAGS
            if not any(g.startswith(f.split('=')[0] + '=') for g in flags)]
  return ' '.join([*flags, f'--xla_force_host_platform_device_count={devices}'])


def without_compile_flags(flags: str) -> str:
  """`flags` less COMPILE_FLAGS: for children that must compile as users do."""
  return ' '.join(f for f in flags.split() if f not in COMPILE_FLAGS)
