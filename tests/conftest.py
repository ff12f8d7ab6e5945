"""Test set-up: 8 simulated CPU devices, before anything imports jax."""

import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
_flags = os.environ.get('XLA_FLAGS', '')
if '--xla_force_host_platform_device_count' not in _flags:
  os.environ['XLA_FLAGS'] = (_flags + ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

# With 8 simulated devices on 2 cores, several executions in flight can
# deadlock the CPU collectives' rendezvous; run CPU executions synchronously
# (jax reads no environment variable for this; vit_jax.main sets it too).
jax.config.update('jax_cpu_enable_async_dispatch', False)
