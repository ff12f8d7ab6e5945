"""Multi-host smoke test: every process joins, and a cross-process sum comes out right.

Run it where the training will run, before the training:

  python -m launch.local --num_processes=2 --devices_per_process=4 --module=launch.check
  python -m launch.tpu run --name=NAME --zone=ZONE --module=launch.check   # all TPU workers
  srun python -m launch.check                                              # SLURM

With `--coordinator_address`, `--num_processes` and `--process_id` it joins
them explicitly (what launch.local passes); without them it lets
`jax.distributed.initialize()` detect Cloud TPU or SLURM, and elsewhere runs as
one process. Each process fills its devices' rows of a global array with
`process_index * 1000 + local row`; the jitted sum over the global array must
equal the closed form, which no process can compute from its own data alone.
Exit status 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys

from vit_jax import help_format

ROW_WIDTH = 3


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog='python -m launch.check', description=__doc__.splitlines()[0],
                                   formatter_class=help_format.Formatter)
  parser.add_argument('--coordinator_address', default=None, help='HOST:PORT of process 0')
  parser.add_argument('--num_processes', type=int, default=None)
  parser.add_argument('--process_id', type=int, default=None)
  args, _ = parser.parse_known_args(argv)  # the training's flags (--workdir, --config) are ignored
  explicit = [args.coordinator_address, args.num_processes, args.process_id]
  if any(v is not None for v in explicit) and any(v is None for v in explicit):
    parser.error('pass all of --coordinator_address, --num_processes and --process_id, or none of them')
  return args


def initialize(args: argparse.Namespace) -> None:
  """Joins the other processes: explicitly, auto-detected on TPU/SLURM, or not at all."""
  import jax  # pylint: disable=g-import-not-at-top
  if args.coordinator_address is not None:
    jax.distributed.initialize(coordinator_address=args.coordinator_address,
                               num_processes=args.num_processes, process_id=args.process_id)
  elif os.environ.get('SLURM_JOB_ID') or os.environ.get('TPU_WORKER_HOSTNAMES') or _on_cloud_tpu():
    jax.distributed.initialize()


def _on_cloud_tpu() -> bool:
  return os.path.exists('/dev/accel0') or os.path.exists('/dev/vfio/0')


def expected_sum(process_count: int, local_device_count: int) -> float:
  """Sum over processes p, local rows r, columns c of (p*1000 + r) — the closed form."""
  p, r, w = process_count, local_device_count, ROW_WIDTH
  return w * (1000 * r * p * (p - 1) / 2 + p * r * (r - 1) / 2)


def global_sum() -> tuple[float, list[int]]:
  """Builds the global array from per-process rows; returns its sum and every process's id."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ('data',))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  rows = jax.local_device_count()
  local = (jax.process_index() * 1000 + np.arange(rows, dtype=np.float32))[:, None]
  local = np.repeat(local, ROW_WIDTH, axis=1)
  global_array = jax.make_array_from_process_local_data(sharding, local)
  total = jax.jit(jnp.sum, out_shardings=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))(global_array)
  ids = multihost_utils.process_allgather(np.int32(jax.process_index()))
  return float(total), [int(i) for i in np.asarray(ids).reshape(-1)]


def main(argv: list[str]) -> int:
  args = parse_args(argv)
  initialize(args)
  import jax  # pylint: disable=g-import-not-at-top
  total, ids = global_sum()
  want = expected_sum(jax.process_count(), jax.local_device_count())
  ok = total == want and ids == list(range(jax.process_count()))
  print(f'process {jax.process_index()}/{jax.process_count()} platform={jax.default_backend()} '
        f'devices local={jax.local_device_count()} global={jax.device_count()} '
        f'sum={total:.0f} expected={want:.0f} process_ids={ids} {"OK" if ok else "MISMATCH"}', flush=True)
  # Leave together, now, rather than in jax's exit hook while the
  # interpreter tears down (a process there hung now and then).
  jax.distributed.shutdown()
  return 0 if ok else 1


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
