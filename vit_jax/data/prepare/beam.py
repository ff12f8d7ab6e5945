"""Prepares a dataset on Apache Beam through TFDS's own Beam support (any runner).

The same listing, plan (split membership) and image checks as the local
runner, but the examples of each split are a Beam `PTransform` handed to
`tfds.dataset_builders.store_as_tfds_dataset`, and TFDS's Beam writer
shuffles and shards them. Options after `--beam_pipeline_options` pick the
runner: DirectRunner (one machine, the default), DataflowRunner, SparkRunner.
The dataset holds the same examples, labels and label names as a local
run's; only the order of the examples in the files differs (TFDS orders
them by a hash of their key). Beam retries failed work itself; a killed
Beam job is started again from the beginning.

Needs `apache-beam`, which does not install beside the training stack's
pins: install it in its own environment (`make prepare-env`, see
docs/launch.md).
"""

from __future__ import annotations

import json
import time
from typing import Sequence

import apache_beam as beam
from apache_beam.options import pipeline_options as beam_options

from vit_jax.data.prepare import job as job_lib, shards as shards_lib
from vit_jax.data.tf_runtime import tf as _tf


class _ReadShard(beam.DoFn):
  """Checked examples of one planned shard; skipped files to the 'skipped' output."""

  def __init__(self, writer: shards_lib.Writer):
    super().__init__()
    self._writer = writer

  def process(self, shard):
    stored, skipped = self._writer.examples(shard)
    for key, example, _ in stored:
      yield key, example
    for key, reason in skipped:
      yield beam.pvalue.TaggedOutput('skipped', json.dumps([key, reason]))
    yield beam.pvalue.TaggedOutput('reencoded', sum(1 for *_, r in stored if r))


class _Split(beam.PTransform):
  """The (key, example) pairs of one split; writes its skipped files beside."""

  def __init__(self, writer, shards, skipped_prefix: str):
    super().__init__()
    self._writer, self._shards, self._prefix = writer, list(shards), skipped_prefix

  def expand(self, pbegin):
    out = (pbegin
           | 'Shards' >> beam.Create(self._shards)
           | 'Spread' >> beam.Reshuffle()
           | 'Read' >> beam.ParDo(_ReadShard(self._writer)).with_outputs(
               'skipped', 'reencoded', main='examples'))
    _ = out.skipped | 'WriteSkipped' >> beam.io.WriteToText(self._prefix + '-skipped')
    _ = (out.reencoded | 'CountReencoded' >> beam.CombineGlobally(sum)
         | 'WriteReencoded' >> beam.io.WriteToText(self._prefix + '-reencoded'))
    return out.examples


def _read_lines(pattern: str) -> list[str]:
  gfile = _tf().io.gfile
  lines = []
  for path in sorted(gfile.glob(pattern)):
    with gfile.GFile(path) as f:
      lines.extend(l for l in f.read().splitlines() if l)
  return lines


def prepare_beam(opts: job_lib.Options, pipeline_options: Sequence[str] = ()) -> dict:
  """Prepares the dataset with TFDS's Beam writer; returns its report."""
  started = time.time()
  tfds, gfile = shards_lib.tfds_module(), _tf().io.gfile
  listing, shards, writer = job_lib.make_plan(opts)
  if writer.is_complete():
    return {'already_prepared': writer.directory}
  scratch = f'{opts.data_dir.rstrip("/")}/{opts.name}/.beam-{opts.version}'
  if gfile.exists(scratch):
    gfile.rmtree(scratch)
  gfile.makedirs(scratch)
  splits = {}
  for s in shards:
    splits.setdefault(s.split, []).append(s)
  datasets = {name: _Split(writer, ss, f'{scratch}/{name}') for name, ss in splits.items()}
  options = beam_options.PipelineOptions(list(pipeline_options))
  tfds.dataset_builders.store_as_tfds_dataset(
      name=opts.name, version=opts.version, features=shards_lib.features(listing.class_names),
      split_datasets=datasets, data_dir=opts.data_dir, file_format=opts.file_format,
      description=f'Prepared from {opts.source}.',
      download_config=tfds.download.DownloadConfig(beam_options=options))
  skipped = sorted(tuple(json.loads(l)) for l in _read_lines(f'{scratch}/*-skipped*'))
  reencoded = sum(int(l) for l in _read_lines(f'{scratch}/*-reencoded*'))
  builder = tfds.builder_from_directory(writer.directory)
  report = job_lib.report_header(opts, listing, 'beam', started)
  report.update({
      'beam_pipeline_options': list(pipeline_options),
      'splits': {k: v.num_examples for k, v in builder.info.splits.items()},
      'num_shards': {k: v.num_shards for k, v in builder.info.splits.items()},
      'num_bytes': sum(int(v.num_bytes) for v in builder.info.splits.values()),
      'reencoded': reencoded, 'num_skipped': len(skipped),
      'skipped': [{'file': k, 'reason': why} for k, why in skipped]})
  with gfile.GFile(f'{writer.directory}/{shards_lib.REPORT_FILE}', 'w') as f:
    json.dump(report, f, indent=1)
  gfile.rmtree(scratch)
  return report
