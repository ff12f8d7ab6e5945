"""XLA_FLAGS for the test processes and their children: N simulated CPU devices, compiled at XLA:CPU's level 1.

Most of the suite's time is XLA:CPU compiling tiny programs (a ViT of one to
four blocks takes 2-4 s to compile and milliseconds to run). At backend
optimization level 1 (LLVM -O1 instead of -O3) XLA:CPU compiles them in
about 60-70% of the time and runs them as fast (level 0 compiles faster
still, but its code runs the 200-step quickstart test 40% slower). The
tests check programs, not LLVM's code: every comparison in the suite (bit
identical resumes, sharded against single-device) compares runs compiled
the same way. The benchmarks' tests (test_benchmark*.py) and the TPU
compiles (tpu_compile.py) keep XLA's defaults.

    env = dict(os.environ, XLA_FLAGS=cpu_devices.xla_flags(2))
"""

import os
import re

#: What the suite adds to XLA_FLAGS besides the device count.
COMPILE_FLAGS = ('--xla_backend_optimization_level=1',)
_DEVICES = re.compile(r'--xla_force_host_platform_device_count=\S*')


def xla_flags(devices: int = 8, base: str | None = None) -> str:
  """`base` (default: $XLA_FLAGS) with `devices` simulated CPU devices and
  COMPILE_FLAGS (each once)."""
  flags = _DEVICES.sub('', os.environ.get('XLA_FLAGS', '') if base is None else base).split()
  flags += [f for f in COMPILE_FLAGS if f.split('=')[0] not in ' '.join(flags)]
  return ' '.join([*flags, f'--xla_force_host_platform_device_count={devices}'])


def without_compile_flags(flags: str) -> str:
  """`flags` less COMPILE_FLAGS: for children that must compile as users do."""
  return ' '.join(f for f in flags.split() if f not in COMPILE_FLAGS)
