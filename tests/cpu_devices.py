"""XLA_FLAGS for the test processes and their children: N simulated CPU devices, compiled at XLA:CPU's level 0.

Most of the suite's time is XLA:CPU compiling tiny programs (a ViT of one to
four blocks takes 1-3 s to compile and milliseconds to run). Its fusions
are emitted by XLA:CPU's elemental IR emitter rather than its MLIR fusion
emitters (--xla_cpu_use_fusion_emitters=false): a train step is some
200-300 fusions, each compiled by LLVM on its own, and the older emitter
takes ~12% less time for them. At backend optimization level 0 LLVM runs
no IR optimization and selects instructions the fast way: with the
elemental emitter the suite's two pytest processes spend ~45 CPU-s less
than at level 1 (2026-12-05; docs/benchmarks.md). Code compiled at level 0
runs ~2x slower, which only the runs whose time is execution feel: the
200-step quickstart that must learn runs in a child at level 1
(`xla_flags(optimized=True)`: LLVM -O1, as fast as XLA's default -O3 for
these programs). The tests check programs, not LLVM's code: every
comparison in the suite (bit identical resumes, sharded against
single-device) compares runs compiled the same way (the benchmarks' tests
check what a benchmark reports, not its speed). The TPU compiles
(tpu_compile.py) and the run "as a user runs it" (test_console_output.py)
keep XLA's defaults.

    env = dict(os.environ, XLA_FLAGS=cpu_devices.xla_flags(2))
"""

import os
import re

#: What the suite adds to XLA_FLAGS besides the device count.
COMPILE_FLAGS = ('--xla_backend_optimization_level=0',
                 '--xla_cpu_use_fusion_emitters=false')
#: The level of `xla_flags(optimized=True)`.
OPTIMIZED_LEVEL = '--xla_backend_optimization_level=1'
_LEVEL = re.compile(r'--xla_backend_optimization_level=\S*')
_DEVICES = re.compile(r'--xla_force_host_platform_device_count=(\d*)')


def xla_flags(devices: int | None = None, *, optimized: bool = False) -> str:
  """$XLA_FLAGS with `devices` simulated CPU devices (None: the count it
  names, else 8) and COMPILE_FLAGS, unless it sets those options itself;
  `optimized`: at OPTIMIZED_LEVEL instead, for a child whose time is
  execution rather than compiles."""
  current = os.environ.get('XLA_FLAGS', '')
  if optimized:
    current = _LEVEL.sub('', current) + ' ' + OPTIMIZED_LEVEL
  named = _DEVICES.search(current)
  if devices is None:
    devices = int(named[1]) if named and named[1] else 8
  flags = _DEVICES.sub('', current).split()
  flags += [f for f in COMPILE_FLAGS
            if not any(g.startswith(f.split('=')[0] + '=') for g in flags)]
  return ' '.join([*flags, f'--xla_force_host_platform_device_count={devices}'])


def without_compile_flags(flags: str) -> str:
  """`flags` less COMPILE_FLAGS: for children that must compile as users do."""
  return ' '.join(f for f in flags.split()
                  if f not in COMPILE_FLAGS and f != OPTIMIZED_LEVEL)
