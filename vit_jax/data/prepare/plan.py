"""Assigns the listed files to splits and shards, the same way on every run.

The files are put in one order drawn from `seed` (a permutation of the
listing, which is sorted by class and key): the held-out split takes the
first `holdout` files of that order, the main split the rest, and each
split is cut into consecutive shards of `examples_per_shard` files. Every
shard therefore mixes all classes (a reader that shuffles shard files and
keeps a shuffle buffer sees a well-mixed stream), and a shard's content is a
function of the listing and the options only: a shard written again after a
kill is the same shard.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Optional

import numpy as np

from vit_jax.data.prepare import listing as listing_lib

MIB = 2 ** 20


@dataclasses.dataclass(frozen=True)
class Shard:
  """One output file: its split, index, count of shards in the split, and files."""

  split: str
  index: int
  num_shards: int
  entries: tuple[listing_lib.Entry, ...]

  @property
  def id(self) -> str:
    return f'{self.split}-{self.index:05d}-of-{self.num_shards:05d}'


def parse_holdout(holdout: str) -> tuple[int, float]:
  """'0', '10000' or '2%' -> (count, percent); one of them is 0."""
  text = str(holdout).strip()
  match = re.fullmatch(r'(\d+)|(\d+(?:\.\d+)?)%', text)
  if not match:
    raise ValueError(f'--holdout={holdout!r} is neither a count nor a percent; '
                     'write e.g. --holdout=10000 or --holdout=2%.')
  if match.group(1) is not None:
    return int(match.group(1)), 0.0
  percent = float(match.group(2))
  if not 0 <= percent < 100:
    raise ValueError(f'--holdout={holdout!r} must be below 100%.')
  return 0, percent


def holdout_count(holdout: str, total: int) -> int:
  count, percent = parse_holdout(holdout)
  if percent:
    count = int(round(total * percent / 100))
  if count >= total:
    raise ValueError(f'--holdout={holdout} takes {count} of the {total} files, leaving '
                     'none for the main split; hold out fewer.')
  return count


def mean_size(listing: listing_lib.Listing, read_size, sample: int = 1000) -> float:
  """Mean file size in bytes from up to `sample` files drawn with a fixed seed."""
  entries = listing.entries
  picks = np.random.default_rng(0).choice(len(entries), min(sample, len(entries)),
                                          replace=False)
  sizes = [entries[i].size if entries[i].size >= 0 else read_size(entries[i].path)
           for i in sorted(picks)]
  return float(np.mean(sizes)) if sizes else 1.0


def make_shards(listing: listing_lib.Listing, *, split: str, holdout: str,
                holdout_split: str, examples_per_shard: int,
                seed: int) -> list[Shard]:
  """Every shard of every split, in order (held-out split first)."""
  if examples_per_shard < 1:
    raise ValueError(f'examples_per_shard={examples_per_shard} must be at least 1.')
  total = len(listing.entries)
  n_hold = holdout_count(holdout, total)
  if n_hold and holdout_split == split:
    raise ValueError(f'--holdout_split={holdout_split!r} is the name of the main split '
                     'too; give the held-out split another name.')
  order = np.random.default_rng(seed).permutation(total)
  parts = [(holdout_split, order[:n_hold]), (split, order[n_hold:])]
  shards = []
  for name, idx in parts:
    if not len(idx):
      continue
    num = math.ceil(len(idx) / examples_per_shard)
    bounds = np.linspace(0, len(idx), num + 1).round().astype(int)  # Even sizes.
    for i in range(num):
      rows = idx[bounds[i]:bounds[i + 1]]
      shards.append(Shard(name, i, num, tuple(listing.entries[j] for j in rows)))
  return shards


def examples_per_shard(mean_bytes: float, shard_mb: float,
                       override: Optional[int] = None) -> int:
  """Files per shard for shards of about `shard_mb` MiB (or `override`)."""
  if override:
    return int(override)
  if shard_mb <= 0:
    raise ValueError(f'--shard_mb={shard_mb} must be positive.')
  return max(1, int(shard_mb * MIB / max(mean_bytes, 1.0)))
