"""Prepares a dataset on one machine: a process per core, resumable after a kill.

Listing (one task per class) and writing (one task per shard) run in a pool
of `num_workers` processes. Shards already marked done by an earlier,
interrupted run of the same plan are kept as they are; the others are
written again, so the result equals that of an uninterrupted run.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import sys
import time

from vit_jax.data.prepare import job as job_lib

def _write_shard(writer_and_shard) -> dict:
  writer, shard = writer_and_shard
  return writer.write(shard)


def _log(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _pool(num_workers: int):
  """A process pool's `map`, or the built-in `map` for a single worker."""
  if num_workers <= 1:
    yield map
    return
  with concurrent.futures.ProcessPoolExecutor(
      num_workers, mp_context=multiprocessing.get_context('spawn')) as pool:
    yield lambda fn, items: pool.map(fn, items, chunksize=1)


def prepare(opts: job_lib.Options) -> dict:
  """Prepares (or finishes preparing) the dataset; returns its report."""
  started = time.time()
  num_workers = opts.num_workers or os.cpu_count() or 1
  with _pool(num_workers) as map_fn:
    listing, shards, writer = job_lib.make_plan(opts, map_fn)
    if writer.is_complete():
      _log(f'{writer.directory} is already prepared; nothing to do.')
      return {'already_prepared': writer.directory}
    return _write(opts, num_workers, map_fn, listing, shards, writer, started)


def _write(opts, num_workers, map_fn, listing, shards, writer, started) -> dict:
  """Writes the shards not done yet, then the metadata and report."""
  resumed = job_lib.check_or_write_plan(writer, job_lib.plan_record(opts, listing, shards))
  records = {s.id: writer.done(s) for s in shards} if resumed else {}
  todo = [s for s in shards if records.get(s.id) is None]
  _log(f'{len(listing.entries)} files in {len(listing.class_names)} classes -> '
       f'{len(shards)} shards in {writer.directory}; {len(shards) - len(todo)} already '
       f'done, {len(todo)} to write with {num_workers} workers.')
  t0, files = time.time(), 0
  every = max(1, len(todo) // 100)
  tasks = [(writer, s) for s in todo]
  for i, (shard, record) in enumerate(zip(todo, map_fn(_write_shard, tasks))):
    records[shard.id] = record
    files += len(shard.entries)
    if (i + 1) % every == 0 or i + 1 == len(todo):
      rate = files / max(time.time() - t0, 1e-9)
      _log(f'{i + 1}/{len(todo)} shards written, {rate:.0f} files/s')
  report = job_lib.report_header(opts, listing, 'local', started)
  report['num_workers'] = num_workers
  report = writer.finalize([records[s.id] for s in shards],
                           description=f'Prepared from {opts.source}.', report=report)
  _log(f'Done: {report["splits"]} examples, {report["num_skipped"]} files skipped '
       f'(listed in {writer.directory}/prepare_report.json).')
  return report
