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
  name, args, kwargs = parse_call(text)
  if name not in _REGISTRY:
    close = difflib.get_close_matches(name, _REGISTRY, n=3)
    hint = f' Did you mean {", ".join(close)}?' if close else ''
    raise ValueError(f'Unknown preprocessing op {name!r} in {text!r}.{hint} '
                     f'Known ops: {", ".join(sorted(_REGISTRY))}.')
  try:
    op = _REGISTRY[name](*args, **kwargs)
  except TypeError as e:
    raise ValueError(f'Bad arguments for preprocessing op {text!r}: {e}.') from None
  return dataclasses.replace(op, spec=text)


def registered_ops() -> list[str]:
  """Names of the registered ops (vit_jax.data registers the built-in ones)."""
  return sorted(_REGISTRY)
