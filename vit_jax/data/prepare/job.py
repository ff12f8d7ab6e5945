"""The preparation job: its options, its plan, and the record that makes it resumable.

Both runners (`local`: a process pool on one machine; `beam`: TFDS's Beam
support) list the source, plan the splits and shards from the options, and
check them against `VERSION/prepare/plan.json`, written by the first run:
a run resumed with other options, or on a source that changed since, stops
with a one-line error instead of mixing two datasets.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time

from vit_jax.data.prepare import listing as listing_lib, plan as plan_lib, shards as shards_lib
from vit_jax.data.tf_runtime import tf as _tf


@dataclasses.dataclass(frozen=True)
class Options:
  """Everything that decides the prepared dataset (and how fast it is made)."""

  source: str
  name: str
  data_dir: str
  version: str = '1.0.0'
  split: str = 'full'
  holdout: str = '0'  # Files held out: a count ('10000') or a percent ('2%').
  holdout_split: str = 'validation'
  max_side: int = 0  # 0: keep every JPEG as it is.
  jpeg_quality: int = 95  # Of re-encoded images only.
  shard_mb: float = 256.0
  examples_per_shard: int = 0  # 0: from shard_mb and the mean file size.
  file_format: str = 'tfrecord'
  seed: int = 0
  num_workers: int = 0  # 0: one per CPU core.

  def content(self) -> dict:
    """The options that decide the dataset's content (not the worker count)."""
    d = dataclasses.asdict(self)
    d.pop('num_workers')
    return d


def validate(opts: Options, catalogue_names=()) -> None:
  """One-line errors for options that cannot make a dataset."""
  if not re.fullmatch(r'[a-z][a-z0-9_]*', opts.name):
    raise ValueError(f'--name={opts.name!r} is not a TFDS dataset name; use lower case '
                     'letters, digits and underscores, starting with a letter.')
  if opts.name in catalogue_names:
    raise ValueError(f'--name={opts.name} is a TFDS catalogue dataset, whose builder code '
                     'would be read instead of your files; choose another name.')
  if not re.fullmatch(r'\d+\.\d+\.\d+', opts.version):
    raise ValueError(f'--version={opts.version!r} is not MAJOR.MINOR.PATCH, e.g. 1.0.0.')
  for flag, split in (('split', opts.split), ('holdout_split', opts.holdout_split)):
    if not re.fullmatch(r'[a-z][a-z0-9_]*', split):
      raise ValueError(f'--{flag}={split!r} is not a split name; use e.g. full, train.')
  if opts.max_side < 0:
    raise ValueError(f'--max_side={opts.max_side} must be 0 (keep sizes) or positive.')
  if not 1 <= opts.jpeg_quality <= 100:
    raise ValueError(f'--jpeg_quality={opts.jpeg_quality} must be in 1..100.')
  plan_lib.parse_holdout(opts.holdout)


def _file_size(path: str) -> int:
  return int(_tf().io.gfile.stat(path).length)


def make_plan(opts: Options, map_fn=map):
  """(listing, shards, writer) of the job."""
  listing = listing_lib.list_source(opts.source, map_fn=map_fn)
  per_shard = plan_lib.examples_per_shard(
      plan_lib.mean_size(listing, _file_size), opts.shard_mb, opts.examples_per_shard)
  shards = plan_lib.make_shards(
      listing, split=opts.split, holdout=opts.holdout, holdout_split=opts.holdout_split,
      examples_per_shard=per_shard, seed=opts.seed)
  writer = shards_lib.Writer(
      data_dir=opts.data_dir, name=opts.name, version=opts.version,
      class_names=listing.class_names, file_format=opts.file_format,
      max_side=opts.max_side, quality=opts.jpeg_quality)
  return listing, shards, writer


def plan_record(opts: Options, listing: listing_lib.Listing, shards) -> dict:
  return {'options': opts.content(), 'fingerprint': listing.fingerprint(),
          'shards': [s.id for s in shards]}


def check_or_write_plan(writer: shards_lib.Writer, record: dict) -> bool:
  """True when resuming the same plan; writes it on a first run; errors on a mismatch."""
  gfile = _tf().io.gfile
  path = f'{writer.progress_dir}/plan.json'
  if gfile.exists(path):
    with gfile.GFile(path) as f:
      old = json.load(f)
    if old != record:
      what = ('options' if old['options'] != record['options'] else 'source files')
      raise ValueError(
          f'{writer.directory} holds an unfinished preparation with other {what}; '
          'rerun with the same options and source, or delete that directory to start over.')
    return True
  gfile.makedirs(writer.progress_dir)
  with gfile.GFile(path, 'w') as f:
    json.dump(record, f)
  return False


def report_header(opts: Options, listing: listing_lib.Listing, runner: str,
                  started: float) -> dict:
  return {'name': opts.name, 'version': opts.version, 'source': opts.source,
          'layout': listing.layout, 'runner': runner,
          'num_classes': len(listing.class_names), 'num_files': len(listing.entries),
          'options': opts.content(), 'seconds': round(time.time() - started, 3)}
