"""Rules over parameter names: the one dialect of sharding, weight decay, lr multipliers and freezing.

A name is the '/'-joined path of a leaf in a parameter (or train-state) tree,
exactly the key of the released checkpoints:
`Transformer/encoderblock_3/MlpBlock_3/Dense_0/kernel`. A pattern is a Python
regular expression that matches a name when it matches the whole name, or a
whole trailing part of it that starts after a '/':

    'MlpBlock_3/Dense_0/kernel'   that kernel in every block (and in the
                                  optimizer state that mirrors it)
    'bias'                        every bias
    'Transformer/.*'              everything under Transformer
    '.*'                          everything

Rules are (pattern, value) pairs and the first rule whose pattern matches a
name gives its value. A pattern that is not a regular expression, or that
matches no name of the tree it is applied to, is an error that names it:
a rule that silently does nothing is a bug in a config.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Iterable, Mapping, Optional, Sequence

import jax

_EXAMPLES = 3  # how many names an error message shows


def path_name(path: Iterable[Any]) -> str:
  """'/'-joined name of a pytree key path."""
  parts = []
  for k in path:
    if isinstance(k, jax.tree_util.DictKey):
      parts.append(str(k.key))
    elif isinstance(k, jax.tree_util.GetAttrKey):
      parts.append(str(k.name))
    elif isinstance(k, jax.tree_util.SequenceKey):
      parts.append(str(k.idx))
    else:
      parts.append(str(k).strip('.[]\''))
  return '/'.join(parts)


def named_leaves(tree: Any) -> list[tuple[str, Any]]:
  """[(name, leaf)] for every leaf of `tree`, in tree order."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return [(path_name(p), x) for p, x in flat]


@functools.lru_cache(maxsize=None)
def compile_pattern(pattern: str) -> re.Pattern:
  """The compiled form of a rule pattern (whole name or '/'-bounded suffix)."""
  try:
    return re.compile(f'(?:^|.*/)(?:{pattern})')
  except re.error as e:
    raise ValueError(f'rule pattern {pattern!r} is not a regular expression '
                     f'({e}); fix it in the config.') from None


def matches(pattern: str, name: str) -> bool:
  """Whether `pattern` matches `name` in the rules' dialect."""
  return compile_pattern(pattern).fullmatch(name) is not None


class Rules:
  """Ordered (pattern, value) rules; the first match wins, else `default`.

  `what` names the rules in error messages (e.g. 'optim.lr_mults').
  """

  def __init__(self, rules: Sequence[Sequence[Any]], *, what: str,
               default: Any = None):
    self.what = what
    self.default = default
    self.rules = []
    for rule in rules:
      if isinstance(rule, str) or len(rule) != 2:
        raise ValueError(f'{what}: each rule is a (pattern, value) pair, got '
                         f'{rule!r}.')
      pattern, value = rule
      compile_pattern(str(pattern))
      self.rules.append((str(pattern), value))

  def index(self, name: str) -> Optional[int]:
    """Position of the first rule that matches `name`, or None."""
    for i, (pattern, _) in enumerate(self.rules):
      if matches(pattern, name):
        return i
    return None

  def value(self, name: str) -> Any:
    i = self.index(name)
    return self.default if i is None else self.rules[i][1]

  def check_used(self, names: Sequence[str]) -> None:
    """Raises when a pattern matches none of `names` (it would do nothing)."""
    for pattern, _ in self.rules:
      if not any(matches(pattern, n) for n in names):
        shown = ', '.join(list(names)[:_EXAMPLES])
        raise ValueError(
            f'{self.what}: pattern {pattern!r} matches no parameter name '
            f'(names look like {shown}); correct or remove it.')

  def apply(self, tree: Any, *, check: bool = True) -> Any:
    """A tree of the same structure holding each leaf's value."""
    if check:
      self.check_used([n for n, _ in named_leaves(tree)])
    return jax.tree_util.tree_map_with_path(
        lambda path, _: self.value(path_name(path)), tree)


def describe_differences(have: Mapping[str, tuple], want: Mapping[str, tuple],
                         *, have_name: str = 'checkpoint',
                         want_name: str = 'model', limit: int = 5
                         ) -> Optional[str]:
  """How two {name: shape} listings differ, for a one-line error, or None.

  '2 missing keys (a, b); 1 unexpected keys (c); 1 shape mismatches
  (d: checkpoint (3,) vs model (4,))': missing are in `want` only,
  unexpected in `have` only; at most `limit` names shown of each kind.
  """
  def listing(kind: str, items: Sequence[str]) -> str:
    more = (f', ... ({len(items) - limit} more)' if len(items) > limit
            else '')
    return f'{len(items)} {kind} ({", ".join(items[:limit])}{more})'
  missing = sorted(set(want) - set(have))
  unexpected = sorted(set(have) - set(want))
  mismatched = sorted(
      f'{k}: {have_name} {tuple(have[k])} vs {want_name} {tuple(want[k])}'
      for k in set(want) & set(have) if tuple(have[k]) != tuple(want[k]))
  parts = [listing(kind, items) for kind, items in (
      ('missing keys', missing), ('unexpected keys', unexpected),
      ('shape mismatches', mismatched)) if items]
  return '; '.join(parts) or None
