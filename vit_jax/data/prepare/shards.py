"""Writes shards and the TFDS metadata that makes them a dataset; keeps the progress.

The output is a TFDS dataset directory, `DATA_DIR/NAME/VERSION/`, with
TFDS's own file names (`NAME-SPLIT.tfrecord-00000-of-00064`), records
serialized by the dataset's `tfds.features.FeaturesDict` and written by
TFDS's file adapter (TFRecord or ArrayRecord), and `dataset_info.json` /
`features.json` from `tfds.folder_dataset.write_metadata`, so
`tfds.builder(NAME, data_dir=DATA_DIR)` reads it as it reads a catalogue
dataset, with no builder code.

Each shard is written under a temporary name, renamed into place, and only
then marked done by a small JSON record in `VERSION/prepare/` (its example
count, bytes and skipped files). A run that finds a shard marked done keeps
it; any other shard is written again. `dataset_info.json` is written last,
after every shard is done, so a dataset that is readable is complete.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Optional, Sequence

from vit_jax.data.prepare import images, listing as listing_lib, plan as plan_lib
from vit_jax.data.tf_runtime import tf as _tf

PROGRESS_DIR = 'prepare'
REPORT_FILE = 'prepare_report.json'
FILE_FORMATS = ('tfrecord', 'array_record')


def tfds_module():
  _tf()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds


def features(class_names: Sequence[str]):
  """image: encoded JPEG; label: class index (names in class order); file_name: key."""
  tfds = tfds_module()
  return tfds.features.FeaturesDict({
      'image': tfds.features.Image(encoding_format='jpeg'),
      'label': tfds.features.ClassLabel(names=list(class_names)),
      'file_name': tfds.features.Text(),
  })


def version_dir(data_dir: str, name: str, version: str) -> str:
  return os.path.join(data_dir, name, version) if '://' not in data_dir else (
      f'{data_dir.rstrip("/")}/{name}/{version}')


def _join(directory: str, *parts: str) -> str:
  return os.path.join(directory, *parts) if '://' not in directory else '/'.join(
      [directory.rstrip('/'), *parts])


class Writer:
  """Writes the shards of one dataset (picklable: process pools get a copy)."""

  def __init__(self, *, data_dir: str, name: str, version: str, class_names,
               file_format: str = 'tfrecord', max_side: int = 0, quality: int = 95):
    if file_format not in FILE_FORMATS:
      raise ValueError(f'--file_format={file_format!r} is not one of {FILE_FORMATS}.')
    self.directory = version_dir(data_dir, name, version)
    self.name, self.version, self.class_names = name, version, tuple(class_names)
    self.file_format, self.max_side, self.quality = file_format, max_side, quality
    self._features = self._serializer = None

  @property
  def progress_dir(self) -> str:
    return _join(self.directory, PROGRESS_DIR)

  def template(self, split: str):
    tfds = tfds_module()
    fmt = tfds.core.file_adapters.FileFormat(self.file_format)
    return tfds.core.ShardedFileTemplate(
        data_dir=self.directory, dataset_name=self.name, split=split,
        filetype_suffix=fmt.file_suffix)

  def shard_path(self, shard: plan_lib.Shard) -> str:
    return os.fspath(self.template(shard.split).sharded_filepath(
        shard_index=shard.index, num_shards=shard.num_shards))

  def _record_path(self, shard: plan_lib.Shard) -> str:
    return _join(self.progress_dir, f'{shard.id}.json')

  def done(self, shard: plan_lib.Shard) -> Optional[dict]:
    """The record of a finished shard, or None."""
    gfile = _tf().io.gfile
    path = self._record_path(shard)
    if not gfile.exists(path):
      return None
    with gfile.GFile(path) as f:
      return json.load(f)

  def examples(self, shard: plan_lib.Shard):
    """(key, example dict) of the shard's files that decode; (key, reason) of the rest."""
    stored, skipped = [], []
    for entry in shard.entries:
      try:
        data = listing_lib.read(entry)
      except (OSError, _tf().errors.OpError) as e:
        skipped.append((entry.key, f'unreadable: {str(e).splitlines()[0]}'))
        continue
      checked = images.check(data, self.max_side, self.quality)
      if checked.jpeg is None:
        skipped.append((entry.key, checked.reason))
        continue
      stored.append((entry.key, {'image': checked.jpeg, 'label': entry.label,
                                 'file_name': entry.key}, checked.reencoded))
    return stored, skipped

  def write(self, shard: plan_lib.Shard) -> dict:
    """Writes one shard (temporary name, then renamed) and its done record."""
    tfds, gfile = tfds_module(), _tf().io.gfile
    cpu_start = time.process_time()
    if self._features is None:
      self._features = features(self.class_names)
      self._serializer = tfds.core.example_serializer.ExampleSerializer(
          self._features.get_serialized_info())
    stored, skipped = self.examples(shard)
    # Deterministic: a proto map's order otherwise depends on the process's hash
    # seed, and a shard written again after a kill must be the same bytes.
    records = [(key, self._serializer.get_tf_example(self._features.encode_example(ex))
                .SerializeToString(deterministic=True)) for key, ex, _ in stored]
    gfile.makedirs(self.progress_dir)
    final = self.shard_path(shard)
    tmp = _join(self.progress_dir, f'{shard.id}.{uuid.uuid4().hex}.tmp')
    adapter = tfds.core.file_adapters.ADAPTER_FOR_FORMAT[
        tfds.core.file_adapters.FileFormat(self.file_format)]
    adapter.write_examples(tmp, records)
    gfile.rename(tmp, final, overwrite=True)
    record = {'split': shard.split, 'index': shard.index, 'num_shards': shard.num_shards,
              'num_examples': len(records),
              'num_bytes': int(gfile.stat(final).length),
              'reencoded': sum(1 for *_, r in stored if r),
              'skipped': [list(s) for s in skipped],
              'cpu_seconds': time.process_time() - cpu_start}
    tmp = self._record_path(shard) + f'.{uuid.uuid4().hex}.tmp'
    with gfile.GFile(tmp, 'w') as f:
      json.dump(record, f)
    gfile.rename(tmp, self._record_path(shard), overwrite=True)
    return record

  def is_complete(self) -> bool:
    return _tf().io.gfile.exists(_join(self.directory, 'dataset_info.json'))

  def finalize(self, records: Sequence[dict], *, description: str, report: dict) -> dict:
    """dataset_info.json and features.json (TFDS), then the report beside them."""
    tfds, gfile = tfds_module(), _tf().io.gfile
    splits = {}
    for r in sorted(records, key=lambda r: (r['split'], r['index'])):
      splits.setdefault(r['split'], []).append(r)
    infos = [tfds.core.SplitInfo(name=s, shard_lengths=[r['num_examples'] for r in rs],
                                 num_bytes=sum(r['num_bytes'] for r in rs),
                                 filename_template=self.template(s))
             for s, rs in splits.items()]
    tfds.folder_dataset.write_metadata(
        data_dir=self.directory, features=features(self.class_names), split_infos=infos,
        version=self.version, filename_template=self.template(None),
        check_data=False, description=description)
    skipped = sorted((k, why) for r in records for k, why in r['skipped'])
    report = dict(report)
    report.update({
        'splits': {s: sum(r['num_examples'] for r in rs) for s, rs in splits.items()},
        'num_shards': {s: len(rs) for s, rs in splits.items()},
        'num_bytes': sum(r['num_bytes'] for r in records),
        'reencoded': sum(r['reencoded'] for r in records),
        'num_skipped': len(skipped),
        # Throughput per core: files read, checked and written per CPU second of
        # the shard writers (the pool's processes; listing and start-up excluded).
        'files_per_cpu_second': round(
            sum(r['num_examples'] + len(r['skipped']) for r in records) /
            max(sum(r['cpu_seconds'] for r in records), 1e-9), 1),
        'skipped': [{'file': k, 'reason': why} for k, why in skipped],
    })
    with gfile.GFile(_join(self.directory, REPORT_FILE), 'w') as f:
      json.dump(report, f, indent=1)
    gfile.rmtree(self.progress_dir)
    return report
