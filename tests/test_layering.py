"""The layering the design promises: no import cycle anywhere in the project's packages, and a
data plane (router, backends, fleet types) that loads neither the planner nor scipy."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hybridserve", "predictors", "lambda_handlers", "simulations")


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            parts = p.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            mods[name] = p
    return mods


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _imports(tree: ast.AST, module: str, is_pkg: bool) -> set[str]:
    """Every module named by an import anywhere in the file (inside functions too: a lazy
    import is still an edge), except under `if TYPE_CHECKING:`, which never runs."""
    out: set[str] = set()
    stack = [tree]
    while stack:
        node = stack.pop()
        if _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.add(name)
            out.update(f"{name}.{a.name}" for a in node.names)
        stack.extend(ast.iter_child_nodes(node))
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (a submodule stands for itself, not its parent
    package: importing `a.b.c` runs `a.b`'s __init__ first, which Python handles)."""
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        deps = set()
        for d in _imports(ast.parse(path.read_text()), name, path.name == "__init__.py"):
            while d and d not in mods:
                d = d.rpartition(".")[0]
            if d and d != name:
                deps.add(d)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on, stack, out = set(), [], []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_no_import_cycle() -> None:
    graph = import_graph()
    assert "hybridserve.router.app" in graph and "predictors.v2" in graph  # the walk found them
    assert cycles(graph) == []


def test_cycle_finder_finds_a_cycle() -> None:
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(g) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_type_checking_imports_are_not_edges(tmp_path) -> None:
    src = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import x.y\nelse:\n"
        "    import x.z\ndef f():\n    from . import w\n"
    )
    found = _imports(ast.parse(src), "pkg.mod", False)
    assert "x.y" not in found and {"x.z", "pkg.w"} <= found


def loaded_with(modules: list[str], watched: tuple[str, ...]) -> list[str]:
    """Which of the `watched` packages (or their submodules) importing `modules` loads, in a
    fresh interpreter."""
    code = (
        "import sys, importlib\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"w = {watched!r}\n"
        "print(sorted(m for m in sys.modules if any(m == h or m.startswith(h + '.') for h in w)))\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0, p.stderr
    return ast.literal_eval(p.stdout.strip())


@pytest.mark.parametrize(
    "module", ["hybridserve.router", "hybridserve.backends", "hybridserve.fleet"]
)
def test_data_plane_loads_no_planner_and_no_scipy(module: str) -> None:
    heavy = ("scipy", "hybridserve.planner", "hybridserve.forecast", "statsmodels", "torch")
    assert loaded_with([module], heavy) == []


def test_config_loads_without_aws_libraries() -> None:
    config = ["hybridserve.config", "hybridserve.deployment", "hybridserve.serve"]
    assert loaded_with(config, ("boto3", "botocore", "aiobotocore")) == []
    assert loaded_with(["hybridserve.aws.deploy"], ("botocore",)) != []  # the check can fail


def test_router_poisson_pmf_matches_scipy() -> None:
    from scipy.stats import poisson

    from hybridserve.router.buffer import poisson_pmf

    for mu in (0.0, 1e-9, 0.3, 2.5, 17.0, 400.0, 2000.0):
        for n in (1, 2, 8, 64):
            want = poisson.pmf(np.arange(n), mu)
            np.testing.assert_allclose(poisson_pmf(n, mu), want, rtol=1e-9, atol=1e-300)


# every optional extra of pyproject.toml: the README's first command installs only `plot`
EXTRAS = (
    "torch", "onnxruntime", "onnx", "zstandard", "starlette", "uvicorn", "httptools", "uvloop",
    "aiohttp", "prometheus_client", "aiobotocore", "botocore", "boto3", "pandas", "pyarrow", "ray",
)  # fmt: skip


def test_simulate_runs_on_the_base_dependencies(tmp_path) -> None:
    """`hybridserve simulate` (every policy, in worker processes) with each optional extra made
    unimportable: the router's pure buffer once pulled in prometheus_client through
    `hybridserve.router`'s package imports, and a fresh install's first command failed."""
    code = (
        "import sys, importlib.abc, importlib.util\n"
        f"EXTRAS = {EXTRAS!r}\n"
        "def absent(name):\n"
        "    return name.split('.')[0] in EXTRAS\n"
        "class Absent(importlib.abc.MetaPathFinder):\n"  # import raises, as when not installed
        "    def find_spec(self, name, path, target=None):\n"
        "        if absent(name):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Absent())\n"
        "find_spec = importlib.util.find_spec\n"  # and a probe answers None, as then
        "importlib.util.find_spec = lambda n, p=None: None if absent(n) else find_spec(n, p)\n"
        "from hybridserve.cli import main\n"
        "main(['simulate', '--days', '0.05', '--json'])\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout)
    assert {r["policy"] for r in out["results"]} >= {"hybrid", "mark", "oracle", "lambda-only"}
