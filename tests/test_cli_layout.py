"""The shape of the ``taskrt.cli`` package: imports point one way (main -> command
modules -> support), and every command ``taskrt --help`` lists is a row of the
explicit registry ``taskrt.cli.main.COMMANDS``."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest
from uvicorn.importer import import_from_string

from taskrt import cli
from taskrt.cli import serve
from taskrt.cli.dispatch import COMMANDS

PACKAGE = Path(cli.__file__).parent
PREFIX = "taskrt.cli"


def sources() -> dict[str, str]:
    """The package's modules by name (``__init__``, ``main``, ``support``, ...)."""
    return {path.stem: path.read_text(encoding="utf-8") for path in PACKAGE.glob("*.py")}


def import_graph(modules: dict[str, str]) -> dict[str, set[str]]:
    """Module -> the package modules it imports, anywhere in its source: at the top,
    inside functions, and under ``if TYPE_CHECKING:`` (a cycle there still ties the
    modules together, and mypy follows it)."""

    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, text in modules.items():
        for node in ast.walk(ast.parse(text, filename=f"{name}.py")):
            found: list[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.level == 1:
                    base = node.module  # None for ``from . import a, b``
                elif (
                    node.level == 0
                    and node.module is not None
                    and (node.module == PREFIX or node.module.startswith(PREFIX + "."))
                ):
                    base = node.module.removeprefix(PREFIX).lstrip(".") or None
                else:
                    continue  # ``from ..models import``: outside the package
                if base is None:  # a submodule by name, else a name of the package
                    found += [a.name if a.name in modules else "__init__" for a in node.names]
                else:
                    found.append(base.split(".")[0])
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith(PREFIX + "."):
                        found.append(alias.name.removeprefix(PREFIX + ".").split(".")[0])
                    elif alias.name == PREFIX:
                        found.append("__init__")
            graph[name].update(f for f in found if f != name)
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        return list(exc.args[1])
    return None


def test_the_cli_package_has_no_import_cycle() -> None:
    graph = import_graph(sources())
    assert {"__init__", "dispatch", "support", "jobs", "watch", "progress"} <= graph.keys()
    assert cycle(graph) is None, f"import cycle in taskrt.cli: {' -> '.join(cycle(graph) or [])}"


def test_imports_point_one_way() -> None:
    graph = import_graph(sources())
    importers_of_main = {name for name, targets in graph.items() if "dispatch" in targets}
    assert importers_of_main <= {"__init__", "__main__"}  # only the entry points
    assert graph["support"] == set()  # the bottom: it imports no other CLI module
    assert {"files", "jobs", "schedules", "serve", "watch"} <= graph["dispatch"]
    commands = {"files", "jobs", "schedules", "serve", "watch", "progress"}
    for name in commands:
        assert "__init__" not in graph[name], f"{name} imports the package (its __init__)"


@pytest.mark.parametrize(
    ("modules", "expected"),
    [
        (  # a cycle hidden under TYPE_CHECKING is a cycle
            {
                "main": "from . import jobs\n",
                "jobs": "from .support import x\n",
                "support": "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from .main import COMMANDS\n",
            },
            {"main", "jobs", "support"},
        ),
        (  # absolute imports, and ``import taskrt.cli.x`` inside a function
            {
                "main": "from taskrt.cli.jobs import add\n",
                "jobs": "def f():\n    import taskrt.cli.main\n",
            },
            {"main", "jobs"},
        ),
        ({"main": "from . import jobs\n", "jobs": "from ..models import JobInfo\n"}, None),
    ],
)
def test_the_cycle_check_finds_cycles(modules: dict[str, str], expected: set[str] | None) -> None:
    found = cycle(import_graph(modules))
    assert (None if found is None else set(found)) == expected


def listed_commands(help_text: str) -> list[str]:
    """The subcommands in ``taskrt --help``: the indented names under ``COMMAND``."""
    section = help_text.split("positional arguments:", 1)[1].split("\noptions:", 1)[0]
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "COMMAND")
    return [m.group(1) for line in lines[start + 1 :] if (m := re.match(r"^    (\S+)", line))]


def test_every_command_in_help_is_in_the_registry() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "taskrt", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "100"},
    )
    assert result.returncode == 0, result.stderr
    listed = listed_commands(result.stdout)
    registry = [command.name for command in COMMANDS]
    assert len(registry) == len(set(registry))
    assert "validate" in listed and "watch" in listed and "schedules" in listed
    assert set(listed) == set(registry)
    assert listed == sorted(listed)  # ``--help`` lists them by name


def test_the_reload_factory_reference_resolves() -> None:
    # ``serve --reload`` hands uvicorn a string; a moved module must not break it.
    assert import_from_string(serve.RELOAD_FACTORY) is serve.reload_factory
