"""Fuzzing the loaders: whatever a task file holds, loading raises DefinitionError or nothing.

Imports are fenced off: a fuzzed dotted path must not import (and run) a real
module such as ``this`` or ``antigravity``; only a few known-safe modules resolve.
"""

from __future__ import annotations

import importlib
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskrt.taskfiles import DefinitionError, load_tasks, resolve, snake_case

FIXTURES = Path(__file__).parent / "fixtures"
SAFE_MODULES = {"os", "os.path", "json"}
SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)

_real_import = importlib.import_module


def _fenced_import(name: str, package: str | None = None) -> Any:
    if name in SAFE_MODULES:
        return _real_import(name, package)
    raise ModuleNotFoundError(f"No module named {name!r}", name=name.split(".")[0])


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    fence = SimpleNamespace(import_module=_fenced_import)
    with mock.patch.object(resolve, "importlib", fence):
        yield tmp_path_factory.mktemp("fuzz")


class Executor:
    def execute_send_email(self, params: dict[str, Any]) -> None: ...

    def on_send_email_failed(self, job_id: int, params: dict[str, Any], tx: Any) -> None: ...


def _load(folder: Path, name: str, text: str | bytes) -> None:
    path = folder / f"{uuid.uuid4().hex}-{name}"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        specs = load_tasks(path, executor=Executor())
    except DefinitionError as exc:
        assert exc.problems, "a DefinitionError always carries its problems"
        for problem in exc.problems:
            assert problem.file == str(path)
            assert problem.line is None or problem.line >= 1
            assert isinstance(str(problem), str)
            # The loader's own safety net (a bug turned into a problem) never fires.
            assert not problem.message.startswith("cannot load:"), problem
    else:
        assert all(spec.name for spec in specs)
    finally:
        path.unlink()


# -- any text at all ------------------------------------------------------------------


@SETTINGS
@given(text=st.text(max_size=300))
def test_any_text_as_a_yao_file(folder: Path, text: str) -> None:
    _load(folder, "t.yao", text)


@SETTINGS
@given(text=st.text(max_size=300))
def test_any_text_as_an_anchor_file(folder: Path, text: str) -> None:
    _load(folder, "t.yaml", text)


@SETTINGS
@given(data=st.binary(max_size=200))
def test_any_bytes(folder: Path, data: bytes) -> None:
    _load(folder, "t.jsonc", data)
    _load(folder, "t.yml", data)


# -- documents shaped like task files, with wrong values -------------------------------

_dotted = st.sampled_from(["os.path.join", "json.dumps", "nowhere.f", "os.sep", "x", "a..b", ""])
_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([10**400, -(10**400)]),  # past a float: float(int) overflows
    st.floats(allow_nan=False),
    st.text(max_size=20),
    _dotted,
    st.sampled_from(["30s", "1x", "1m,2m", "-1", "0 0 2 * * *", "* * *", "onFailed", "object"]),
)
_json = st.recursive(
    _scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _fields(names: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.sampled_from([*names, "bogus"]), _json, max_size=len(names))


YAO_FIELDS = ["name", "worker_nums", "attempts", "attempt_after", "timeout", "size", "process"]
ANCHOR_FIELDS = [
    "name",
    "description",
    "parameters",
    "retryPolicy",
    "cronjob",
    "events",
    "timeout",
    "process",
    "hooks",
    "pool",
    "priority",
]


@SETTINGS
@given(fields=_fields(YAO_FIELDS), event=_fields(["next", "add", "success", "error"]))
def test_yao_shaped_documents(folder: Path, fields: dict[str, Any], event: dict[str, Any]) -> None:
    fields["event"] = event
    _load(folder, "t.yao", json.dumps(fields))


_schema = st.one_of(
    _json,
    st.fixed_dictionaries(
        {"type": st.sampled_from(["object", "array", "strin"])},
        optional={"properties": st.dictionaries(st.text(max_size=6), _json, max_size=3)},
    ),
)


@SETTINGS
@given(
    tasks=st.lists(
        st.one_of(
            _json,
            _fields(ANCHOR_FIELDS),
            st.fixed_dictionaries(
                {"name": st.sampled_from(["SendEmail", "send_email", "x y", "A"])},
                optional={
                    "parameters": _schema,
                    "retryPolicy": _fields(["interval", "maxAttempts"]),
                    "cronjob": _fields(["cronExpression", "timezone"]),
                    "events": st.lists(_scalar, max_size=2),
                    "timeout": _scalar,
                },
            ),
        ),
        max_size=4,
    )
)
def test_anchor_shaped_documents(folder: Path, tasks: list[Any]) -> None:
    _load(folder, "t.yaml", yaml.safe_dump({"tasks": tasks}, allow_unicode=True))


# -- small edits of the example files --------------------------------------------------


def _mutations(source: str) -> st.SearchStrategy[str]:
    def apply(edits: list[tuple[int, int, str]]) -> str:
        text = source
        for position, length, insert in edits:
            at = position % (len(text) + 1)
            text = text[:at] + insert + text[at + length :]
        return text

    edit = st.tuples(
        st.integers(min_value=0, max_value=10_000),
        st.integers(min_value=0, max_value=4),
        st.sampled_from(
            ["", ",", "}", "{", "]", '"', ":", "-", "\n", "  ", "#", "//", "/*", "&a", "*a"]
        ),
    )
    return st.lists(edit, min_size=1, max_size=4).map(apply)


YAO_TEXT = (FIXTURES / "yao_app" / "tasks" / "test.yao").read_text()
ANCHOR_TEXT = (FIXTURES / "anchor_app" / "tasks.yaml").read_text()


@SETTINGS
@given(text=_mutations(YAO_TEXT))
def test_edited_yao_example(folder: Path, text: str) -> None:
    _load(folder, "t.yao", text)


@SETTINGS
@given(text=_mutations(ANCHOR_TEXT))
def test_edited_anchor_example(folder: Path, text: str) -> None:
    _load(folder, "t.yaml", text)


# -- snake_case, linear now, reads names as it always did ------------------------------


def _former_snake_case(name: str) -> str:
    """``snake_case`` as it was, quadratic in a run of capitals; its output is the contract."""
    text = re.sub(r"[^A-Za-z0-9]+", "_", name)
    text = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", text)
    text = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", text)
    return text.strip("_").lower()


@settings(max_examples=2000, deadline=None, database=None)
@given(name=st.text(alphabet="aAbBzZ09_- .é", max_size=24))
def test_snake_case_reads_names_as_before(name: str) -> None:
    assert snake_case(name) == _former_snake_case(name)
