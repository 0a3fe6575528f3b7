"""The package's layout: the import graph of every module (module-level and function-level
imports, read with ``ast``) has no cycle apart from the ``Layer.torch()``/``Layer.jax()``
conveniences, and the core imports no tooling, no zoo and no framework; the wheel installs
the one top-level package ``declarative``, with the zoo inside it as ``declarative.problems``.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = {f"declarative.{m}" for m in
        ("compile", "cones", "solve", "refine", "derivative", "arrow", "equilibrate", "layer",
         "errors", "parallel", "allocator", "tuning", "geometric", "promise", "polyhedral")}
CORE_PACKAGES = ("declarative.backends",)   # every module under these is core too
ADAPTERS = {"declarative.torch", "declarative.jax"}
# Layer.torch() and Layer.jax() import their adapter inside the method: the one allowed cycle.
ALLOWED = {("declarative.layer", a) for a in ADAPTERS}
# Third-party packages the core must not import: frameworks and tooling.
NOT_IN_CORE = {"torch", "jax", "jaxlib", "diffcp", "cvxpylayers", "matplotlib", "tqdm"}


def package_dirs() -> dict[str, Path]:
    """Each package name and its folder, as pyproject.toml's package-dir maps them."""
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = config.get("package-dir", {})
    out = {}
    for pkg in config["packages"]:
        parent = next((p for p in sorted(mapping, key=len, reverse=True)
                       if pkg == p or pkg.startswith(p + ".")), None)
        if parent is None:
            out[pkg] = ROOT / pkg.replace(".", "/")
        else:
            rest = pkg[len(parent):].lstrip(".").replace(".", "/")
            out[pkg] = ROOT / mapping[parent] / rest
    return out


def modules(packages: dict[str, Path]) -> dict[str, Path]:
    """Every module of the given packages: dotted name -> file."""
    out = {}
    for pkg, folder in packages.items():
        for f in sorted(folder.glob("*.py")):
            out[pkg if f.name == "__init__.py" else f"{pkg}.{f.stem}"] = f
    return out


def imports(name: str, path: Path, known: set[str]) -> list[tuple[str, bool]]:
    """(imported module, inside a function?) for every import statement of a module.

    ``from X import Y`` counts as importing ``X.Y`` when that is a module, else ``X``;
    relative imports are resolved against the module's package; ``importlib.import_module``
    and ``__import__`` of a literal name count too.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend((a.name, in_function) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for a in node.names:
                sub = f"{module}.{a.name}"
                found.append((sub if sub in known else module, in_function))
        elif (isinstance(node, ast.Call) and _dynamic_import(node.func) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append((node.args[0].value, in_function))
        inner = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef
                                          | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, False)
    return found


def _dynamic_import(func: ast.expr) -> bool:
    """``importlib.import_module``, ``import_module`` or ``__import__``."""
    if isinstance(func, ast.Attribute):
        return func.attr == "import_module"
    return isinstance(func, ast.Name) and func.id in ("import_module", "__import__")


def internal(target: str, known: set[str]) -> str | None:
    """The package module that ``target`` names (its nearest known prefix), if any."""
    while target and target not in known:
        target = target.rpartition(".")[0]
    return target or None


def graph(mods: dict[str, Path]) -> tuple[dict[str, set[str]], dict[str, set[str]],
                                           set[tuple[str, str]]]:
    """(edges between package modules, third-party roots per module, function-level edges)."""
    known = set(mods)
    edges: dict[str, set[str]] = {m: set() for m in mods}
    external: dict[str, set[str]] = {m: set() for m in mods}
    lazy: set[tuple[str, str]] = set()
    for name, path in mods.items():
        for target, in_function in imports(name, path, known):
            mod = internal(target, known)
            if mod is None:
                external[name].add(target.split(".")[0])
            elif mod != name:
                edges[name].add(mod)
                if in_function:
                    lazy.add((name, mod))
    return edges, external, lazy


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph as [a, b, ..., a], or None."""
    state: dict[str, int] = {}   # 1: on the current path, 2: done
    path: list[str] = []

    def dfs(u: str) -> list[str] | None:
        state[u] = 1
        path.append(u)
        for v in sorted(edges.get(u, ())):
            if state.get(v) == 1:
                return path[path.index(v):] + [v]
            if v not in state and (c := dfs(v)) is not None:
                return c
        path.pop()
        state[u] = 2
        return None

    for u in sorted(edges):
        if u not in state and (c := dfs(u)) is not None:
            return c
    return None


def is_core(name: str) -> bool:
    return name in CORE or any(name == p or name.startswith(p + ".") for p in CORE_PACKAGES)


def core_violations(edges: dict[str, set[str]], external: dict[str, set[str]],
                    allowed: set[tuple[str, str]]) -> list[str]:
    """Each import of a core module that reaches outside the core (package modules other
    than the core, or a framework or tooling package)."""
    out = []
    for name in sorted(edges):
        if not is_core(name):
            continue
        out += [f"{name} imports {t}" for t in sorted(edges[name])
                if not is_core(t) and (name, t) not in allowed]
        out += [f"{name} imports {t}" for t in sorted(external[name] & NOT_IN_CORE)]
    return out


# -- the package -----------------------------------------------------------------------------
def test_every_package_folder_is_listed():
    """A folder with an __init__.py that pyproject.toml does not list would be left out of
    the wheel."""
    listed = {p.resolve() for p in package_dirs().values()}
    on_disk = {f.parent.resolve() for top in ("declarative", "problems")
               for f in (ROOT / top).rglob("__init__.py")}
    missing = sorted(str(p.relative_to(ROOT)) for p in on_disk - listed)
    assert not missing, f"add {missing} to [tool.setuptools] packages in pyproject.toml"


def test_import_graph_is_acyclic_apart_from_the_adapter_conveniences():
    mods = modules(package_dirs())
    assert set(CORE) <= set(mods) and "declarative.tools.cli" in mods
    assert "declarative.problems" in mods and not any(m.startswith("problems") for m in mods)
    edges, _, lazy = graph(mods)
    # the exception is exactly that: imports inside Layer's methods, nothing at module level
    for edge in ALLOWED & {(u, v) for u in edges for v in edges[u]}:
        assert edge in lazy, f"{edge[0]} imports {edge[1]} at module level"
    pruned = {u: {v for v in vs if (u, v) not in ALLOWED} for u, vs in edges.items()}
    assert find_cycle(pruned) is None, " -> ".join(find_cycle(pruned) or [])


def test_core_imports_no_tooling_zoo_or_framework():
    mods = modules(package_dirs())
    edges, external, _ = graph(mods)
    assert core_violations(edges, external, ALLOWED) == []
    # and the adapters import the core, never the reverse
    for a in ADAPTERS:
        assert edges[a] and all(is_core(t) for t in edges[a]), (a, edges[a])


def test_the_checks_can_fail(tmp_path):
    """The same analysis on a small package that breaks both rules."""
    pkg = tmp_path / "declarative"
    (pkg / "tools").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "tools" / "__init__.py").write_text("")
    (pkg / "layer.py").write_text("import numpy as np\n")
    (pkg / "solve.py").write_text("def f():\n    import torch\n    from .tools import cli\n")
    (pkg / "tools" / "cli.py").write_text(
        "import importlib\nimportlib.import_module('declarative.tools.report')\n")
    (pkg / "tools" / "report.py").write_text(
        "def g():\n    from ..tools.cli import main\n")
    mods = modules({"declarative": pkg, "declarative.tools": pkg / "tools"})
    edges, external, lazy = graph(mods)
    assert edges["declarative.tools.report"] == {"declarative.tools.cli"}
    assert edges["declarative.tools.cli"] == {"declarative.tools.report"}
    assert ("declarative.tools.report", "declarative.tools.cli") in lazy
    cycle = find_cycle(edges)
    assert cycle is not None and set(cycle) == {"declarative.tools.cli",
                                                "declarative.tools.report"}
    assert core_violations(edges, external, set()) == [
        "declarative.solve imports declarative.tools.cli", "declarative.solve imports torch"]


# -- the wheel -------------------------------------------------------------------------------
def test_wheel_installs_declarative_alone(tmp_path):
    """Build the wheel from a copy of the sources: one top-level package, the zoo inside it."""
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("declarative", "problems"):
        shutil.copytree(ROOT / name, src / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path / "wheel"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (whl,) = out.glob("declarative-*.whl")
    names = zipfile.ZipFile(whl).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"declarative"}, tops
    zoo = {f"declarative/problems/{f.name}" for f in (ROOT / "problems").glob("*.py")}
    assert zoo <= set(names), sorted(zoo - set(names))
    assert "declarative/tools/cli.py" in names
    assert "declarative/py.typed" in names  # PEP 561: the annotations are shipped
    import declarative

    (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    version = zipfile.ZipFile(whl).read(meta).decode().split("\nVersion: ")[1].split("\n")[0]
    assert version == declarative.__version__  # the one version source
    (ep,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "declarative = declarative.tools.cli:main" in zipfile.ZipFile(whl).read(ep).decode()
