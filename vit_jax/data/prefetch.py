"""Prefetching of host batches in a background thread."""

from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator, TypeVar

T = TypeVar('T')
_END = object()


def prefetch(iterable: Iterable[T], n: int = 2) -> Iterator[T]:
  """Yields the items of `iterable`, computing up to `n` ahead in a thread.

  An exception in the producer is re-raised in the consumer; closing the
  returned generator (or dropping it) stops the producer.
  """
  if n < 1:
    raise ValueError(f'prefetch needs n >= 1, got {n}.')
  items: queue.Queue = queue.Queue(maxsize=n)
  stop = threading.Event()

  def produce():
    try:
      for item in iterable:
        while not stop.is_set():
          try:
            items.put((item, None), timeout=0.1)
            break
          except queue.Full:
            continue
        if stop.is_set():
          return
      items.put((_END, None))
    except BaseException as e:  # pylint: disable=broad-except
      items.put((_END, e))

  thread = threading.Thread(target=produce, daemon=True, name='vit_jax-prefetch')
  thread.start()
  try:
    while True:
      item, error = items.get()
      if item is _END:
        if error is not None:
          raise error
        return
      yield item
  finally:
    stop.set()
