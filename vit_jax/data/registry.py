"""The preprocessing-op registry and the parser of `pp` strings.

A pipeline is written as `'decode|inception_crop(224)|flip_lr|value_range(-1,1)'`
(or as a list of such op strings). Each name maps to a factory registered with
`@register`; its arguments are Python literals (positional or `key=value`).

A factory returns an `Op` with up to three kernels:

* `tf_fn(example, seed)`: TensorFlow, on one example inside tf.data; `seed` is
  a stateless-RNG seed (int64 [2]) unique to the example's stream position.
* `np_fn(batch, keys)`: NumPy, on a batch of same-shape examples from an
  in-memory source; `keys` are uint64 per-example keys (see sampler.py).
* `batch_fn(batch, key)`: NumPy, on a whole host batch after batching (Mixup);
  such ops must come last.

An in-memory source runs in NumPy (no TensorFlow import) when every example op
has `np_fn`; otherwise it goes through tf.data like every other source.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
from typing import Any, Callable, Optional, Sequence, Union

_REGISTRY: dict[str, Callable[..., 'Op']] = {}


@dataclasses.dataclass(frozen=True)
class Op:
  """One preprocessing step; see the module docstring for the kernels."""
  name: str
  tf_fn: Optional[Callable[..., Any]] = None
  np_fn: Optional[Callable[..., Any]] = None
  batch_fn: Optional[Callable[..., Any]] = None
  spec: str = ''

  @property
  def is_batch_op(self) -> bool:
    return self.batch_fn is not None


def register(name: str):
  """Decorator: registers an op factory under `name`."""
  def wrap(factory):
    if name in _REGISTRY:
      raise ValueError(f'Preprocessing op {name!r} is registered twice.')
    _REGISTRY[name] = factory
    return factory
  return wrap


def _load_builtin_ops() -> None:
  """Imports the op modules, which register themselves (none imports TensorFlow)."""
  # pylint: disable=g-import-not-at-top,unused-import
  from vit_jax.data import label_ops, mixup, ops, randaugment


def registered_ops() -> list[str]:
  _load_builtin_ops()
  return sorted(_REGISTRY)


def _split_ops(pp: Union[str, Sequence[str]]) -> list[str]:
  if isinstance(pp, str):
    parts = pp.split('|')
  else:
    parts = [p for item in pp for p in str(item).split('|')]
  parts = [p.strip() for p in parts]
  if any(not p for p in parts):
    raise ValueError(f'Empty op in pp {pp!r}: remove the doubled or trailing "|".')
  return parts


def parse_call(text: str) -> tuple[str, tuple, dict]:
  try:
    node = ast.parse(text, mode='eval').body
  except SyntaxError as e:
    raise ValueError(f'Cannot parse preprocessing op {text!r}: {e.msg}; write '
                     "NAME or NAME(ARGS) such as 'resize(224)'.") from None
  if isinstance(node, ast.Name):
    return node.id, (), {}
  if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
    raise ValueError(f'Cannot parse preprocessing op {text!r}; write NAME or '
                     "NAME(ARGS) such as 'resize(224)'.")
  try:
    args = tuple(ast.literal_eval(a) for a in node.args)
    kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
  except ValueError:
    raise ValueError(f'Arguments of preprocessing op {text!r} must be Python '
                     'literals (numbers, strings, tuples, lists).') from None
  return node.func.id, args, kwargs


def build_op(text: str) -> Op:
  """Parses one op string and calls its factory."""
  _load_builtin_ops()
  name, args, kwargs = parse_call(text)
  if name not in _REGISTRY:
    close = difflib.get_close_matches(name, _REGISTRY, n=3)
    hint = f' Did you mean {", ".join(close)}?' if close else ''
    raise ValueError(f'Unknown preprocessing op {name!r} in {text!r}.{hint} '
                     f'Known ops: {", ".join(registered_ops())}.')
  try:
    op = _REGISTRY[name](*args, **kwargs)
  except TypeError as e:
    raise ValueError(f'Bad arguments for preprocessing op {text!r}: {e}.') from None
  return dataclasses.replace(op, spec=text)


def _fuse_decode_and_crop(texts: list[str]) -> list[str]:
  """'decode' then 'inception_crop(...)' -> 'decode_jpeg_and_inception_crop(...)'."""
  out = []
  for text in texts:
    if out and out[-1] == 'decode' and parse_call(text)[0] == 'inception_crop':
      out[-1] = 'decode_jpeg_and_inception_crop' + text[len('inception_crop'):]
    else:
      out.append(text)
  return out


def parse_pp(pp: Union[str, Sequence[str]]) -> tuple[list[Op], list[Op]]:
  """Parses `pp` into (example ops, batch ops); batch ops must come last."""
  from vit_jax.data import presets  # pylint: disable=g-import-not-at-top
  texts = _fuse_decode_and_crop(_split_ops(presets.expand(pp)))
  ops = [build_op(text) for text in texts]
  first_batch = next((i for i, op in enumerate(ops) if op.is_batch_op), len(ops))
  late = [op.spec for op in ops[first_batch:] if not op.is_batch_op]
  if late:
    raise ValueError(f'Batch op {ops[first_batch].spec!r} must come after every '
                     f'example op, but {", ".join(late)} follow it; move it to the end.')
  return ops[:first_batch], ops[first_batch:]
