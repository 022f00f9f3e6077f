"""The storage boundary: only the store imports a database driver or holds SQL.

Everything above the store talks to it through its operations (add, start,
succeed, recover, schedules, ...), so a second backend plugs in at one place.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "taskrt"
STORE = "store/"  # the store and its backends: the one place for a driver and SQL
DRIVERS = {"sqlite3", "aiosqlite", "asyncpg"}
SQL = re.compile(
    r"\b(SELECT\s+.+\s+FROM|INSERT\s+(OR\s+\w+\s+)?INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM"
    r"|CREATE\s+(TABLE|INDEX|UNIQUE)|SAVEPOINT|ROLLBACK|PRAGMA|BEGIN\s+IMMEDIATE)\b",
    re.DOTALL,  # upper case, as SQL is written here: prose may say 'select ... from'
)


def offences(source: str) -> list[str]:
    """Driver imports and SQL string literals in one module's source."""
    found: list[str] = []
    tree = ast.parse(source)
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in DRIVERS]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] in DRIVERS:
                found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) in docstrings:  # prose about the store may name its SQL
                continue
            match = SQL.search(node.value)
            if match:
                found.append(f"SQL {match.group(0)[:40]!r} (line {node.lineno})")
    return found


def modules() -> list[Path]:
    return sorted(
        p for p in PACKAGE.rglob("*.py") if not p.relative_to(PACKAGE).as_posix().startswith(STORE)
    )


@pytest.mark.parametrize("path", modules(), ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_only_the_store_holds_sql_or_imports_a_driver(path: Path) -> None:
    assert offences(path.read_text(encoding="utf-8")) == []


def test_the_check_finds_what_it_looks_for() -> None:
    source = (
        '"""Notes may say PRAGMA user_version."""\n'
        "import sqlite3\n"
        "from aiosqlite import connect\n"
        'Q = "SELECT id FROM jobs WHERE x = ?"\n'
        'U = "UPDATE jobs SET a = 1"\n'
        'ok = "DELETE"  # an HTTP method, not SQL\n'
        'fine = "select a pool from the list"\n'
    )
    assert offences(source) == [
        "import sqlite3",
        "from aiosqlite import ...",
        "SQL 'SELECT id FROM' (line 4)",
        "SQL 'UPDATE jobs SET' (line 5)",
    ]


# -- imports point one way ----------------------------------------------------------------

# Each module's layer (docs/architecture.md); a module may import only from its
# own layer and those below it. Packages count by their first component.
LAYERS: dict[str, int] = {
    # values
    **dict.fromkeys(
        [
            "errors",
            "models",
            "limits",
            "retry",
            "schedule",
            "params",
            "definitions",
            "clock",
            "rates",
        ],
        0,
    ),
    "counters": 0,
    "taskfiles": 0,  # task files are definitions too: they build TaskSpecs from files
    "transaction": 2,
    # store, and the seams
    "store": 1,
    "events": 1,
    "relay": 1,  # the event bus between the processes of a host
    "nodebus": 1,  # the event bus between nodes (PostgreSQL)
    "bulk": 2,  # bulk actions: ids by filter, one action each
    "history": 2,  # what finished, per minute
    # engine
    **dict.fromkeys(
        ["context", "background", "live", "pool", "waiting", "adding", "transitions"], 2
    ),
    "adoption": 2,
    "claims": 2,
    "gates": 2,  # rate limits of tasks, locks held (owner)
    "alone": 2,  # a job at its last recovery runs alone in its process
    "processes": 2,  # worker processes of a pool (processes=True)
    "nodes": 2,
    "workflows": 2,  # jobs that wait for jobs, chains, groups
    "batches": 2,  # batched handlers
    "stream": 2,
    "ownership": 2,
    # services
    **dict.fromkeys(["scheduler", "retention", "tracing", "watchdog", "deadlines"], 3),
    # the runtime
    "runtime": 4,
    # front ends
    **dict.fromkeys(["web", "cli", "compat", "codegen", "metrics", "logging", "__init__"], 5),
    "__main__": 5,
}


def module_of(path: Path) -> str:
    """``taskrt.x.y`` as ``x.y`` (a package's ``__init__`` as the package)."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Modules of taskrt that ``path`` imports, anywhere (TYPE_CHECKING and functions too)."""
    known = {module_of(p) for p in PACKAGE.rglob("*.py")}
    here = module_of(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = [*base, *(node.module.split(".") if node.module else [])]
            elif node.module and node.module.split(".")[0] == "taskrt":
                target = node.module.split(".")[1:]
            else:
                continue
            for alias in node.names:  # a submodule, or a name from the module itself
                sub = ".".join([*target, alias.name])
                found.add(sub if sub in known else ".".join(target))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "taskrt":
                    found.add(".".join(alias.name.split(".")[1:]))
    return {name for name in found if name in known and name}


def graph() -> dict[str, set[str]]:
    return {module_of(p): imports_of(p) - {module_of(p)} for p in PACKAGE.rglob("*.py")}


def top(module: str) -> str:
    return module.split(".")[0]


def test_every_module_has_a_layer() -> None:
    assert {top(m) for m in graph()} - set(LAYERS) == set()


def test_imports_point_down_the_layers() -> None:
    upward = sorted(
        f"{m} -> {t}"
        for m, targets in graph().items()
        for t in targets
        if top(t) != top(m) and LAYERS[top(t)] > LAYERS[top(m)]
    )
    assert upward == []


def cycles(edges: dict[str, set[str]]) -> list[str]:
    """Every cycle a depth-first walk of ``edges`` closes, as ``a -> b -> a``."""
    seen: dict[str, int] = {}
    stack: list[str] = []
    found: list[str] = []

    def visit(node: str) -> None:
        seen[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if seen.get(nxt) == 1:
                found.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in seen:
                visit(nxt)
        stack.pop()
        seen[node] = 2

    for node in sorted(edges):
        if node not in seen:
            visit(node)
    return found


def test_no_import_cycle_between_modules() -> None:
    """Counting imports under TYPE_CHECKING and inside functions."""
    assert cycles(graph()) == []


def test_the_cycle_check_finds_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a -> b -> c -> a"]
    assert cycles({"a": {"b"}, "b": set()}) == []
