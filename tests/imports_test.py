"""No import circles among nst_jax's modules, counting imports inside functions too.

A circle closed by an import inside a function works at run time but hides a layering mistake (a lower module
reaching up); this test reads every module's imports with `ast`, wherever they stand, and fails on any cycle.
"""

from __future__ import annotations

import ast
import os

import pytest

PACKAGE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "nst_jax")


def _module_names() -> dict[str, str]:
  """Dotted module name -> file path, for every module of the package."""
  found = {}
  root = os.path.dirname(PACKAGE_DIR)
  for folder, _, files in os.walk(PACKAGE_DIR):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        dotted = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
        found[dotted.removesuffix(".__init__")] = path
  return found


def import_graph(modules: dict[str, str]) -> dict[str, set[str]]:
  """Module -> the package modules it imports anywhere in its body (`import a.b`, `from a import b`)."""
  graph = {}
  for name, path in modules.items():
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read(), path)
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    edges = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        edges.update(alias.name for alias in node.names if alias.name in modules)
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # Relative import.
          parts = package.split(".")[:len(package.split(".")) - node.level + 1]
          base = ".".join(parts + ([base] if base else []))
        for alias in node.names:
          if f"{base}.{alias.name}" in modules:  # `from pkg import module`
            edges.add(f"{base}.{alias.name}")
          elif base in modules:  # `from module import name`
            edges.add(base)
    edges.discard(name)
    # Importing a package's module runs the package's __init__ too, but that is no edge of the importer's own
    # design; only explicit imports count.
    graph[name] = edges
  return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components with more than one module (Tarjan), each sorted."""
  index, low, stack, on_stack, components = {}, {}, [], set(), []

  def visit(node):
    index[node] = low[node] = len(index)
    stack.append(node)
    on_stack.add(node)
    for other in graph.get(node, ()):
      if other not in index:
        visit(other)
        low[node] = min(low[node], low[other])
      elif other in on_stack:
        low[node] = min(low[node], index[other])
    if low[node] == index[node]:
      component = []
      while True:
        member = stack.pop()
        on_stack.discard(member)
        component.append(member)
        if member == node:
          break
      if len(component) > 1:
        components.append(sorted(component))

  for node in sorted(graph):
    if node not in index:
      visit(node)
  return components


def test_the_checker_finds_a_circle_through_an_import_inside_a_function():
  graph = {"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}, "p.d": {"p.a"}}
  assert find_cycles(graph) == [["p.a", "p.b", "p.c"]]
  assert find_cycles({"p.a": {"p.b"}, "p.b": set()}) == []


def test_the_graph_reads_imports_inside_functions(tmp_path, monkeypatch):
  package = tmp_path / "pkg"
  package.mkdir()
  (package / "__init__.py").write_text("")
  (package / "a.py").write_text("from pkg import b\n")
  (package / "b.py").write_text("def f():\n  from pkg.a import thing\n  return thing\n")
  modules = {"pkg": str(package / "__init__.py"), "pkg.a": str(package / "a.py"), "pkg.b": str(package / "b.py")}
  graph = import_graph(modules)
  assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.a"}
  assert find_cycles(graph) == [["pkg.a", "pkg.b"]]


def test_nst_jax_has_no_import_circles():
  modules = _module_names()
  assert "nst_jax.engine" in modules and len(modules) > 20
  cycles = find_cycles(import_graph(modules))
  if cycles:
    pytest.fail("import circles: " + "; ".join(" <-> ".join(c) for c in cycles))
