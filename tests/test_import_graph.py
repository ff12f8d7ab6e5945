"""The package's imports point one way: no module imports, at any level, a module that imports it back."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = 'vit_jax'


def _module_name(path: str) -> str:
  rel = os.path.relpath(path, ROOT)[:-len('.py')].replace(os.sep, '.')
  return rel[:-len('.__init__')] if rel.endswith('.__init__') else rel


def _modules() -> dict[str, str]:
  found = {}
  for dirpath, _, files in os.walk(os.path.join(ROOT, PACKAGE)):
    for f in files:
      if f.endswith('.py'):
        path = os.path.join(dirpath, f)
        found[_module_name(path)] = path
  return found


def _resolve(name: str, modules: dict) -> str | None:
  """The longest known module that `name` names (a module or a package)."""
  while name and name not in modules:
    name = name.rpartition('.')[0]
  return name or None


def import_graph() -> dict[str, set[str]]:
  """{module: modules of this package it imports, at module or function level}.

  `from pkg import mod` counts as importing pkg.mod when that is a module.
  """
  modules = _modules()
  graph = {}
  for name, path in modules.items():
    with open(path) as f:
      tree = ast.parse(f.read(), path)
    package = name if path.endswith('__init__.py') else name.rpartition('.')[0]
    targets = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        bases = [a.name for a in node.names]
        candidates = bases
      elif isinstance(node, ast.ImportFrom):
        if node.level:
          base = package.rsplit('.', node.level - 1)[0] if node.level > 1 else package
          base = f'{base}.{node.module}' if node.module else base
        else:
          base = node.module or ''
        # `from pkg import mod` imports pkg.mod; `from mod import name`, mod.
        candidates = [f'{base}.{a.name}' if f'{base}.{a.name}' in modules
                      else base for a in node.names]
      else:
        continue
      for c in candidates:
        if c.split('.')[0] != PACKAGE:
          continue
        target = _resolve(c, modules)
        if target and target != name:
          targets.add(target)
    graph[name] = targets
  return graph


def _reachable(graph, start):
  seen, stack = set(), [start]
  while stack:
    node = stack.pop()
    for nxt in graph.get(node, ()):
      if nxt not in seen:
        seen.add(nxt)
        stack.append(nxt)
  return seen


def cycles(graph) -> list[tuple[str, str]]:
  """(a, b) pairs where a imports b and b (transitively) imports a back."""
  found = []
  for a, targets in sorted(graph.items()):
    for b in sorted(targets):
      if a in _reachable(graph, b):
        found.append((a, b))
  return found


def test_no_import_circles():
  found = cycles(import_graph())
  assert not found, 'import circles: ' + '; '.join(f'{a} -> {b} -> ... -> {a}'
                                                  for a, b in found)


def test_the_checker_finds_a_circle():
  graph = {'vit_jax.a': {'vit_jax.b'}, 'vit_jax.b': {'vit_jax.c'},
           'vit_jax.c': {'vit_jax.a'}, 'vit_jax.d': {'vit_jax.a'}}
  assert cycles(graph) == [('vit_jax.a', 'vit_jax.b'), ('vit_jax.b', 'vit_jax.c'),
                           ('vit_jax.c', 'vit_jax.a')]


@pytest.mark.parametrize('layer,forbidden', [
    ('vit_jax.train', 'vit_jax.transfer'),
    ('vit_jax.evaluate', 'vit_jax.train'),
    ('vit_jax.models', 'vit_jax.train'),
    ('vit_jax.data', 'vit_jax.evaluate'),
])
def test_layers_point_one_way(layer, forbidden):
  graph = import_graph()
  reach = _reachable(graph, layer)
  assert not any(m == forbidden or m.startswith(forbidden + '.') for m in reach), (
      f'{layer} reaches {forbidden}')
