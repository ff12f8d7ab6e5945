"""Test set-up: 8 simulated CPU devices, before anything imports jax."""

import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
_flags = os.environ.get('XLA_FLAGS', '')
if '--xla_force_host_platform_device_count' not in _flags:
  os.environ['XLA_FLAGS'] = (_flags + ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')
# With 8 simulated devices on 2 cores, several executions in flight can
# deadlock the CPU collectives' rendezvous; run CPU executions synchronously.
os.environ.setdefault('JAX_CPU_ENABLE_ASYNC_DISPATCH', 'false')
