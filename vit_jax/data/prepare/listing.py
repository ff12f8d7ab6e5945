"""Lists and reads the source files: a tree of class folders or per-class tar archives.

Two layouts are accepted, local or on any filesystem `tf.io.gfile` reads
(gs://, ...):

  ROOT/<class>/**/<file>     one folder per class (files at any depth)
  ROOT/<class>.tar           one tar archive per class, as the ImageNet-21k
                             release ships them (`n01440764.tar`, ...)

Classes are the folder (or archive) names in sorted order, so label i is the
i-th name in that order wherever and however often the listing runs. Every
file is one `Entry`, keyed `<class>/<path in the class>`: a file name that
occurs in several classes gives distinct keys. Tar members are read by their
byte range, so any member is read without scanning its archive again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import posixpath
import tarfile
from vit_jax.data.tf_runtime import tf as _tf

TAR_SUFFIX = '.tar'


@dataclasses.dataclass(frozen=True)
class Entry:
  """One source file: its class, unique key and where its bytes are."""

  label: int
  key: str  # '<class>/<relative path>', unique in the listing.
  path: str  # The file, or the tar archive that holds it.
  offset: int = -1  # Byte offset of a tar member's data (-1: a plain file).
  size: int = -1  # Bytes of a tar member (-1: a plain file, size not listed).


@dataclasses.dataclass(frozen=True)
class Listing:
  """The classes (label order) and every file of a source."""

  root: str
  layout: str  # 'folders' or 'tars'.
  class_names: tuple[str, ...]
  entries: tuple[Entry, ...]

  def fingerprint(self) -> str:
    """A hash of classes and keys (and tar byte ranges): equal listings, equal hash."""
    h = hashlib.sha256()
    for name in self.class_names:
      h.update(name.encode() + b'\0')
    for e in self.entries:
      h.update(f'{e.label}\0{e.key}\0{e.offset}\0{e.size}\n'.encode())
    return h.hexdigest()


def _join(root: str, *parts: str) -> str:
  return posixpath.join(root, *parts) if '://' in root else os.path.join(root, *parts)


def detect_layout(root: str) -> tuple[str, list[str]]:
  """('folders' | 'tars', sorted class names) of ROOT, or a one-line error."""
  gfile = _tf().io.gfile
  if not gfile.isdir(root):
    raise FileNotFoundError(f'Source {root} is not a directory; pass --source=ROOT with '
                            'ROOT/<class>/*.jpg or ROOT/<class>.tar.')
  names = sorted(n.rstrip('/') for n in gfile.listdir(root))
  dirs = [n for n in names if gfile.isdir(_join(root, n))]
  tars = [n for n in names if n.endswith(TAR_SUFFIX) and n not in dirs]
  if dirs and tars:
    raise ValueError(f'Source {root} holds both class folders ({dirs[0]}, ...) and tar '
                     f'archives ({tars[0]}, ...); keep one layout in it.')
  if dirs:
    return 'folders', dirs
  if tars:
    return 'tars', [n[:-len(TAR_SUFFIX)] for n in tars]
  raise ValueError(f'Source {root} has no class folders and no <class>.tar archives; '
                   'expected ROOT/<class>/*.jpg or ROOT/<class>.tar.')


def list_class(root: str, layout: str, label: int, name: str) -> list[Entry]:
  """The entries of one class, sorted by key (the same for a folder and its tar)."""
  gfile = _tf().io.gfile
  if layout == 'folders':
    top = _join(root, name)
    entries = []
    for dirpath, _, files in gfile.walk(top):
      rel = dirpath[len(top):].strip('/' + os.sep).replace(os.sep, '/')
      for f in files:
        sub = posixpath.join(rel, f) if rel else f
        entries.append(Entry(label, f'{name}/{sub}', _join(dirpath, f)))
    return sorted(entries, key=lambda e: e.key)
  path = _join(root, name + TAR_SUFFIX)
  entries, seen = [], {}
  try:
    with gfile.GFile(path, 'rb') as f, tarfile.open(fileobj=f, mode='r:') as tar:
      for member in tar:
        if not member.isfile():
          continue
        key = f'{name}/{member.name.lstrip("./")}'
        seen[key] = seen.get(key, 0) + 1
        if seen[key] > 1:  # The same member name twice in one archive: keep both.
          key = f'{key}#{seen[key]}'
        entries.append(Entry(label, key, path, member.offset_data, member.size))
  except tarfile.TarError as e:
    raise ValueError(f'{path} is not a readable tar archive ({e}); replace it or move '
                     'it out of the source.') from None
  return sorted(entries, key=lambda e: e.key)  # Stable: '#2' after its first.


def list_source(root: str, map_fn=map) -> Listing:
  """Lists every class of ROOT (through `map_fn`, e.g. a process pool's map)."""
  layout, names = detect_layout(root)
  per_class = list(map_fn(_list_class_star, [(root, layout, i, n) for i, n in enumerate(names)]))
  entries = tuple(e for es in per_class for e in es)
  if not entries:
    raise ValueError(f'Source {root} has {len(names)} classes but no files in them.')
  return Listing(root, layout, tuple(names), entries)


def _list_class_star(args):
  return list_class(*args)


def read(entry: Entry) -> bytes:
  """The bytes of one entry (a whole file, or a tar member's byte range)."""
  gfile = _tf().io.gfile
  with gfile.GFile(entry.path, 'rb') as f:
    if entry.offset < 0:
      return f.read()
    f.seek(entry.offset)
    return f.read(entry.size)
