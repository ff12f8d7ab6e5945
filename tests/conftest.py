"""Test set-up: 8 simulated CPU devices, before anything imports jax."""

import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
_flags = os.environ.get('XLA_FLAGS', '')
if '--xla_force_host_platform_device_count' not in _flags:
  os.environ['XLA_FLAGS'] = (_flags + ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')

# One compilation cache for the whole run, subprocesses included: most tests
# compile the same few steps.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    '.pytest_cache', 'jax'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.2')

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

# With 8 simulated devices on 2 cores, several executions in flight can
# deadlock the CPU collectives' rendezvous; run CPU executions synchronously
# (jax reads no environment variable for this; vit_jax.main sets it too).
jax.config.update('jax_cpu_enable_async_dispatch', False)

