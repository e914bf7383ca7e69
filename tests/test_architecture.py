"""The package's shape: its layout, the order its layers import in, no import cycles, and a
public API that works in any import order. See docs/architecture.md."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import pytest_llmexp

PACKAGE = Path(pytest_llmexp.__file__).parent

#: Top to bottom: a module may import its own layer and the layers below it, never above.
LAYERS: list[tuple[str, ...]] = [
    ("pytest_llmexp", "pytest_llmexp.endpoint", "pytest_llmexp.plugin", "pytest_llmexp.cli"),
    ("pytest_llmexp._plugin",),
    ("pytest_llmexp._view",),
    ("pytest_llmexp._local",),
    ("pytest_llmexp._run",),
    ("pytest_llmexp._store",),
    ("pytest_llmexp._verdict",),
    ("pytest_llmexp._util",),
    ("pytest_llmexp.errors",),
]
#: The wings that import no pytest: a script or a notebook runs them.
CORE = tuple(f"pytest_llmexp.{wing}" for wing in ("_run", "_store", "_verdict", "_util"))
TOP_LEVEL = {
    "__init__.py",
    "errors.py",
    "endpoint.py",
    "plugin.py",
    "cli.py",
    "py.typed",
    "_plugin",
    "_view",
    "_local",
    "_run",
    "_store",
    "_verdict",
    "_util",
}


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    lazy: bool


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    return {
        id(child)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for child in ast.walk(node)
    }


def imports(name: str, path: Path, known: dict[str, Path]) -> list[Edge]:
    """Every import of ``name`` at run time, lazy ones (inside functions) included, and
    those under ``if TYPE_CHECKING:`` left out; external modules as they are named."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_nodes(tree)
    lazy = {
        id(child)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        for child in ast.walk(node)
    }
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    edges = []
    for node in ast.walk(tree):
        if id(node) in skip or not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        edges += [Edge(name, t, node.lineno, id(node) in lazy) for t in targets if t != name]
    return edges


@pytest.fixture(scope="module")
def graph() -> dict[str, list[Edge]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def layer_of(module: str) -> int:
    # The longest match wins: pytest_llmexp._run is not in the facade's layer.
    matches = [
        (len(member), index)
        for index, members in enumerate(LAYERS)
        for member in members
        if module == member or module.startswith(member + ".")
    ]
    assert matches, f"{module} is in no layer: add it to LAYERS and to docs/architecture.md"
    return max(matches)[1]


def test_the_top_level_holds_the_facade_the_entry_points_and_the_wings() -> None:
    entries = {p.name for p in PACKAGE.iterdir() if p.name != "__pycache__"}
    assert entries == TOP_LEVEL


def test_every_wing_says_what_it_owns_and_runs_no_code_on_import() -> None:
    wings = [
        p
        for p in PACKAGE.iterdir()
        if p.is_dir() and p.name.startswith("_") and p.name != "__pycache__"
    ]
    assert len(wings) == 7
    for wing in sorted(wings):
        tree = ast.parse((wing / "__init__.py").read_text())
        docstring = ast.get_docstring(tree)
        assert docstring and "may import" in " ".join(docstring.split()), wing.name
        # Only the docstring: importing a wing costs nothing beyond the package itself.
        assert len(tree.body) == 1, f"{wing.name}/__init__.py has code besides its docstring"


def test_private_modules_live_in_private_wings() -> None:
    for name in modules():
        parts = name.split(".")
        if len(parts) > 2:
            assert parts[1].startswith("_"), name


def upward(edges: list[Edge]) -> list[Edge]:
    """The imports of the package's own modules that go up a layer."""
    ours = [e for e in edges if e.target.split(".")[0] == "pytest_llmexp"]
    return [e for e in ours if layer_of(e.target) < layer_of(e.source)]


def test_layers_import_only_downward(graph: dict[str, list[Edge]]) -> None:
    wrong = [
        f"{e.source}:{e.line} imports {e.target}{' (lazily)' if e.lazy else ''}"
        for edges in graph.values()
        for e in upward(edges)
    ]
    assert not wrong, "imports that go up a layer:\n" + "\n".join(wrong)


def test_the_layer_check_catches_an_import_that_goes_up() -> None:
    known = modules()
    edges = imports("pytest_llmexp._store.store", known["pytest_llmexp._store.store"], known)
    assert edges and upward(edges) == []
    wrong = Edge("pytest_llmexp._store.store", "pytest_llmexp._run.bots", 1, lazy=True)
    assert upward([*edges, wrong]) == [wrong]


def test_the_core_imports_no_pytest(graph: dict[str, list[Edge]]) -> None:
    found = [
        f"{e.source}:{e.line} imports {e.target}"
        for name, edges in graph.items()
        if name.startswith(CORE)
        for e in edges
        if e.target.split(".")[0] in ("pytest", "_pytest", "xdist", "pluggy")
    ]
    assert not found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_lazy_imports_included(graph: dict[str, list[Edge]]) -> None:
    # A module importing its own package (``from . import x``) is not a cycle: the
    # package's __init__ files import nothing of their wings.
    edges = {
        name: {e.target for e in out if e.target in graph and not name.startswith(e.target + ".")}
        for name, out in graph.items()
    }
    assert cycles(edges) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


USE_BOTH = """
assert callable(experiment) and not isinstance(experiment, type(sys)), experiment
decorated = experiment(num_executions=3)(lambda: None)
assert isinstance(Experiment, type), Experiment
assert Experiment("order", num_executions=1).name == "order"
"""


@pytest.mark.parametrize(
    "imports",
    [
        "from pytest_llmexp import experiment, Experiment",
        "from pytest_llmexp import Experiment, experiment",
        "from pytest_llmexp import experiment\nfrom pytest_llmexp import Experiment",
        "from pytest_llmexp import Experiment\nfrom pytest_llmexp import experiment",
        # Every submodule imported first: none of them may shadow a public name.
        "import pkgutil, importlib, pytest_llmexp\n"
        "for m in pkgutil.walk_packages(pytest_llmexp.__path__, 'pytest_llmexp.'):\n"
        "    importlib.import_module(m.name)\n"
        "from pytest_llmexp import Experiment, experiment",
    ],
    ids=["one-statement", "one-statement-reversed", "two", "two-reversed", "all-submodules"],
)
def test_public_names_work_in_any_import_order(imports: str, tmp_path: Path) -> None:
    code = "import sys\n" + imports + "\n" + textwrap.dedent(USE_BOTH)
    # A fresh interpreter: in this one the package is imported already.
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


def test_every_public_name_resolves_and_is_listed() -> None:
    code = textwrap.dedent(
        """
        import pytest_llmexp
        for name in pytest_llmexp.__all__:
            value = getattr(pytest_llmexp, name)
            assert value is not None, name
        from pytest_llmexp import endpoint
        assert sorted(endpoint.__all__) == ["ClientSettings", "configure", "settings"]
        endpoint.configure(endpoint.ClientSettings(base_url="http://127.0.0.1:9/v1"))
        assert endpoint.settings().base_url == "http://127.0.0.1:9/v1"
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


BOTH_ORDERS = {
    "test_first.py": """
from pytest_llmexp import experiment, Experiment, metric

@metric
def one() -> int:
    return 1

@experiment(num_executions=2)
def test_first():
    one()

def test_script_beside_it(tmp_path):
    with Experiment("scripted_first", num_executions=2, db=tmp_path / "script.db") as exp:
        exp.run(one)
    assert exp.summary()["one"]["n"] == 2
""",
    "test_second.py": """
from pytest_llmexp import Experiment
from pytest_llmexp import experiment

@experiment(num_executions=3)
def test_second():
    assert isinstance(Experiment, type)
""",
}


def test_test_modules_import_both_names_in_either_order(run_session: Any, pytester: Any) -> None:
    pytester.makepyfile(**BOTH_ORDERS)
    run = run_session()
    run.result.assert_outcomes(passed=6)
    assert run.db is not None
    stored = dict(
        run.db.conn.execute(
            "SELECT e.name, count(r.id) FROM experiments e JOIN experiment_runs r "
            "ON r.experiment_id = e.id WHERE r.status = 'passed' GROUP BY e.name"
        ).fetchall()
    )
    assert stored == {"first": 2, "second": 3}


def test_the_module_names_kept_as_text_name_real_modules() -> None:
    # wiring watches sys.modules for the bots' module by name, and the local model's server
    # is started with python -m: a rename must not break either silently.
    import importlib.util
    import re

    named = {
        name
        for path in PACKAGE.rglob("*.py")
        for name in re.findall(r"[\"'](pytest_llmexp(?:\.\w+)+)[\"']", path.read_text())
    }
    assert "pytest_llmexp._run.bots" in named and "pytest_llmexp._local.main" in named
    missing = sorted(n for n in named if importlib.util.find_spec(n) is None)
    assert not missing
