"""Test set-up: 8 simulated CPU devices (tests/cpu_devices.py), before anything imports jax."""

import os

import cpu_devices  # pylint: disable=g-bad-import-order

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# 8 devices unless the caller chose a count; XLA:CPU at level 0 (cpu_devices).
os.environ['XLA_FLAGS'] = cpu_devices.xla_flags()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')

# One compilation cache for the whole run, subprocesses included: most tests
# compile the same few steps, and the children of `vit_jax.main` the same
# small programs (every compile is cached: 7:48 -> 7:29 on 2026-12-05).
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    '.pytest_cache', 'jax'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

# With 8 simulated devices on 2 cores, several executions in flight can
# deadlock the CPU collectives' rendezvous; run CPU executions synchronously
# (jax reads no environment variable for this; vit_jax.main sets it too).
jax.config.update('jax_cpu_enable_async_dispatch', False)


#: The files that take longest (10 s and more of an idle 2-core machine in
#: `make test`; 2026-12-05), slowest first. `make test` runs whole files
#: on two workers (pytest-xdist, --dist loadfile --no-loadscope-reorder),
#: handed out in collection order: started first, the long files cannot be
#: the last one a worker runs while the other idles.
SLOW_FILES = (
    'test_train_step.py', 'test_train.py', 'test_multihost.py',
    'test_models.py', 'test_preflight.py', 'test_planner_fit.py',
    'test_transfer.py', 'test_planner_fit_tpu.py', 'test_planner_tpu.py',
    'test_workdir_model.py', 'test_faults.py', 'test_data_prepare.py',
    'test_benchmarks_side_by_side.py', 'test_multislice.py',
    'test_multihost_peer_loss.py', 'test_transfer_table.py',
    'test_timm_parity.py', 'test_hf_interop.py', 'test_cli_checks.py',
    'test_console_output.py', 'test_train_multihost_cap.py',
    'test_visualize.py', 'test_budget_flops.py',
)


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(SLOW_FILES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FILES)))
