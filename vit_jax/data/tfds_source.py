"""TFDS datasets as a stream source: named lookup, split slices, host sub-splits.

Nothing here downloads: a dataset that is not prepared in `data_dir` fails at
once with a message that says where we looked and the command that prepares
it (with `--manual_dir` for datasets such as ImageNet that need archives).
Image features are read undecoded (`tfds.decode.SkipDecoding`), so `decode`
(or the fused `decode_jpeg_and_inception_crop`) in `pp` does the decoding and
a resumed pipeline skips examples before paying for it.

A split such as `'train[:800]+validation[:200]'` (TFDS's concatenation) is
one sequence of positions: its parts' examples in order. A host reads the
absolute sub-splits of its share of those positions (`'train[0:500]'` on
host 0, `'train[500:800]+validation[0:200]'` on host 1), so hosts never open
each other's examples and every count is exact; within its share a host
reads in TFDS's file order (TFDS interleaves the files of a '+' split).

Training batches therefore depend on the process count: TFRecord shards
are read sequentially, so a global permutation (as the random-access
sources have) would make every host read every file to pick out its rows.
Each host instead shuffles its own share with its own buffer, and the
global batch is the union of the hosts' streams: the same seed on 1 and on
4 processes gives other batches (resuming on the same process count is
still exact). For a run that must move between process counts with the
same data, export the split to an image folder (`name='folder'`).
"""

from __future__ import annotations

import difflib
import os
from typing import Optional

from vit_jax.data import sampler
from vit_jax.data.tf_runtime import tf as _tf


def _tfds():
  _tf()  # Accelerators hidden before TFDS imports TensorFlow.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds


def _default_data_dir(data_dir: Optional[str]) -> str:
  return data_dir or os.environ.get('TFDS_DATA_DIR') or os.path.expanduser(
      '~/tensorflow_datasets')


def _builder(tfds, name: str, data_dir: Optional[str]):
  try:
    return tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    base = name.split(':')[0].split('/')[0]
    close = difflib.get_close_matches(base, tfds.list_builders(with_community_datasets=False), n=3)
    hint = f' Did you mean {", ".join(close)}?' if close else ''
    raise ValueError(f'Unknown dataset {name!r}: neither digits/arrays/folder nor a '
                     f'TFDS dataset.{hint}') from None


def _prepare_hint(builder, name: str, data_dir: str, manual_dir: Optional[str]) -> str:
  command = f'tfds build {name.split(":")[0]} --data_dir={data_dir}'
  if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
    command += f' --manual_dir={manual_dir or "DIR_WITH_THE_ARCHIVES"}'
    return (f'{name} needs manually downloaded archives (see '
            f'https://www.tensorflow.org/datasets/catalog/{builder.name}); put them in '
            f'a directory and run: {command}')
  return f'prepare it once, online, with: {command}'


class TfdsSource:
  """One (possibly sliced, possibly concatenated) split of a TFDS dataset."""

  in_memory = False

  def __init__(self, name: str, split: str, data_dir: Optional[str] = None,
               manual_dir: Optional[str] = None):
    tfds = _tfds()
    self.name, self.split = name, split
    self.builder = _builder(tfds, name, data_dir)
    self.description = f'{name}:{split}'
    self._data_dir, self._manual_dir = _default_data_dir(data_dir), manual_dir
    self.ranges = sampler.split_ranges(split, self._base_size)
    self.size = sampler.ranges_size(self.ranges)
    label = self.builder.info.features.get('label') if hasattr(
        self.builder.info.features, 'get') else None
    self.num_classes = getattr(label, 'num_classes', None)
    self.image_keys = [k for k, f in self.builder.info.features.items()
                       if isinstance(f, tfds.features.Image)]
    self.encoded_images = bool(self.image_keys)  # Read undecoded: `decode` comes first.

  def _base_size(self, base: str) -> int:
    splits = self.builder.info.splits
    if splits:
      if base not in splits:
        raise ValueError(f'Dataset {self.name!r} has no split {base!r}; its splits '
                         f'are {sorted(splits.keys())}.')
      return splits[base].num_examples
    try:  # No split metadata: unprepared, or a mocked builder (tfds.testing).
      ds = self.builder.as_dataset(split=base)
    except AssertionError:
      raise FileNotFoundError(
          f'Dataset {self.name!r} is not prepared in {self._data_dir} (looked for '
          f'{self.builder.data_dir}); nothing is downloaded at run time: '
          f'{_prepare_hint(self.builder, self.name, self._data_dir, self._manual_dir)}, '
          'or set input.data_dir to where it is.') from None
    except ValueError as e:
      raise ValueError(f'Dataset {self.name!r} has no split {base!r}: '
                       f'{str(e).splitlines()[0]}') from None
    size = int(ds.cardinality())
    if size < 0:
      raise ValueError(f'Cannot tell the size of split {base!r} of {self.name!r}.')
    return size

  def host_split(self, start: int, stop: int) -> str:
    """The TFDS split string of positions [start, stop) of the selected split."""
    return '+'.join(f'{base}[{lo}:{hi}]'
                    for base, lo, hi in sampler.sub_ranges(self.ranges, start, stop))

  def host_dataset(self, start: int, stop: int, *, train: bool, seed: int = 0):
    """Examples [start, stop) of the selected split, images still encoded.

    For training the shard files are read in an order fixed by `seed` (the
    same every epoch; the pipeline's shuffle buffer reshuffles per epoch).
    """
    tfds = _tfds()
    read_config = tfds.ReadConfig(
        shuffle_seed=seed % 2**31, shuffle_reshuffle_each_iteration=False,
        try_autocache=False, add_tfds_id=False)
    return self.builder.as_dataset(
        split=self.host_split(start, stop), shuffle_files=train, read_config=read_config,
        decoders={k: tfds.decode.SkipDecoding() for k in self.image_keys})
