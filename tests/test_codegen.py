"""``taskrt generate``: typed Python from Anchor definitions, deterministic and mypy --strict clean."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import taskrt
from taskrt import JobStatus, Runtime
from taskrt.codegen import generate
from taskrt.definitions import make_spec
from taskrt.taskfiles import DefinitionError

TASKS_YAML = Path(__file__).parent / "fixtures" / "anchor_app" / "tasks.yaml"

ODD_YAML = r'''
tasks:
  - name: odd_names
    description: 'Quotes """ and a backslash \ and "a quote at the end"'
    parameters:
      type: object
      required: [class, user-id, tx]
      properties:
        class: {type: string}
        user-id: {type: integer}
        tx: {type: [string, "null"]}
        from: {type: array, items: {type: number}}
        level: {type: string, enum: [low, high], default: low}
        count: {type: integer, default: 3}
        to_dict: {type: boolean}
        scores: {type: object, additionalProperties: {type: number}}
    events: [onFailed]
'''


def _import(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_output_is_deterministic(tmp_path: Path) -> None:
    first = generate(TASKS_YAML)
    assert generate(TASKS_YAML) == first
    copy = tmp_path / "tasks.yaml"
    copy.write_text(TASKS_YAML.read_text())
    assert generate(copy) == first  # no absolute paths, no dates


def test_the_generated_module_describes_each_task() -> None:
    code = generate(TASKS_YAML)
    assert (
        textwrap.dedent(
            '''
        @dataclass(frozen=True, slots=True)
        class SendEmailParameters:
            """Parameters of task ``SendEmail``.

            Send an email to a user
            """

            user_id: int
            template_id: str
            variables: dict[str, Any] | None = None

            @classmethod
            def from_dict(cls, data: Mapping[str, Any]) -> SendEmailParameters:
                return cls(
                    user_id=data["userId"],
                    template_id=data["templateId"],
                    variables=data.get("variables", None),
                )

            def to_dict(self) -> dict[str, Any]:
                data: dict[str, Any] = {"userId": self.user_id, "templateId": self.template_id}
                if self.variables is not None:
                    data["variables"] = self.variables
                return data
        '''
        )
        in code
    )
    assert "    def execute_send_email(self, params: SendEmailParameters) -> object: ...\n" in code
    assert "    def on_process_order_failed(\n" in code
    assert "    def on_delete_opaque_key_failed(\n" in code
    assert "on_send_email_failed" not in code  # no onFailed event
    assert "on_daily_cleanup_failed" not in code
    for helper in ("send_email", "process_order", "delete_opaque_key", "daily_cleanup"):
        assert f"async def add_{helper}(\n    rt: Runtime,\n" in code
    assert "    days_to_keep: int | None = None\n" in code


def test_mypy_strict_accepts_the_output_and_catches_misuse(tmp_path: Path) -> None:
    (tmp_path / "taskgen.py").write_text(generate(TASKS_YAML))
    odd = tmp_path / "odd.yaml"
    odd.write_text(ODD_YAML)
    (tmp_path / "oddgen.py").write_text(generate(odd))
    (tmp_path / "good.py").write_text(
        textwrap.dedent(
            """
            from taskrt import Runtime, Transaction
            from taskgen import Executor, SendEmailParameters, ProcessOrderParameters
            from taskgen import DeleteOpaqueKeyParameters, DailyCleanupParameters, add_send_email


            class Mine:
                async def execute_send_email(self, params: SendEmailParameters) -> None: ...
                async def execute_process_order(self, params: ProcessOrderParameters) -> None: ...
                async def on_process_order_failed(
                    self, job_id: int, params: ProcessOrderParameters, tx: Transaction
                ) -> None: ...
                def execute_delete_opaque_key(self, params: DeleteOpaqueKeyParameters) -> str:
                    return ""
                def on_delete_opaque_key_failed(
                    self, job_id: int, params: DeleteOpaqueKeyParameters, tx: Transaction
                ) -> None: ...
                def execute_daily_cleanup(self, params: DailyCleanupParameters) -> None: ...


            executor: Executor = Mine()


            async def enqueue(rt: Runtime) -> int:
                return await add_send_email(rt, SendEmailParameters(user_id=1, template_id="w"))
            """
        )
    )
    (tmp_path / "bad.py").write_text(
        textwrap.dedent(
            """
            from taskgen import Executor, SendEmailParameters


            class Incomplete:
                def execute_send_email(self, params: SendEmailParameters) -> None: ...


            params = SendEmailParameters(user_id="1", template_id="w")
            executor: Executor = Incomplete()
            """
        )
    )
    errors = _mypy_errors(tmp_path, "taskgen.py", "oddgen.py", "good.py", "bad.py")
    assert {line.split(":")[0] for line in errors} == {"bad.py"}, errors
    assert any(
        'Argument "user_id" to "SendEmailParameters" has incompatible type' in e for e in errors
    )
    assert any("Incompatible types in assignment" in e for e in errors)


def test_odd_names_and_descriptions_still_make_valid_python(tmp_path: Path) -> None:
    odd = tmp_path / "odd.yaml"
    odd.write_text(ODD_YAML)
    code = generate(odd)
    compile(code, "oddgen.py", "exec")
    assert "class OddNamesParameters:" in code
    assert "    class_: str\n" in code
    assert "    user_id: int\n" in code
    assert "    tx: str | None\n" in code
    assert "    from_: list[float] | None = None\n" in code
    assert '    level: Literal["low", "high"] = "low"\n' in code
    assert "    count: int = 3\n" in code
    assert "    to_dict_: bool | None = None\n" in code
    assert "    scores: dict[str, float] | None = None\n" in code
    assert "as_object=True" in code  # a property named tx cannot be a keyword of rt.add
    module = _import(_write(tmp_path / "oddgen.py", code), "oddgen")
    params = module.OddNamesParameters.from_dict({"class": "c", "user-id": 1, "tx": None})
    assert params.to_dict() == {
        "class": "c",
        "user-id": 1,
        "tx": None,
        "level": "low",
        "count": 3,
    }


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _mypy_errors(folder: Path, *files: str) -> list[str]:
    """The errors ``mypy --strict`` reports for ``files`` in ``folder``."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--follow-imports=silent",
            "--no-incremental",
            "--cache-dir",
            str(folder / ".mypy_cache"),
            *files,
        ],
        cwd=folder,
        env={**os.environ, "MYPYPATH": str(Path(taskrt.__file__).parent.parent)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return [line for line in result.stdout.splitlines() if ": error:" in line]


def test_decorated_tasks_generate_too() -> None:
    async def resize(job: Any, image_id: int, width: int = 100) -> None: ...

    def legacy(task_id: int, *args: Any) -> None: ...

    code = generate([make_spec(resize), make_spec(legacy, call="id")], title="app")
    assert "class ResizeParameters:" in code
    assert "    image_id: int\n    width: int = 100\n" in code
    assert "Legacy" not in code  # positional arguments: nothing to describe


def test_clashing_names_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "tasks.yaml"
    path.write_text("tasks:\n  - name: SendEmail\n  - name: send_email\n")
    with pytest.raises(DefinitionError) as caught:
        generate(path)
    assert caught.value.problems[0].message == (
        "task 'send_email' and task 'SendEmail' have the same snake_case name 'send_email': "
        "their executor methods would clash"
    )


async def test_generated_helpers_run_on_a_runtime(tmp_path: Path) -> None:
    gen = _import(_write(tmp_path / "shopgen.py", generate(TASKS_YAML)), "shopgen")
    seen: list[Any] = []

    class Executor:
        async def execute_send_email(self, params: Any) -> str:
            seen.append(params)
            return f"sent {params.template_id} to {params.user_id}"

        async def execute_process_order(self, params: Any) -> None:
            from taskrt import Fatal

            raise Fatal("no such order")

        async def on_process_order_failed(self, job_id: int, params: Any, tx: Any) -> None:
            seen.append((job_id, params))

        def execute_delete_opaque_key(self, params: Any) -> None: ...

        def on_delete_opaque_key_failed(self, job_id: int, params: Any, tx: Any) -> None: ...

        def execute_daily_cleanup(self, params: Any) -> None: ...

    # What the annotations say once resolved (here they name a module made at run time).
    Executor.execute_send_email.__annotations__["params"] = gen.SendEmailParameters
    Executor.on_process_order_failed.__annotations__["params"] = gen.ProcessOrderParameters
    rt = Runtime(str(tmp_path / "app.db"), tasks=TASKS_YAML, executor=Executor())
    async with rt:
        params = gen.SendEmailParameters(user_id=7, template_id="welcome")
        job_id = await gen.add_send_email(rt, params, priority=3)
        info = await rt.wait(job_id, timeout=10)
        assert (info.status, info.result, info.priority) == (
            JobStatus.SUCCESS,
            "sent welcome to 7",
            3,
        )
        assert info.kwargs == {"userId": 7, "templateId": "welcome"}
        # Flow-control overrides pass through the generated add like any other option.
        windowed = await gen.add_send_email(rt, params, unique_key="welcome:7", unique_for=3600)
        await rt.wait(windowed, timeout=10)
        from taskrt import DuplicateJob

        with pytest.raises(DuplicateJob):
            await gen.add_send_email(rt, params, unique_key="welcome:7", on_conflict="raise")
        failed = await gen.add_process_order(rt, gen.ProcessOrderParameters(order_id=5))
        assert (await rt.wait(failed, timeout=10)).status is JobStatus.FAILURE
    assert seen == [params, params, (failed, gen.ProcessOrderParameters(order_id=5))]
    assert type(seen[0]) is gen.SendEmailParameters  # built by from_dict for the executor


KEYWORD_YAML = """
tasks:
  - name: Import
    parameters:
      type: object
      required: [from]
      properties:
        from: {type: string}
  - name: Match
    parameters:
      type: object
      properties:
        pattern: {type: string}
    events: [onFailed]
  - name: Data
"""

KEYWORD_EXECUTOR = """
from taskrt import Fatal, Transaction
from kwgen import DataParameters, Executor, ImportParameters, MatchParameters

FAILED: list[tuple[int, MatchParameters]] = []


class KeywordExecutor:
    def execute_import(self, params: ImportParameters) -> str:
        return f"imported {params.from_}"

    def execute_match(self, params: MatchParameters) -> None:
        raise Fatal("no match")

    def on_match_failed(self, job_id: int, params: MatchParameters, tx: Transaction) -> None:
        FAILED.append((job_id, params))

    def execute_data(self, params: DataParameters) -> str:
        return "data"


executor: Executor = KeywordExecutor()
"""


async def test_tasks_named_like_keywords_get_the_methods_the_loader_calls(
    tmp_path: Path,
) -> None:
    """``Import`` needs ``execute_import`` (what the loader looks for), not ``execute_import_``."""
    tasks = _write(tmp_path / "tasks.yaml", KEYWORD_YAML)
    code = generate(tasks)
    assert "    def execute_import(self, params: ImportParameters) -> object: ...\n" in code
    assert "    def on_match_failed(\n" in code
    assert "    def execute_data(self, params: DataParameters) -> object: ...\n" in code
    assert "async def add_import(\n" in code
    _write(tmp_path / "kwgen.py", code)
    _write(tmp_path / "kwimpl.py", KEYWORD_EXECUTOR)
    # The executor written against the generated protocol satisfies it ...
    assert _mypy_errors(tmp_path, "kwgen.py", "kwimpl.py") == []
    gen = _import(tmp_path / "kwgen.py", "kwgen")
    impl = _import(tmp_path / "kwimpl.py", "kwimpl")
    # ... and the loader finds every method it needs on it.
    rt = Runtime(str(tmp_path / "app.db"), tasks=tasks, executor=impl.executor)
    async with rt:
        imported = await gen.add_import(rt, gen.ImportParameters(from_="legacy.csv"))
        info = await rt.wait(imported, timeout=10)
        assert (info.status, info.result) == (JobStatus.SUCCESS, "imported legacy.csv")
        matched = await gen.add_match(rt, gen.MatchParameters(pattern="x*"))
        assert (await rt.wait(matched, timeout=10)).status is JobStatus.FAILURE
        data = await gen.add_data(rt, gen.DataParameters())
        assert (await rt.wait(data, timeout=10)).result == "data"
    assert impl.FAILED == [(matched, gen.MatchParameters(pattern="x*"))]
