"""The package's imports point one way: no module imports, at any level, a module that imports it back; the training path never reaches the planner."""

import ast
import json
import os
import subprocess
import sys

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


def _within(module: str, package: str) -> bool:
  return module == package or module.startswith(package + '.')


def _reachable_from_package(graph, package):
  """Modules reached from any module of `package` (its __init__ and the rest)."""
  seen = set()
  for start in (m for m in graph if _within(m, package)):
    seen |= _reachable(graph, start)
  return seen


# The planner (core-days, fit, paper, reports) sits above the accounting the
# training loop uses (vit_jax.budget): nothing on the training path, and
# nothing in budget, reaches it.
@pytest.mark.parametrize('layer', ['vit_jax.budget', 'vit_jax.train',
                                   'vit_jax.assembly', 'vit_jax.transfer',
                                   'vit_jax.train_step',
                                   'vit_jax.dataset_sizes'])
def test_the_training_path_never_reaches_the_planner(layer):
  reach = _reachable_from_package(import_graph(), layer)
  found = sorted(m for m in reach if _within(m, 'vit_jax.planner'))
  assert not found, f'{layer} reaches {", ".join(found)}'


def test_main_reaches_the_planner_only_through_the_preflight():
  """`--compile_only` (vit_jax.preflight, imported when asked for) compiles
  for a TPU slice with the planner's tpu and collectives; training does not."""
  graph = {m: t - {'vit_jax.preflight'} for m, t in import_graph().items()}
  found = sorted(m for m in _reachable(graph, 'vit_jax.main')
                 if _within(m, 'vit_jax.planner'))
  assert not found, f'vit_jax.main reaches {", ".join(found)}'


def test_dataset_sizes_import_nothing_of_the_package():
  assert not import_graph()['vit_jax.dataset_sizes']


def _loaded_after(code: str) -> list[str]:
  """sys.modules of a fresh interpreter after `code` (JAX on CPU)."""
  probe = code + '\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n'
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, '-c', probe], capture_output=True,
                       text=True, env=env, cwd=ROOT, timeout=300, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_the_training_path_loads_no_planner_module():
  loaded = _loaded_after('import vit_jax.train, vit_jax.main, vit_jax.transfer, '
                         'vit_jax.assembly')
  assert 'vit_jax.train' in loaded and 'vit_jax.budget' in loaded
  found = [m for m in loaded if _within(m, 'vit_jax.planner')]
  assert not found, f'importing the training path loaded {found}'


def test_dataset_sizes_load_neither_jax_nor_tensorflow():
  """configs/pretrain.py turns epochs into steps with them."""
  loaded = _loaded_after('from vit_jax.dataset_sizes import DATASETS, '
                         'dataset_size\nassert dataset_size("i21k") == '
                         'DATASETS["imagenet21k"]')
  found = [m for m in loaded if m.split('.')[0] in ('jax', 'jaxlib', 'flax',
                                                    'tensorflow', 'numpy')]
  assert not found, f'importing the dataset sizes loaded {found[:5]}'
