"""The code's layout holds: no import cycle between zoo's modules, no module over 450 lines, and no module (or
benchmark) using another module's private names."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
ZOO = ROOT / 'zoo'


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _modules() -> dict[str, pathlib.Path]:
  return {_module_name(p): p for p in sorted(ZOO.rglob('*.py'))}


def _imports(name: str, path: pathlib.Path, modules) -> set[str]:
  """zoo modules that `name` imports (at any depth of the file: a lazy import is still a dependency)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      targets = [node.module] + [f'{node.module}.{a.name}' for a in node.names]
    else:
      continue
    for t in targets:
      if t in modules and t != name:
        found.add(t)
  return found


def _package_parents(name: str) -> set[str]:
  parts = name.split('.')
  return {'.'.join(parts[:i]) for i in range(1, len(parts))}


def test_no_import_cycles():
  modules = _modules()
  graph = {n: _imports(n, p, modules) - _package_parents(n) for n, p in modules.items()}
  # a package's __init__ re-exporting its own submodules is not a cycle through them
  graph = {n: {d for d in deps if not (d.startswith(n + '.') and n in modules)} for n, deps in graph.items()}
  state: dict[str, int] = {}
  stack: list[str] = []

  def visit(n):
    state[n] = 1
    stack.append(n)
    for d in sorted(graph.get(n, ())):
      if state.get(d) == 1:
        raise AssertionError('import cycle: ' + ' -> '.join(stack[stack.index(d):] + [d]))
      if d not in state:
        visit(d)
    stack.pop()
    state[n] = 2

  for n in sorted(graph):
    if n not in state:
      visit(n)
  assert {'zoo.train.loop', 'zoo.api', 'zoo.decoding'} <= set(graph)  # the walk saw the package


def test_no_module_over_450_lines():
  sizes = {name: len(p.read_text().splitlines()) for name, p in _modules().items()}
  assert not {n: s for n, s in sizes.items() if s > 450}, sorted(sizes.items(), key=lambda x: -x[1])[:5]


def test_no_private_names_used_across_modules():
  modules = _modules()
  files = list(modules.items()) + [(p.stem, p) for p in sorted((ROOT / 'benchmarks').glob('*.py'))]
  aliases_of = {}
  offenders = []
  for name, path in files:
    tree = ast.parse(path.read_text())
    aliases_of.clear()
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith('zoo'):
        for a in node.names:
          if a.name.startswith('_') and not a.name.startswith('__'):
            offenders.append(f'{name}: from {node.module} import {a.name}')
          full = f'{node.module}.{a.name}'
          if full in modules:
            aliases_of[a.asname or a.name] = full
      elif isinstance(node, ast.Import):
        for a in node.names:
          if a.name.startswith('zoo'):
            aliases_of[a.asname or a.name.split('.')[0]] = a.name
    for node in ast.walk(tree):
      if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases_of
          and node.attr.startswith('_') and not node.attr.startswith('__')):
        offenders.append(f'{name}: {node.value.id}.{node.attr}')
  assert not offenders, offenders
