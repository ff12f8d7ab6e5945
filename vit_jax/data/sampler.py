"""Which examples each host reads, in which order: split slices, host shares, epochs.

Everything here is index arithmetic in NumPy, shared by every source:

* `parse_split('train[:800]+validation')` -> one (base split, start, stop)
  per '+' part, as TFDS writes concatenations; `split_ranges(split, size_of)`
  -> the absolute (base, start, stop) of every part. A concatenated split is
  one sequence of examples (the parts in order), so host shares, epochs and
  resume positions are positions in that sequence; `sub_ranges` maps such
  positions back to absolute ranges of the base splits.
* `host_range(n, i, p)` -> host i's contiguous share of n examples (sizes
  differ by at most one, the first `n % p` hosts get the extra example, as
  `tfds.even_splits`): evaluation, and the training streams of TFDS.
* `TrainOrder` maps a stream position g (the g-th example of the stream
  since step 0) to an example: epoch g // n, and within it a permutation
  seeded by (seed, stream, epoch). Position -> example is a pure function,
  so resuming at batch k costs nothing. Random-access sources have one
  global stream (`GLOBAL_STREAM`) over the whole split, the same on every
  host; `host_positions` gives host i the rows [i B/P, (i+1) B/P) of each
  global batch of B positions, so global batch s holds stream positions
  [s B, (s+1) B) whatever the number of processes P.
* `example_keys(seed, stream, positions)` -> one 64-bit key per stream
  position: random augmentation is a function of that key only, so a resumed
  run draws exactly the augmentation the uninterrupted run drew, and on the
  global stream every process count draws the same for the same example.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Callable, Optional, Sequence

import numpy as np

_PART_RE = re.compile(r'^\s*([\w\-.]+)\s*(?:\[\s*([^:\]]*)\s*:\s*([^\]]*)\s*\])?\s*$')
_BOUND_RE = re.compile(r'^(-?\d+)(%?)$')

Range = tuple[str, int, int]  # (base split, start, stop): absolute, stop exclusive.
# The stream number of the global stream: 0, the number a single process always
# had, so single-process runs draw the batches they drew when each host had its own.
GLOBAL_STREAM = 0


def parse_split(split: str) -> list[tuple[str, Optional[str], Optional[str]]]:
  """'train[:800]+validation' -> [('train', None, '800'), ('validation', None, None)].

  One (base split, start, stop) per part; parts are joined by '+' as in TFDS.
  """
  parts = split.split('+')
  if any(not p.strip() for p in parts):
    raise ValueError(f'Split {split!r} has an empty part; join parts with single '
                     "'+' signs, e.g. 'train[:800]+validation[:200]'.")
  return [_parse_part(p, split) for p in parts]


def _parse_part(part: str, split: str) -> tuple[str, Optional[str], Optional[str]]:
  m = _PART_RE.match(part)
  if not m:
    raise ValueError(f'Cannot parse split {split!r}; write NAME or NAME[START:STOP] '
                     "with integers or percentages, joined by '+', e.g. 'train[:98%]' "
                     "or 'train[:800]+validation[:200]'.")
  name, start, stop = m.group(1), m.group(2), m.group(3)
  for bound in (start, stop):
    if bound and not _BOUND_RE.match(bound.strip()):
      raise ValueError(f'Cannot parse slice bound {bound!r} in split {split!r}; '
                       "use an integer or a percentage such as '98%'.")
  return name, (start or None), (stop or None)


def _bound(bound: Optional[str], size: int, default: int) -> int:
  if bound is None:
    return default
  value, percent = _BOUND_RE.match(bound.strip()).groups()
  value = int(value)
  if percent:
    if not -100 <= value <= 100:
      raise ValueError(f'Percent slice bound {bound!r} is outside [-100%, 100%].')
    value = int(round(size * value / 100))  # Nearest example, as TFDS does.
  if value < 0:
    value += size
  return min(max(value, 0), size)


def split_ranges(split: str, size_of: Callable[[str], int]) -> list[Range]:
  """The absolute (base, start, stop) of every part of `split`, in order.

  `size_of(base)` gives a base split's size, or raises for an unknown one; it is
  called once per distinct base. A part that selects nothing is an error.
  """
  sizes, ranges = {}, []
  parts = parse_split(split)
  for text, (base, start, stop) in zip(split.split('+'), parts):
    if base not in sizes:
      sizes[base] = size_of(base)
    size = sizes[base]
    lo, hi = _bound(start, size, 0), _bound(stop, size, size)
    if hi <= lo:
      what = f'Split {split!r}' if len(parts) == 1 else (
          f'Part {text.strip()!r} of split {split!r}')
      raise ValueError(f'{what} selects no examples (split {base!r} has {size}); '
                       'widen the slice.')
    ranges.append((base, lo, hi))
  return ranges


def ranges_size(ranges: Sequence[Range]) -> int:
  """Examples in the concatenation of `ranges`."""
  return sum(hi - lo for _, lo, hi in ranges)


def sub_ranges(ranges: Sequence[Range], start: int, stop: int) -> list[Range]:
  """Positions [start, stop) of the concatenation of `ranges`, as absolute ranges."""
  out, offset = [], 0
  for base, lo, hi in ranges:
    a, b = max(start - offset, 0), min(stop - offset, hi - lo)
    if a < b:
      out.append((base, lo + a, lo + b))
    offset += hi - lo
  return out


def host_range(n: int, process_index: int, process_count: int) -> tuple[int, int]:
  """Host `process_index`'s contiguous share [start, stop) of n examples."""
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} must be in [0, process_count='
                     f'{process_count}).')
  base, extra = divmod(n, process_count)
  start = process_index * base + min(process_index, extra)
  return start, start + base + (process_index < extra)


def host_batch_size(global_batch_size: int, process_count: int) -> int:
  """Global batch / process count, which must divide evenly."""
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(f'global_batch_size={global_batch_size} must be a positive '
                     f'multiple of process_count={process_count}.')
  return global_batch_size // process_count


def eval_num_batches(n: int, host_batch: int, process_count: int) -> int:
  """Batches every host yields so that the largest host share fits (padded)."""
  largest = math.ceil(n / process_count)
  return max(1, math.ceil(largest / host_batch))


def _mix64(x: np.ndarray) -> np.ndarray:
  """splitmix64 finaliser: a bijective, well-mixed map of uint64 arrays."""
  x = np.asarray(x, np.uint64)
  with np.errstate(over='ignore'):
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def fold_in(keys, data) -> np.ndarray:
  """Derives new 64-bit keys from `keys` and integers `data` (broadcasting)."""
  with np.errstate(over='ignore'):
    return _mix64(_mix64(np.asarray(keys, np.uint64)) +
                  np.uint64(0x9E3779B97F4A7C15) * (np.asarray(data, np.uint64) + np.uint64(1)))


def example_keys(seed: int, stream: int, positions) -> np.ndarray:
  """One uint64 key per position of stream `stream` (GLOBAL_STREAM or a host's)."""
  return fold_in(fold_in(np.uint64(seed % 2**64), stream), positions)


def uniform(keys: np.ndarray, salt: int) -> np.ndarray:
  """Float64 uniforms in [0, 1), one per key, for random op number `salt`."""
  bits = fold_in(keys, salt) >> np.uint64(11)
  return bits.astype(np.float64) / float(2**53)


def host_positions(batch, global_batch_size: int, process_index: int,
                   process_count: int) -> np.ndarray:
  """Global stream positions of host `process_index`'s rows of global batch(es) `batch`.

  Global batch s is positions [s B, (s+1) B); host i takes its contiguous
  share [s B + i B/P, s B + (i+1) B/P). Shape: batch's shape + [B/P].
  """
  b = host_batch_size(global_batch_size, process_count)
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} must be in [0, process_count='
                     f'{process_count}).')
  batch = np.asarray(batch, np.int64)
  return (batch[..., None] * global_batch_size + process_index * b +
          np.arange(b, dtype=np.int64))


@functools.lru_cache(maxsize=2)  # A batch may straddle two epochs; 4n bytes each.
def _permutation(n: int, seed: int, stream: int, epoch: int) -> np.ndarray:
  rng = np.random.default_rng([seed, stream, epoch])
  return rng.permutation(n).astype(np.int32 if n < 2**31 else np.int64)


class TrainOrder:
  """Maps the stream positions of n examples to example indices, epoch by epoch."""

  def __init__(self, num_examples: int, seed: int, stream: int = GLOBAL_STREAM):
    if num_examples < 1:
      raise ValueError('This host has no training examples: the split has fewer '
                       'examples than there are processes.')
    self.n = num_examples
    self.seed = seed
    self.stream = stream

  def epoch_permutation(self, epoch: int) -> np.ndarray:
    return _permutation(self.n, self.seed % 2**63, self.stream, epoch)

  def indices(self, positions: np.ndarray) -> np.ndarray:
    """Example indices (in [0, n)) for stream positions (any epochs)."""
    positions = np.asarray(positions, np.int64)
    epochs, offsets = np.divmod(positions, self.n)
    out = np.empty_like(positions)
    for epoch in np.unique(epochs):
      sel = epochs == epoch
      out[sel] = self.epoch_permutation(int(epoch))[offsets[sel]]
    return out
