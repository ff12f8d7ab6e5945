"""Command line: prepare a TFDS dataset from class folders or <class>.tar archives.

    python -m vit_jax.data.prepare --source=ROOT --name=NAME --data_dir=DIR \
        [--holdout=10000 | --holdout=2%] [--max_side=512] [--num_workers=16]
    python -m vit_jax.data.prepare ... --beam \
        --beam_pipeline_options=--runner=DirectRunner,--direct_num_workers=8

Bad input ends with one line on stderr (no traceback) and exit status 2.
Prints the report (JSON) on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

from vit_jax.data.prepare import job as job_lib, local, shards as shards_lib


class _Parser(argparse.ArgumentParser):
  """Reports a usage error on one line (the usage is one --help away)."""

  def error(self, message):
    self.exit(2, f'{self.prog}: error: {message} (see --help)\n')


def _parser() -> argparse.ArgumentParser:
  d = job_lib.Options('', '', '')
  p = _Parser(prog='python -m vit_jax.data.prepare',
              description='Prepare ROOT/<class>/* or ROOT/<class>.tar as a TFDS dataset.')
  p.add_argument('--source', required=True,
                 help='ROOT with one folder or one <class>.tar archive per class')
  p.add_argument('--name', required=True, help='dataset name, e.g. imagenet21k')
  p.add_argument('--data_dir', required=True, help='TFDS data directory (local or gs://)')
  p.add_argument('--version', default=d.version)
  p.add_argument('--split', default=d.split, help='name of the main split')
  p.add_argument('--holdout', default=d.holdout,
                 help='files held out in --holdout_split: a count or a percent (2%%)')
  p.add_argument('--holdout_split', default=d.holdout_split)
  p.add_argument('--max_side', type=int, default=d.max_side,
                 help='re-encode images whose longer side exceeds this (0: keep all)')
  p.add_argument('--jpeg_quality', type=int, default=d.jpeg_quality,
                 help='JPEG quality of re-encoded images')
  p.add_argument('--shard_mb', type=float, default=d.shard_mb, help='MiB per shard')
  p.add_argument('--examples_per_shard', type=int, default=d.examples_per_shard,
                 help='files per shard (overrides --shard_mb)')
  p.add_argument('--file_format', default=d.file_format, choices=shards_lib.FILE_FORMATS)
  p.add_argument('--seed', type=int, default=d.seed, help='order of the examples')
  p.add_argument('--num_workers', type=int, default=d.num_workers,
                 help='processes (0: one per CPU core)')
  p.add_argument('--beam', action='store_true',
                 help="run on Apache Beam through TFDS's Beam support")
  p.add_argument('--beam_pipeline_options', default='',
                 help='comma-separated Beam options, e.g. --runner=DataflowRunner,'
                      '--project=P,--region=R,--temp_location=gs://B/tmp')
  return p


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = _parser().parse_args(argv)
  opts = job_lib.Options(**{f: getattr(args, f) for f in job_lib.Options.__dataclass_fields__})
  try:
    tfds = shards_lib.tfds_module()
    job_lib.validate(opts, tfds.list_builders(with_community_datasets=False))
    if args.beam:
      try:
        from vit_jax.data.prepare import beam  # pylint: disable=g-import-not-at-top
      except ImportError as e:
        raise ValueError(f'--beam needs apache-beam ({e}); create its environment with '
                         '`make prepare-env` and run .venv-prepare/bin/python.') from None
      options = [o for o in args.beam_pipeline_options.split(',') if o]
      report = beam.prepare_beam(opts, options)
    else:
      report = local.prepare(opts)
  except (ValueError, FileNotFoundError) as e:
    print(f'python -m vit_jax.data.prepare: error: {e}', file=sys.stderr)
    return 2
  report.pop('skipped', None)
  print(json.dumps(report, indent=1))
  return 0


if __name__ == '__main__':
  sys.exit(main())
