"""One direction of imports between fastrnn's modules (issue 12, "Shape of the code").

Every module of the installed fastrnn package is parsed with ``ast``; every import in it (at module
level, inside functions and classes, relative or absolute, and ``importlib.import_module`` with a
literal name) is an edge to the fastrnn module it names. The graph must have no cycle: the layers
described in README "Design" only ever import downward, and a back-reference (say model.py
importing the generation façade, or a generation module importing fastrnn.model or the package
root) makes this test fail with the cycle's path, each step with the file and line of its import.

What counts as an edge (the convention of grimp / import-linter):
- ``import a.b.c`` and ``from a.b import c`` where a.b.c is a module: an edge to a.b.c only.
  Python runs the parent packages' ``__init__`` first, but that is not a dependency of the
  importing module: a package ``__init__`` that re-exports its submodules is a façade above them.
  (It does run, though: when model.py imports fastrnn.generate.decode, fastrnn/generate/__init__.py
  runs, so what the façade imports at module level must not import fastrnn.model back at module
  level; ``import fastrnn``, which every test does, fails at once if it does.)
- ``from a.b import name`` where name is not a module: an edge to a.b (its ``__init__``).
- An import inside ``if TYPE_CHECKING:`` is an edge like any other (there is none today).
"""
from __future__ import annotations

import ast
import os
import re

import pytest

import fastrnn

PACKAGE_DIR = os.path.dirname(os.path.abspath(fastrnn.__file__))

# Cycles allowed until their owners fold them: each entry is the exact set of modules of one
# strongly connected component. None today (formats.torch and formats.torch_spec called each other
# until recurrent_layers_from_params moved into torch_spec).
KNOWN_CYCLES = []


def module_files(package_dir, package_name):
    """{dotted module name: (path, package its relative imports start from, path shown in messages)}"""
    mods = {}
    root = os.path.dirname(package_dir)
    for d, dirs, files in os.walk(package_dir):
        dirs[:] = sorted(x for x in dirs if not x.startswith((".", "__pycache__")))
        for f in sorted(files):
            if not f.endswith(".py"):
                continue
            path = os.path.join(d, f)
            parts = os.path.relpath(path, root)[:-3].split(os.sep)
            if parts[0] != package_name:
                continue
            if parts[-1] == "__init__":
                name = ".".join(parts[:-1])
                pkg = name
            else:
                name = ".".join(parts)
                pkg = ".".join(parts[:-1])
            mods[name] = (path, pkg, os.path.relpath(path, root).replace(os.sep, "/"))
    return mods


def _resolve(name, mods):
    """The longest prefix of ``name`` that is a module of the package, or None. A name below a
    subpackage that has no such .py file (a compiled extension: fastrnn.kernels._cyint8, where the
    source tree keeps kernels/ outside fastrnn/) is that subpackage, never the package root."""
    root = name.partition(".")[0]
    while name:
        if name in mods:
            return name
        name = name.rpartition(".")[0]
        if name == root:
            return None
    return None


def import_edges(mods, package_name):
    """{module: {imported module: first line number}}"""
    edges = {}
    for name, (path, pkg, _) in mods.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        out = {}

        def add(target, line):
            target = _resolve(target, mods)
            if target is not None and target != name:
                out.setdefault(target, line)

        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    add(alias.name, node.lineno)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")
                    if node.level > 1:
                        base = base[:-(node.level - 1)]
                    base = ".".join(base + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                if not (base == package_name or base.startswith(package_name + ".")):
                    continue
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    add(sub if sub in mods else base, node.lineno)
            elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
                  and isinstance(node.args[0].value, str)
                  and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                       or (isinstance(node.func, ast.Name) and node.func.id == "import_module"))):
                add(node.args[0].value, node.lineno)
        edges[name] = out
    return edges


def cycles(edges):
    """The strongly connected components with more than one module (Tarjan), each as a sorted list."""
    index, low, on_stack, stack, comps = {}, {}, set(), [], []
    counter = [0]

    def visit(v):  # iterative Tarjan: the graph is small, but keep recursion out of it
        work = [(v, iter(sorted(edges.get(v, ()))))]
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        while work:
            node, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                    break
                if w in on_stack:
                    low[node] = min(low[node], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == node:
                            break
                    if len(comp) > 1:
                        comps.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return comps


def cycle_path(edges, comp, mods):
    """One concrete cycle inside a component, as 'a (a.py:12) -> b (b.py:3) -> a'."""
    members = set(comp)
    start = comp[0]
    # breadth-first from start back to start, inside the component
    prev = {}
    frontier = [start]
    seen = set()
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(edges[v]):
                if w not in members:
                    continue
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    path.reverse()
                    path.append(start)
                    steps = []
                    for a, b in zip(path, path[1:]):
                        steps.append(f"{a} ({mods[a][2]}:{edges[a][b]})")
                    return " -> ".join(steps + [start])
                if w not in seen:
                    seen.add(w)
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return " <-> ".join(comp)  # pragma: no cover - a component always has a cycle through each node


def find_cycles(package_dir, package_name="fastrnn", allowed=()):
    mods = module_files(package_dir, package_name)
    edges = import_edges(mods, package_name)
    return [cycle_path(edges, c, mods) for c in cycles(edges) if set(c) not in [set(a) for a in allowed]], mods


SOURCE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fastrnn")


@pytest.mark.parametrize("where", ["installed", "source"])
def test_fastrnn_modules_import_in_one_direction(where):
    found, mods = find_cycles(PACKAGE_DIR if where == "installed" else SOURCE_DIR, allowed=KNOWN_CYCLES)
    assert len(mods) > 40  # the whole package was read (layers, formats, generate, classify, ...)
    assert not found, "import cycles between fastrnn modules:\n" + "\n".join(found)


def test_features_never_import_model_formats_or_the_top():
    """The layers of README "Design": generation, classification and quantization (engines and the
    mixins Model inherits) import neither Model, nor the file formats, nor the top layer."""
    mods = module_files(PACKAGE_DIR, "fastrnn")
    edges = import_edges(mods, "fastrnn")
    engines = [m for m in mods if m.startswith(("fastrnn.generate.", "fastrnn.classify."))
               and m not in ("fastrnn.generate.cli", "fastrnn.classify.cli")] + ["fastrnn.quantize"]
    assert "fastrnn.generate.decode" in engines and "fastrnn.classify.classifier" in engines
    above = ("fastrnn", "fastrnn.model", "fastrnn.bundled", "fastrnn.cli", "fastrnn.dask", "fastrnn.generate",
             "fastrnn.classify", "fastrnn.generate.cli", "fastrnn.classify.cli")
    bad = {m: sorted(t for t in edges[m] if t in above or t.startswith(("fastrnn.formats", "fastrnn.serve")))
           for m in engines}
    assert not {m: t for m, t in bad.items() if t}
    # and Model imports the features from below: the mixins, not the façades
    assert {"fastrnn.generate.decode", "fastrnn.classify.classifier", "fastrnn.quantize"} <= set(edges["fastrnn.model"])


@pytest.mark.parametrize("package", ["fastrnn.generate", "fastrnn.classify", "fastrnn.formats.keras",
                                     "fastrnn.formats.onnx", "fastrnn.cexport", "fastrnn.serve"])
def test_package_modules_import_only_those_listed_before_them(package):
    """The package docstring lists its modules by layer: each imports only modules listed above it
    (in fastrnn.formats.onnx: the rule families never import the Translator core, translate.py,
    nor a family listed after them)."""
    import importlib

    doc = importlib.import_module(package).__doc__
    order = [f"{package}.{m}" for m in re.findall(r"^- (\w+)\.py ", doc, re.M)]
    mods = module_files(PACKAGE_DIR, "fastrnn")
    inside = sorted(m for m in mods if m.startswith(package + "."))
    assert sorted(order) == inside, "the docstring lists every module of the package"
    edges = import_edges(mods, "fastrnn")
    upward = [(m, t) for i, m in enumerate(order) for t in edges[m] if t in order[i:]]
    assert not upward, f"imports of modules listed later in {package}'s docstring: {upward}"
    assert package not in {t for m in order for t in edges[m]}, f"a module of {package} imports its __init__"


def test_c_export_sits_above_model_and_below_the_top():
    """fastrnn.cexport (issue 29) reads a Model and the plans of generation and classification: it
    imports neither the file formats nor the top layer (its cli does, to load files), and nothing
    below it imports it."""
    mods = module_files(PACKAGE_DIR, "fastrnn")
    edges = import_edges(mods, "fastrnn")
    inside = [m for m in mods if m.startswith("fastrnn.cexport")]
    assert {"fastrnn.cexport", "fastrnn.cexport.writer", "fastrnn.cexport.chain", "fastrnn.cexport.cli"} <= set(inside)
    top = ("fastrnn", "fastrnn.cli", "fastrnn.bundled", "fastrnn.dask", "fastrnn.generate.cli", "fastrnn.classify.cli")
    bad = {m: sorted(t for t in edges[m] if t in top or t.startswith("fastrnn.formats"))
           for m in inside if m != "fastrnn.cexport.cli"}
    assert not {m: t for m, t in bad.items() if t}
    users = sorted(m for m in mods if not m.startswith("fastrnn.cexport") and any(
        t.startswith("fastrnn.cexport") for t in edges[m]))
    assert users == ["fastrnn"], users  # the façade's export_c (fastrnn.cli names the cli module in FEATURE_MODULES)


def test_the_server_sits_at_the_top():
    """fastrnn.serve (issue 28) is a top layer beside the command lines: only fastrnn/cli.py imports
    it (to add ``fastrnn serve``), and within fastrnn it imports the layers below it (the model,
    generation, classification, the bundled models, the package root for ``load``), never the
    importers directly. Starlette and uvicorn are imported by the serve modules only, and at
    module level only by app.py, which cli.py imports when the command runs."""
    mods = module_files(PACKAGE_DIR, "fastrnn")
    edges = import_edges(mods, "fastrnn")
    serve = {m for m in mods if m == "fastrnn.serve" or m.startswith("fastrnn.serve.")}
    assert {"fastrnn.serve", "fastrnn.serve.app", "fastrnn.serve.cli", "fastrnn.serve.workers"} <= serve
    importers = sorted(m for m in mods if m not in serve and serve & set(edges[m]))
    assert importers == []  # fastrnn/cli.py imports it by name, from FEATURE_MODULES, to build the parser
    import fastrnn.cli

    assert "fastrnn.serve" in fastrnn.cli.FEATURE_MODULES
    below = [t for m in serve for t in edges[m] if t not in serve]
    assert below and not [t for t in below if t.startswith("fastrnn.formats") or t == "fastrnn.cli"]
    # the third-party stack: where each module imports it, and at which level
    stack_at_top = {}
    for m in serve:
        with open(mods[m][0], encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for node in tree.body:  # module level only
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] in ("starlette", "uvicorn") for n in names):
                stack_at_top.setdefault(m, node.lineno)
    assert set(stack_at_top) == {"fastrnn.serve.app"}, stack_at_top


def test_a_back_reference_is_caught(tmp_path):
    """The checker itself: a function-level absolute import and a relative one closing a cycle
    through a subpackage are found, with the path; a façade re-exporting its submodules and a
    compiled module named by string are not cycles."""
    pkg = tmp_path / "toy"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .model import Model\n")
    (pkg / "model.py").write_text("from .sub.engine import Mixin\n\nclass Model(Mixin):\n    pass\n")
    (pkg / "sub" / "__init__.py").write_text("from .engine import Mixin\nfrom .top import helper\n")
    (pkg / "sub" / "engine.py").write_text("import importlib\n\n\nclass Mixin:\n    def run(self):\n"
                                           "        return importlib.import_module('toy.native._compiled')\n")
    (pkg / "sub" / "top.py").write_text("def helper():\n    from .. import Model\n    return Model\n")
    assert find_cycles(str(pkg), "toy")[0] == []
    (pkg / "sub" / "engine.py").write_text("class Mixin:\n    def run(self):\n        from toy.model import Model\n"
                                           "        return Model\n")
    found = find_cycles(str(pkg), "toy")[0]
    assert found == ["toy.model (toy/model.py:1) -> toy.sub.engine (toy/sub/engine.py:3) -> toy.model"]
    (pkg / "sub" / "engine.py").write_text("from .. import Model\n")  # the package root: the same cycle, longer
    found = find_cycles(str(pkg), "toy")[0]
    assert found == ["toy (toy/__init__.py:1) -> toy.model (toy/model.py:1) -> toy.sub.engine "
                     "(toy/sub/engine.py:1) -> toy"]
    assert find_cycles(str(pkg), "toy", allowed=[{"toy", "toy.model", "toy.sub.engine"}])[0] == []


def test_every_subpackage_is_installed():
    """pyproject.toml lists the packages by hand: a new subpackage must be listed to ship."""
    assert os.path.isdir(SOURCE_DIR)  # the tests run from a checkout, against the installed package
    wanted = {os.path.relpath(d, SOURCE_DIR) for d, _, files in os.walk(SOURCE_DIR) if "__init__.py" in files}
    installed = {os.path.relpath(d, PACKAGE_DIR) for d, _, files in os.walk(PACKAGE_DIR) if "__init__.py" in files}
    assert wanted <= installed, f"not installed: {sorted(wanted - installed)} (list them in pyproject.toml)"
