"""Loading task files: Yao JSON and Anchor YAML into TaskSpecs, and every problem they can have."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

import pytest
from core_support import until

from taskrt import InvalidOption, JobStatus, Runtime, ValidationError
from taskrt.retry import RetryPolicy
from taskrt.taskfiles import DefinitionError, Problem, check_tasks, load_tasks, snake_case
from taskrt.taskfiles.jsonc import JsoncError, parse, strip
from taskrt.web.errors import status_of

FIXTURES = Path(__file__).parent / "fixtures"
YAO_APP = FIXTURES / "yao_app"
ANCHOR_APP = FIXTURES / "anchor_app"


def _package(root: Path, source: str) -> str:
    """Write ``source`` as a fresh module under ``root``; returns its import name."""
    name = f"handlers_{uuid.uuid4().hex[:12]}"
    (root / f"{name}.py").write_text(textwrap.dedent(source))
    return name


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def _problems(path: Path, **kwargs: Any) -> list[Problem]:
    with pytest.raises(DefinitionError) as caught:
        load_tasks(path, **kwargs)
    return caught.value.problems


def _lines(problems: list[Problem], base: Path) -> list[str]:
    return [str(p).replace(str(base) + "/", "") for p in problems]


@pytest.fixture
def executor() -> Any:
    sys.path.insert(0, str(ANCHOR_APP))
    try:
        from shop.executor import Executor
    finally:
        sys.path.remove(str(ANCHOR_APP))
    return Executor()


# -- the JSON-with-comments reader ----------------------------------------------------


def test_strip_keeps_strings_and_positions() -> None:
    text = '{"url": "http://x//y", /* a\n comment */ "n": 1, // end\n "l": [1, 2,],}'
    clean = strip(text)
    assert len(clean) == len(text)
    assert clean.count("\n") == text.count("\n")
    assert parse(text).value == {"url": "http://x//y", "n": 1, "l": [1, 2]}


def test_parse_knows_lines_and_duplicates() -> None:
    parsed = parse(
        '{\n  "a": 1,\n  "b": {\n    "c": [\n      1,\n      {"d": 2}\n    ]\n  },\n  "a": 3\n}'
    )
    assert parsed.lines[("a",)] == 2
    assert parsed.lines[("b", "c")] == 4
    assert parsed.lines[("b", "c", 1)] == 6
    assert parsed.lines[("b", "c", 1, "d")] == 6
    assert parsed.duplicates == [(("a",), 9)]


@pytest.mark.parametrize("end", ["\n", "\r\n", "\r"])
def test_lines_end_as_in_json(tmp_path: Path, end: str) -> None:
    # A bug hunt: with "\r" line ends only, every problem was on line 1, and a // comment
    # ran to the end of the file.
    lines = ["{", '  "a": 1, // one', '  "b": {', '    "c": [1,', '      {"d": 2}]', "  },"]
    parsed = parse(end.join([*lines, '  "a": 3', "}"]))
    assert parsed.value == {"a": 3, "b": {"c": [1, {"d": 2}]}}
    assert (parsed.lines[("b",)], parsed.lines[("b", "c", 1, "d")]) == (3, 5)
    assert parsed.duplicates == [(("a",), 7)]
    for text, line, fragment in [
        (end.join(["{", '  "a": 1', '  "b": 2', "}"]), 3, "Expecting ',' delimiter (column 3)"),
        (end.join(["{", '  "a": 1', "  /* open"]), 3, "unterminated /* comment"),
    ]:
        with pytest.raises(JsoncError) as caught:
            parse(text)
        assert (caught.value.line, fragment in caught.value.message) == (line, True)
    module = _package(tmp_path, "def send(job_id): pass\n")
    file = tmp_path / "tasks" / "t.yao"
    file.parent.mkdir()
    file.write_bytes(
        end.join(["{", f'  "process": "{module}.send",', '  "worker_num": 2', "}"]).encode()
    )
    assert _lines(_problems(file), tmp_path) == [
        "tasks/t.yao:3: worker_num: unknown field 'worker_num'; did you mean 'worker_nums'?"
    ]


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ('{\n  "a": 1\n  /* open', 3, "unterminated /* comment"),
        ('{\n  "a": 1\n  "b": 2\n}', 3, "Expecting ',' delimiter"),
        ('{"a": NaN}', None, "NaN is not a JSON number"),
        ("[" * 100_000, None, "nested too deeply"),
        # A trailing comma follows a value; a comma that follows nothing is a mistake.
        ("{,}", 1, "Expecting property name enclosed in double quotes (column 2)"),
        ("[\n  ,\n]", 2, "Expecting value (column 3)"),
        ("[1, /* c */ ,]", 1, "Expecting value (column 13)"),
        ('{"a": ,}', 1, "Expecting value (column 7)"),
    ],
)
def test_parse_errors_say_where(text: str, line: int | None, fragment: str) -> None:
    with pytest.raises(JsoncError) as caught:
        parse(text)
    assert caught.value.line == line
    assert fragment in caught.value.message


# -- Yao -----------------------------------------------------------------------------


def test_yao_example_app_loads_as_written() -> None:
    specs = {s.name: s for s in load_tasks(YAO_APP / "tasks")}
    assert sorted(specs) == ["flaky", "plain", "strict", "test"]
    test = specs["test"]
    import scripts.task as script  # importable now: the root was put on sys.path

    assert Path(script.__file__).resolve() == (YAO_APP / "scripts" / "task.py").resolve()
    assert test.display_name == "test task"
    assert test.pool == "test"
    assert (test.pool_concurrency, test.pool_capacity) == (10, 1000)
    assert test.attempts == 3
    assert test.retry == RetryPolicy(delays=(0.2,))
    assert test.timeout == 2.0
    assert test.call == "id"
    assert test.handler is script.Send
    assert test.hooks.next_id is script.NextID
    # the sync hooks, queued on the task's own thread (docs/task-files.md)
    assert getattr(test.hooks.on_add, "__wrapped__", None) is script.OnAdd
    assert getattr(test.hooks.on_success, "__wrapped__", None) is script.OnSuccess
    assert getattr(test.hooks.on_error, "__wrapped__", None) is script.OnError
    assert getattr(test.hooks.on_progress, "__wrapped__", None) is script.OnProgress
    assert test.hooks.on_failed is None
    assert test.source == str(YAO_APP / "tasks" / "test.yao")


def test_yao_defaults_are_yaos(tmp_path: Path) -> None:
    module = _package(tmp_path, "def run(job_id, *args):\n    return args\n")
    _write(tmp_path / "tasks" / "mail" / "send.jsonc", f'{{"process": "{module}.run"}}')
    (spec,) = load_tasks(tmp_path / "tasks")
    assert spec.name == "mail.send"  # folders become dotted ids
    assert spec.display_name == "mail.send"
    assert (spec.pool, spec.pool_concurrency, spec.pool_capacity) == ("mail.send", 1, 1024)
    assert (spec.attempts, spec.retry, spec.timeout) == (1, RetryPolicy(delays=(0.2,)), 300.0)


def test_yao_problems_are_all_reported_with_lines(tmp_path: Path) -> None:
    _write(
        tmp_path / "tasks" / "bad.yao",
        """
        {
          "name": 7,
          "worker_num": 3,
          "attempts": -1,
          "attempt_after": "soon",
          "timeout": 0,
          "size": 2.5,
          "event": {
            "nxt": "x.y",
            "add": "nowhere_at_all.OnAdd",
          },
          "name": "again",
        }
        """,
    )
    problems = _problems(tmp_path / "tasks")
    assert _lines(problems, tmp_path) == [
        "tasks/bad.yao:12: name: field 'name' is given twice",
        "tasks/bad.yao:3: worker_num: unknown field 'worker_num'; did you mean 'worker_nums'?",
        "tasks/bad.yao:7: size: expected a positive queue size, found 2.5",
        "tasks/bad.yao:4: attempts: expected a number of attempts (0 or more), found -1",
        "tasks/bad.yao:5: attempt_after: expected milliseconds, found 'soon'",
        "tasks/bad.yao:1: process: missing field 'process': the handler, "
        "a dotted path like 'scripts.task.Send'",
        "tasks/bad.yao:9: event.nxt: unknown field 'nxt'; did you mean 'next'?",
        "tasks/bad.yao:10: event.add: no module 'nowhere_at_all' can be imported "
        f"(root {tmp_path})",
    ]
    assert problems[1] == Problem(
        file=str(tmp_path / "tasks" / "bad.yao"),
        line=3,
        field="worker_num",
        found="worker_num",
        expected="worker_nums",
        message="unknown field 'worker_num'; did you mean 'worker_nums'?",
    )


def test_yao_file_that_is_not_json(tmp_path: Path) -> None:
    _write(tmp_path / "tasks" / "a.yao", '{\n  "name": "x"\n  "process": "a.b"\n}')
    _write(tmp_path / "tasks" / "b.json", "[1, 2]")
    assert _lines(_problems(tmp_path / "tasks"), tmp_path) == [
        "tasks/a.yao:3: not valid JSON: Expecting ',' delimiter (column 3)",
        "tasks/b.json:1: expected a JSON object with the task's fields, found a list",
    ]


# -- dotted paths ------------------------------------------------------------------------


def test_dotted_paths_that_do_not_import(tmp_path: Path) -> None:
    ok = _package(tmp_path, "VALUE = 3\n\ndef run(job_id):\n    pass\n")
    broken = _package(tmp_path, "raise RuntimeError('no database')\n")
    needs = _package(tmp_path, "import not_installed_anywhere\n")
    cases = {
        "a": "justoneword",
        "b": f"{ok}.missing",
        "c": f"{ok}.VALUE",
        "d": f"{broken}.run",
        "e": f"{needs}.run",
    }
    for name, path in cases.items():
        _write(tmp_path / "tasks" / f"{name}.yao", f'{{"process": "{path}"}}')
    messages = [p.message for p in _problems(tmp_path / "tasks")]
    assert messages == [
        "expected a dotted path like 'scripts.task.Send' (module, then attribute), "
        "found 'justoneword'",
        f"'{ok}' has no attribute 'missing'",
        f"'{ok}.VALUE' is a int, not a callable",
        f"importing '{broken}' raised RuntimeError: no database",
        f"importing '{needs}' failed: No module named 'not_installed_anywhere'",
    ]


def test_root_is_configurable(tmp_path: Path) -> None:
    app = tmp_path / "elsewhere"
    app.mkdir()
    module = _package(app, "def run(job_id):\n    return 1\n")
    _write(tmp_path / "defs" / "t.yao", f'{{"process": "{module}.run"}}')
    assert _problems(tmp_path / "defs")[0].message.startswith(f"no module '{module}'")
    (spec,) = load_tasks(tmp_path / "defs", root=app)
    assert spec.handler.__module__ == module


def test_a_package_linked_into_the_root_is_the_roots(tmp_path: Path) -> None:
    # app/scripts -> ../shared/scripts: the package's files live outside the root,
    # but the root is where it was imported from (it was refused as "imported from
    # elsewhere" when its resolved location had to be under the root)
    name = f"scripts_{uuid.uuid4().hex[:12]}"
    _write(tmp_path / "shared" / name / "__init__.py", "")
    _write(tmp_path / "shared" / name / "task.py", "def Send(task_id):\n    return 'ok'\n")
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / name).symlink_to(Path("..") / "shared" / name)
    _write(tmp_path / "app" / "tasks" / "test.yao", f'{{"process": "{name}.task.Send"}}')
    (spec,) = load_tasks(tmp_path / "app" / "tasks")
    assert spec.handler.__module__ == f"{name}.task"
    (again,) = load_tasks(tmp_path / "app" / "tasks")  # imported already, from the root
    assert again.handler is spec.handler


def test_a_package_imported_from_elsewhere_is_reported(tmp_path: Path) -> None:
    name = f"scripts_{uuid.uuid4().hex[:12]}"
    _write(tmp_path / "other" / name / "__init__.py", "def Send(task_id):\n    pass\n")
    sys.path.insert(0, str(tmp_path / "other"))
    try:
        __import__(name)
    finally:
        sys.path.remove(str(tmp_path / "other"))
    _write(tmp_path / "app" / name / "__init__.py", "def Send(task_id):\n    pass\n")
    _write(tmp_path / "app" / "tasks" / "test.yao", f'{{"process": "{name}.Send"}}')
    (problem,) = _problems(tmp_path / "app" / "tasks")
    assert problem.message == (
        f"module '{name}' was already imported from {tmp_path / 'other' / name}, "
        f"not from the root {tmp_path / 'app'}; "
        "rename one of them or load the tasks in a fresh process"
    )


def test_folders_linked_in_are_read_once_each(tmp_path: Path) -> None:
    # A bug hunt: a subfolder reached through a link was skipped without a word.
    module = _package(tmp_path, "def send(job_id): pass\n")
    task = f'{{"process": "{module}.send"}}'
    tasks = tmp_path / "tasks"
    _write(tasks / "a.yao", task)
    _write(tmp_path / "shared" / "mail" / "send.yao", task)
    (tasks / "mail").symlink_to(Path("..", "shared", "mail"))
    (tasks / "post").symlink_to(Path("..", "shared", "mail"))  # the same folder again
    (tasks / "self").symlink_to(Path("."))  # a loop
    (tmp_path / "shared" / "mail" / "up").symlink_to(tasks)  # another, from the other side
    assert [spec.name for spec in load_tasks(tasks)] == ["a", "mail.send"]
    # From the other side: up/ is tasks/, whose links lead back to folders read already.
    assert [spec.name for spec in load_tasks(tasks / "mail")] == ["send", "up.a"]


def test_duplicate_task_ids_across_files(tmp_path: Path) -> None:
    module = _package(tmp_path, "def run(*args, **kwargs):\n    pass\n")
    _write(tmp_path / "tasks" / "SendEmail.json", f'{{"process": "{module}.run"}}')
    _write(
        tmp_path / "tasks" / "more.yaml",
        f"""
        tasks:
          - name: Other
            process: {module}.run
          - name: SendEmail
            process: {module}.run
          - name: Other
            process: {module}.run
        """,
    )
    assert _lines(_problems(tmp_path / "tasks"), tmp_path) == [
        "tasks/more.yaml:6: tasks[2].name: duplicate task id 'Other': also defined on line 2",
        "tasks/more.yaml:4: duplicate task id 'SendEmail': also defined in tasks/SendEmail.json",
    ]


def test_missing_path_and_wrong_suffix(tmp_path: Path) -> None:
    assert _lines(_problems(tmp_path / "nope"), tmp_path) == ["nope: no such file or folder"]
    _write(tmp_path / "tasks.toml", "x = 1")
    (problem,) = _problems(tmp_path / "tasks.toml")
    assert problem.message.startswith("not a task file: expected one of .yao, .json")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_path_that_is_not_a_regular_file_is_a_problem_and_never_read(tmp_path: Path) -> None:
    # A bug hunt: a link to /dev/zero was read until memory ran out (MemoryError), and
    # a FIFO with no writer blocked the loader (taskrt validate, rt.load) forever.
    tasks = tmp_path / "tasks"
    module = _package(tmp_path, "def send(job_id): pass\n")
    _write(tasks / "ok.yao", f'{{"process": "{module}.send"}}')
    os.mkfifo(tasks / "fifo.yao")
    (tasks / "zero.yaml").symlink_to("/dev/zero")
    specs, problems = check_tasks(tasks)
    assert [spec.name for spec in specs] == ["ok"]
    assert _lines(problems, tmp_path) == [
        "tasks/fifo.yao: cannot read: not a regular file but a FIFO",
        "tasks/zero.yaml: cannot read: not a regular file but a character device",
    ]
    assert _lines(_problems(tasks / "fifo.yao"), tmp_path) == [
        "tasks/fifo.yao: cannot read: not a regular file but a FIFO"
    ]


def test_a_file_read_past_the_limit_is_too_big_whatever_its_size_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import taskrt.taskfiles as taskfiles

    big = _write(tmp_path / "tasks" / "big.yao", '{"process": "x"}' + " " * 64)
    monkeypatch.setattr(taskfiles, "MAX_FILE_BYTES", 64)
    assert _lines(_problems(big), tmp_path) == [
        f"tasks/big.yao: cannot read: {big.stat().st_size} bytes is more than the 64 bytes "
        "a task file may have"
    ]
    # A /proc file says it is empty (st_size 0) and is read only up to the limit.
    status = Path("/proc/self/status")
    if not status.is_file():
        pytest.skip("no /proc here")
    lying = tmp_path / "tasks" / "lying.json"
    lying.symlink_to(status)
    assert lying.stat().st_size == 0
    assert _lines(_problems(lying), tmp_path) == [
        "tasks/lying.json: cannot read: it has more than the 64 bytes a task file may have"
    ]


# -- Anchor --------------------------------------------------------------------------


def test_anchor_example_app_loads_with_an_executor(executor: Any) -> None:
    specs = {s.name: s for s in load_tasks(ANCHOR_APP / "tasks.yaml", executor=executor)}
    assert list(specs) == ["SendEmail", "ProcessOrder", "deleteOpaqueKey", "DailyCleanup"]
    send = specs["SendEmail"]
    assert send.description == "Send an email to a user"
    assert send.pool == "default"
    assert send.attempts is None  # maxAttempts: -1
    assert send.retry == RetryPolicy(delays=(300.0,))
    assert send.timeout == 3600.0  # the default hour
    assert send.parameters is not None and send.parameters["required"] == ["userId", "templateId"]
    assert send.hooks.on_failed is None
    assert send.cron is None
    assert send.handler.__name__ == "execute_send_email"  # snake_case convention
    assert specs["ProcessOrder"].handler.__name__ == "execute_ProcessOrder"  # literal name
    assert specs["ProcessOrder"].timeout == 600.0
    assert specs["ProcessOrder"].retry == RetryPolicy(delays=(1800.0,))
    assert specs["ProcessOrder"].hooks.on_failed is not None
    assert specs["deleteOpaqueKey"].hooks.on_failed is not None
    daily = specs["DailyCleanup"]
    assert (daily.cron, daily.cron_tz, daily.attempts) == ("0 0 2 * * *", "UTC", 1)
    with pytest.raises(ValidationError) as caught:
        send.validate((), {"userId": "7", "templateId": "welcome"})
    assert caught.value.parameter == "userId"


def test_anchor_without_an_executor_names_the_methods_it_needs() -> None:
    problems = _problems(ANCHOR_APP / "tasks.yaml")
    assert [(p.line, p.field) for p in problems] == [
        (3, "tasks[0].name"),
        (20, "tasks[1].name"),
        (36, "tasks[2].name"),
        (52, "tasks[3].name"),
    ]
    assert problems[0].message == (
        "task 'SendEmail' has no handler: give 'process:' or load with an executor that has "
        "execute_send_email or execute_SendEmail"
    )


def test_anchor_executor_missing_a_hook(tmp_path: Path) -> None:
    _write(
        tmp_path / "tasks.yaml",
        """
        tasks:
          - name: ProcessOrder
            events: [onFailed]
        """,
    )

    class Partial:
        def execute_process_order(self, params: dict[str, Any]) -> None: ...

    (problem,) = _problems(tmp_path / "tasks.yaml", executor=Partial())
    assert (problem.line, problem.field) == (3, "tasks[0].events")
    assert problem.message == (
        "events lists onFailed but the executor Partial has no on_process_order_failed or "
        "on_ProcessOrder_failed (or give hooks: {onFailed: pkg.module.function})"
    )


def test_anchor_problems_are_all_reported_with_lines(tmp_path: Path) -> None:
    _write(
        tmp_path / "tasks.yaml",
        """
        tasks:
          - name: SendEmail
            descripton: typo
            parameters:
              type: object
              properties:
                userId:
                  type: integr
            retryPolicy:
              interval: 1x
              maxAttempts: 0
            cronjob:
              cronExpression: "0 0 25 * * *"
            events: [onFailure]
            timeout: forever
            process: nowhere_at_all.module.func
          - name: bad name
          - 42
          - name: Dates
            parameters:
              type: object
              properties:
                when:
                  default: 2024-01-01
            retryPolicy: {interval: 5s}
            cronjob: {cronExpresion: "* * * * * *"}
            process: os.path.join
        extra: 1
        """,
    )
    assert _lines(_problems(tmp_path / "tasks.yaml"), tmp_path) == [
        "tasks.yaml:28: extra: unknown field 'extra'; expected one of tasks",
        "tasks.yaml:3: tasks[0].descripton: unknown field 'descripton'; "
        "did you mean 'description'?",
        "tasks.yaml:8: tasks[0].parameters.properties.userId.type: invalid JSON Schema: "
        "'integr' is not valid under any of the given schemas",
        "tasks.yaml:10: tasks[0].retryPolicy.interval: bad interval '1x': expected a duration "
        "like '30s' or a list like '1m,2m,4m'",
        "tasks.yaml:11: tasks[0].retryPolicy.maxAttempts: expected a positive integer, "
        "or -1 for unlimited, found 0",
        "tasks.yaml:13: tasks[0].cronjob.cronExpression: cron expression '0 0 25 * * *': "
        "hour field '25': 25 is out of range; expected 0-23, with *, lists a,b, ranges a-b "
        "and steps */n",
        "tasks.yaml:14: tasks[0].events[0]: unknown event 'onFailure'; did you mean 'onFailed'?",
        "tasks.yaml:15: tasks[0].timeout: bad duration 'forever': expected a duration like "
        "'200ms', '30s', '10m' or '1h30m'",
        f"tasks.yaml:16: tasks[0].process: no module 'nowhere_at_all.module' can be imported "
        f"(root {tmp_path.parent})",
        "tasks.yaml:17: tasks[1].name: bad task name 'bad name': expected a name made of "
        "letters, digits and '_' (e.g. SendEmail)",
        "tasks.yaml:18: tasks[2]: expected a task definition (a mapping with 'name:'), found 42",
        "tasks.yaml:24: tasks[3].parameters.properties.when.default: datetime.date(2024, 1, 1) "
        "is not a JSON value (quote it to make it a string)",
        "tasks.yaml:25: tasks[3].retryPolicy.maxAttempts: missing field 'maxAttempts': "
        "a positive integer, or -1 for unlimited",
        "tasks.yaml:26: tasks[3].cronjob.cronExpresion: unknown field 'cronExpresion'; "
        "did you mean 'cronExpression'?",
        "tasks.yaml:26: tasks[3].cronjob.cronExpression: missing field 'cronExpression' "
        "(six fields, seconds first, e.g. '0 0 2 * * *')",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "tasks.yaml:1: the file is empty: expected a mapping with a 'tasks:' list"),
        (
            "tasks: [\n",
            "tasks.yaml:2: not valid YAML: while parsing a flow node, expected the node "
            "content, but found '<stream end>'",
        ),
        ("- 1\n", "tasks.yaml:1: expected a mapping with a 'tasks:' list, found a list"),
        (
            "tasks: {}\n",
            "tasks.yaml:1: tasks: expected a list of task definitions, found an object",
        ),
        ("name: x\n", "tasks.yaml:1: name: unknown field 'name'; expected one of tasks"),
        (
            "d: 2024-13-45\n",
            "tasks.yaml:1: d: invalid date '2024-13-45': month must be in 1..12 "
            "(quote it to keep it as text)",
        ),
        (
            "tasks:\n  - " + "[" * 5000 + "]" * 5000 + "\n",
            "tasks.yaml:2: the document is nested more than 100 levels deep",
        ),
        (
            "tasks:\n" + "".join(" " * i + f"k{i}:\n" for i in range(1, 200)),
            "tasks.yaml:101: the document is nested more than 100 levels deep",
        ),
        (
            "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
            + "".join(
                f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
                for p, c in zip("abcdef", "bcdefg", strict=True)
            ),
            "tasks.yaml:1: the document is too large or too deep once its aliases are expanded "
            "(more than 50000 values or 100 levels)",
        ),
    ],
)
def test_anchor_documents_that_are_not_task_lists(tmp_path: Path, text: str, expected: str) -> None:
    (tmp_path / "tasks.yaml").write_text(text)
    problems = _problems(tmp_path / "tasks.yaml")
    assert _lines(problems, tmp_path)[0] == expected


def test_anchor_process_handlers_get_the_parameters_as_keywords(tmp_path: Path) -> None:
    module = _package(
        tmp_path,
        """
        CALLS = []

        async def send(job, userId, templateId="welcome"):
            CALLS.append((job, userId, templateId))

        def failed(job_id, params, tx):
            CALLS.append(("failed", job_id, params, tx))
        """,
    )
    _write(
        tmp_path / "tasks" / "tasks.yml",
        f"""
        tasks:
          - name: SendEmail
            parameters:
              type: object
              required: [userId]
              properties:
                userId: {{type: integer}}
                templateId: {{type: string}}
                extra: {{type: string}}
            events: [onFailed]
            hooks: {{onFailed: {module}.failed}}
            process: {module}.send
            pool: mail
            priority: 5
        """,
    )
    (spec,) = load_tasks(tmp_path / "tasks")
    assert (spec.pool, spec.priority, spec.call) == ("mail", 5, "context")
    spec.validate(({"userId": 1},), {})
    with pytest.raises(ValidationError) as caught:
        # valid for the schema, but send() takes no such keyword
        spec.validate((), {"userId": 1, "extra": "x"})
    assert caught.value.parameter == "extra"

    import asyncio

    asyncio.run(spec.handler("ctx", {"userId": 1}))
    asyncio.run(spec.handler("ctx", userId=2, templateId="bye"))

    class Job:
        id = 9
        args = ()
        kwargs = {"userId": 3}

    spec.hooks.on_failed(Job(), "tx")  # type: ignore[misc]
    calls = sys.modules[module].CALLS
    assert calls == [
        ("ctx", 1, "welcome"),
        ("ctx", 2, "bye"),
        ("failed", 9, {"userId": 3}, "tx"),
    ]


# -- on a real runtime -----------------------------------------------------------------


async def test_runtime_refuses_to_start_with_bad_files(tmp_path: Path) -> None:
    _write(tmp_path / "tasks" / "t.yao", '{"process": "nope_nothing.run", "size": "big"}')
    db = tmp_path / "app.db"
    rt = Runtime(str(db), tasks=tmp_path / "tasks")
    with pytest.raises(DefinitionError) as caught:
        async with rt:
            pytest.fail("the runtime started")
    assert [p.field for p in caught.value.problems] == ["size", "process"]
    assert not rt.started
    assert not db.exists()  # failed before the database was opened


async def test_rt_load_registers_the_tasks_and_their_pools(tmp_path: Path) -> None:
    rt = Runtime(str(tmp_path / "app.db"))
    tasks = rt.load(YAO_APP / "tasks")
    assert [t.name for t in tasks] == ["flaky", "plain", "strict", "test"]
    assert rt.tasks["test"].validator is not None  # params.attach ran
    pool = rt.pools["test"]
    assert (pool.concurrency, pool.capacity) == (10, 1000)


def test_a_yao_tasks_pool_is_its_own(tmp_path: Path) -> None:
    """A Yao file named after a pool in use (``tasks/default.yao``, a pool the
    application set up, another task's) set that pool's limits to the file's (Yao's
    defaults: concurrency 1, capacity 1024) for every task in it, without a word."""
    module = _package(tmp_path, "def send(job_id): pass\n")
    yao = f'{{"process": "{module}.send", "worker_nums": 2, "size": 5}}'
    rt = Runtime(str(tmp_path / "app.db"))

    @rt.task()
    async def work() -> None: ...

    @rt.task(pool="mail")
    async def letters() -> None: ...

    rt.pool("reports", concurrency=4, capacity=40)
    limits = {name: (p.concurrency, p.capacity) for name, p in rt.pools.items()}

    # The default pool: refused as the file is read (taskrt validate says so too).
    default = _write(tmp_path / "d" / "default.yao", yao)
    (problem,) = _problems(default)
    assert problem.file == str(default) and problem.found == "default"
    assert "the pool of every task that names none" in problem.message
    # Another task's pool, and one the application set up: refused by rt.load.
    for name, who in (("mail", "task 'letters' runs in it too"), ("reports", "rt.pool()")):
        file = _write(tmp_path / name / f"{name}.yao", yao)
        with pytest.raises(InvalidOption, match=re.escape(who)) as caught:
            rt.load(file)
        assert caught.value.field == "pool" and caught.value.source == str(file)
        assert f"its pool {name!r}" in str(caught.value)
        assert name not in rt.tasks
    assert {name: (p.concurrency, p.capacity) for name, p in rt.pools.items()} == limits

    # A pool of its own is the task's alone: no other task may run in it.
    own = _write(tmp_path / "tasks" / "sms.yao", yao)
    rt.load(own)
    with pytest.raises(InvalidOption, match="belongs to task 'sms'"):
        rt.task(name="other", pool="sms")(work)
    assert "other" not in rt.tasks
    # Its limits are the file's: set by the application meanwhile, the file loaded
    # again (changed) still sets them, as it always did.
    rt.pool("sms", concurrency=9)
    _write(own, yao.replace('"worker_nums": 2, "size": 5', '"worker_nums": 3, "size": 6'))
    rt.load(own)
    assert (rt.pools["sms"].concurrency, rt.pools["sms"].capacity) == (3, 6)


def test_yao_pool_clashes_among_the_files_of_one_load(tmp_path: Path) -> None:
    module = _package(tmp_path, "def send(job_id): pass\n")
    folder = tmp_path / "tasks"
    _write(folder / "mail.yao", f'{{"process": "{module}.send"}}')
    anchor = _write(
        folder / "api.yaml",
        f"""
        tasks:
          - name: Notify
            process: {module}.send
            pool: mail
        """,
    )
    specs, problems = check_tasks(folder)
    assert [spec.name for spec in specs] == ["Notify"]
    assert _lines(problems, tmp_path) == [
        "tasks/mail.yao: task 'mail' sets the limits of its pool 'mail', but task 'Notify' "
        "(in tasks/api.yaml) runs in it too (a Yao task's pool is named after its file: "
        "rename the file)"
    ]
    assert problems[0].expected == "a pool no other task runs in"

    # Loaded again, a task that left the pool no longer counts (checked as they will be).
    rt = Runtime(str(tmp_path / "app.db"))
    (folder / "mail.yao").unlink()
    rt.load(folder)
    assert rt.tasks["Notify"].pool == "mail"
    _write(folder / "mail.yao", f'{{"process": "{module}.send"}}')
    _write(anchor, anchor.read_text().replace("pool: mail", "pool: other"))
    assert sorted(t.name for t in rt.load(folder)) == ["Notify", "mail"]
    assert rt.tasks["Notify"].pool == "other" and rt.tasks["mail"].pool == "mail"


async def test_yao_sync_hooks_run_off_the_loop_in_order(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A task file's sync event hooks ran on the event loop: a progress hook that
    blocks (a database write, in Yao apps) stalled every job, and the watchdog
    blamed the handler. Here the first progress hook blocks until the loop has
    ticked five times: on the loop, nothing could tick, and it gave up."""
    module = _package(
        tmp_path,
        """
        import threading

        SEEN = []
        BLOCKED, RELEASED = threading.Event(), threading.Event()

        def Send(job_id):
            for current in (1, 2, 3):
                RT.progress(job_id, current, 3, f"{current}/3")
            return "sent"

        def OnAdd(job_id):
            raise RuntimeError("no database")

        def OnProgress(job_id, current, total, message):
            if current == 1:
                BLOCKED.set()
                SEEN.append(("released", RELEASED.wait(timeout=2)))
            SEEN.append(("progress", current, message))

        def OnSuccess(job_id, result):
            SEEN.append(("success", result))
        """,
    )
    events = '"add": "{0}.OnAdd", "progress": "{0}.OnProgress", "success": "{0}.OnSuccess"'
    _write(
        tmp_path / "tasks" / "send.yao",
        f'{{"process": "{module}.Send", "event": {{{events.format(module)}}}}}',
    )
    rt = Runtime(str(tmp_path / "app.db"), tasks=tmp_path / "tasks")
    async with rt:
        hooks = sys.modules[module]
        hooks.RT = rt
        job_id = await rt.add("send")
        await until(hooks.BLOCKED.is_set)
        for _ in range(5):
            await asyncio.sleep(0.001)  # the loop turns while the hook blocks
        hooks.RELEASED.set()
        assert (await rt.wait(job_id, timeout=10)).status is JobStatus.SUCCESS
        await until(lambda: len(hooks.SEEN) == 5)
    assert hooks.SEEN == [
        ("released", True),
        ("progress", 1, "1/3"),
        ("progress", 2, "2/3"),
        ("progress", 3, "3/3"),
        ("success", "sent"),
    ]
    assert "hook OnAdd raised" in caplog.text  # logged; the job ran all the same


async def test_a_yao_sync_hook_raising_stop_iteration_is_logged_and_stop_does_not_wait_for_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A sync hook runs in the task's thread and the runtime awaits its future. A
    StopIteration (or GeneratorExit) it raised could not be set on that future
    (asyncio refuses it): the future never finished, so the hook's background task
    was never done and the runtime's stop waited its whole grace for it."""
    module = _package(
        tmp_path,
        """
        def Send(job_id):
            RT.progress(job_id, 1, 1, "done")
            return "sent"

        def OnSuccess(job_id, result):
            raise StopIteration

        def OnProgress(job_id, current, total, message):
            raise GeneratorExit
        """,
    )
    events = '"success": "{0}.OnSuccess", "progress": "{0}.OnProgress"'
    _write(
        tmp_path / "tasks" / "send.yao",
        f'{{"process": "{module}.Send", "event": {{{events.format(module)}}}}}',
    )
    rt = Runtime(str(tmp_path / "app.db"), tasks=tmp_path / "tasks", grace=30)
    async with rt:
        sys.modules[module].RT = rt
        job_id = await rt.add("send")
        assert (await rt.wait(job_id, timeout=10)).status is JobStatus.SUCCESS
        await until(lambda: "hook OnSuccess raised" in caplog.text)
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 5  # not the grace of 30 s
    assert "RuntimeError: the hook raised StopIteration" in caplog.text
    assert "hook OnProgress raised" in caplog.text
    assert "RuntimeError: the hook raised GeneratorExit" in caplog.text


def _not_utf8_name(folder: Path, suffix: str) -> Path:
    """A file whose name is the byte 0xFF, which no UTF-8 text holds (skips where the
    file system refuses such a name)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / os.fsdecode(b"b\xff" + suffix.encode())
    try:
        path.write_text('{"process": "os.path.join"}')
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system takes only UTF-8 names")
    return path


def test_text_that_is_not_utf8_in_a_task_file_is_a_problem_naming_its_field(
    tmp_path: Path,
) -> None:
    """A lone surrogate (JSON's and YAML's ``\\ud800`` escape) in a description or a
    parameter's name passed validation, and then ``GET /tasks`` answered 500 for
    every task. It is a problem of its file and field, and nothing loads."""
    folder = tmp_path / "tasks"
    _write(folder / "a.yao", '{"process": "os.path.join", "description": "bad \\ud800 text"}')
    anchor = _write(
        tmp_path / "anchor.yaml",
        """
        tasks:
          - name: AnchorKey
            handler: os.path.join
            parameters:
              type: object
              properties:
                "k\\ud800": {type: integer}
        """,
    )
    (yao,) = _problems(folder)
    assert (yao.file, yao.line, yao.field) == (f"{folder}/a.yao", 1, "description")
    assert yao.message == "the text is not valid UTF-8 (a lone surrogate)"
    assert yao.found == "bad \\ud800 text"
    specs, (key,) = check_tasks(anchor, require_handlers=False)
    assert specs == []
    assert (key.line, key.field) == (6, "tasks[0].parameters.properties")
    assert key.message == "the field name 'k\\ud800' is not valid UTF-8 (a lone surrogate)"
    rt = Runtime(str(tmp_path / "app.db"))
    with pytest.raises(DefinitionError):
        rt.load(folder)
    assert rt.tasks == {}


def test_a_task_name_the_stores_cannot_hold_is_refused_at_registration(tmp_path: Path) -> None:
    """``rt.task(name=...)`` took a lone surrogate or a NUL, which failed the first
    add's write batch (and ``GET /tasks``); the pool's name was checked already."""
    rt = Runtime(str(tmp_path / "app.db"))
    for name, why in (("a\ud800", "lone surrogate"), ("a\x00b", "without NUL")):
        with pytest.raises(InvalidOption, match=why) as caught:
            rt.task(name=name)(os.path.join)
        assert caught.value.field == "name"
    with pytest.raises(InvalidOption, match="lone surrogate") as caught:
        rt.task(name="ok", description="bad \udc80")(os.path.join)
    assert caught.value.field == "description"
    assert rt.tasks == {}


def test_a_yao_file_name_that_is_not_utf8_is_a_problem_and_loads_nothing(
    tmp_path: Path,
) -> None:
    """The task id (and pool) a Yao file takes from its name held a lone surrogate: the
    folder loaded and validated, then rt.load registered the tasks before it and failed
    on that pool, breaking 'all or none'."""
    folder = tmp_path / "tasks"
    _write(folder / "a.yao", '{"process": "os.path.join"}')
    bad = _not_utf8_name(folder, ".yao")
    (problem,) = _problems(folder)
    assert (problem.file, problem.line, problem.field) == (f"{folder}/b\\xff.yao", None, "")
    assert str(bad) != problem.file  # the name as read holds a lone surrogate no output takes
    assert problem.message == (
        "the file name is not valid UTF-8, and a Yao task's id is taken from it: rename the file"
    )

    rt = Runtime(str(tmp_path / "app.db"))
    with pytest.raises(DefinitionError):
        rt.load(folder)
    assert rt.tasks == {} and "a" not in rt.pools


def test_an_anchor_pool_the_runtime_refuses_is_a_problem(tmp_path: Path) -> None:
    """A pool name with a NUL character loaded, and rt.load then registered the task
    before it and failed on it; a task in code under such a pool stayed registered."""
    _write(
        tmp_path / "tasks.yaml",
        """
        tasks:
          - name: A
            process: os.path.join
          - name: B
            process: os.path.join
            pool: "mail\\0"
        """,
    )
    (problem,) = _problems(tmp_path / "tasks.yaml")
    assert (problem.line, problem.field) == (6, "tasks[1].pool")
    assert problem.message == "expected text without NUL characters, found 'mail\\x00'"

    rt = Runtime(str(tmp_path / "app.db"))

    def send() -> None: ...

    with pytest.raises(InvalidOption, match="pool"):
        rt.task(name="send", pool="mail\0")(send)
    assert "send" not in rt.tasks and "mail\0" not in rt.pools


def test_loading_an_anchor_folder_again_replaces_its_own_tasks(tmp_path: Path) -> None:
    """An Anchor handler is a wrapper made at each load, so the runtime took the second
    load of an unchanged folder for another definition of the same names and refused it
    (Yao files, whose handlers are the functions themselves, reloaded)."""
    module = _package(tmp_path, "def process_order(orderId=0):\n    return orderId\n")

    class Executor:
        def execute_send_email(self, params: dict[str, Any]) -> Any:
            return params

    _write(
        tmp_path / "app" / "tasks" / "api.yaml",
        f"""
        tasks:
          - name: SendEmail
          - name: ProcessOrder
            process: {module}.process_order
            cronjob: {{cronExpression: "0 0 2 * * *"}}
        """,
    )
    folder = tmp_path / "app" / "tasks"
    rt = Runtime(str(tmp_path / "app.db"))
    first = rt.load(folder, executor=Executor(), root=tmp_path)
    again = rt.load(folder, executor=Executor(), root=tmp_path)  # was InvalidOption
    assert [t.name for t in again] == [t.name for t in first] == ["SendEmail", "ProcessOrder"]
    assert rt.tasks["SendEmail"] is again[0].spec

    # A copy of the file elsewhere, or a task in Python code, is another definition.
    copy = _write(tmp_path / "copy" / "api.yaml", (folder / "api.yaml").read_text())
    with pytest.raises(InvalidOption, match="registered already") as caught:
        rt.load(copy, executor=Executor(), root=tmp_path)
    assert str(folder / "api.yaml") in str(caught.value)
    assert caught.value.source == str(copy)

    def send_email() -> None: ...

    with pytest.raises(InvalidOption, match="registered already"):
        rt.task(name="SendEmail")(send_email)
    assert rt.tasks["SendEmail"].source == str(folder / "api.yaml")
    # The same folder by another path is the same file.
    other = tmp_path / "app" / ".." / "app" / "tasks"
    rt.load(other, executor=Executor(), root=tmp_path)
    assert rt.tasks["SendEmail"].source == str(other / "api.yaml")


async def _order_failures(rt: Runtime) -> list[Any]:
    async with rt.transaction() as tx:
        rows = await tx.execute("SELECT job_id, order_id FROM order_failures ORDER BY job_id")
    return [tuple(row) for row in rows]


async def test_anchor_app_end_to_end(tmp_path: Path, executor: Any) -> None:
    rt = Runtime(str(tmp_path / "app.db"), tasks=ANCHOR_APP / "tasks.yaml", executor=executor)
    async with rt:
        async with rt.transaction() as tx:
            await tx.execute("CREATE TABLE order_failures (job_id INTEGER, order_id INTEGER)")

        sent = await rt.add("SendEmail", userId=7, templateId="welcome")
        info = await rt.wait(sent, timeout=10)
        assert info.status is JobStatus.SUCCESS
        assert info.result == {"sent_to": 7, "template": "welcome"}

        deleted = await rt.add("deleteOpaqueKey", {"keyID": 2**40})  # one positional object
        assert (await rt.wait(deleted, timeout=10)).result == f"deleted {2**40}"

        failed = await rt.add("ProcessOrder", orderId=0)
        info = await rt.wait(failed, timeout=10)
        assert info.status is JobStatus.FAILURE
        assert info.attempts == 1  # Fatal: no retry although maxAttempts is -1
        assert info.error == "order 0 does not exist"
        assert await _order_failures(rt) == [(failed, 0)]

        assert executor.calls == [
            ("SendEmail", {"userId": 7, "templateId": "welcome"}),
            ("deleteOpaqueKey", {"keyID": 2**40}),
            ("ProcessOrder", {"orderId": 0}),
            ("ProcessOrder failed", (failed, {"orderId": 0})),
        ]


async def test_validation_errors_store_nothing(tmp_path: Path, executor: Any) -> None:
    rt = Runtime(str(tmp_path / "app.db"), tasks=ANCHOR_APP / "tasks.yaml", executor=executor)
    async with rt:
        bad = [
            ({"userId": "7", "templateId": "w"}, "userId"),
            ({"userId": 7}, "templateId"),
            ({"userId": 2**31, "templateId": "w"}, "userId"),
        ]
        for kwargs, parameter in bad:
            with pytest.raises(ValidationError) as caught:
                await rt.add("SendEmail", **kwargs)
            assert caught.value.parameter == parameter
            assert status_of(caught.value) == 422
        page = await rt.jobs()
        assert page.jobs == []
    assert executor.calls == []


def test_anchor_events_that_are_not_names(tmp_path: Path) -> None:
    # Found by the fuzzer: an unhashable event once crashed the loader.
    _write(
        tmp_path / "tasks.yaml",
        """
        tasks:
          - name: A
            events: [{onFailed: 1}, [1], onFailed]
            process: os.path.join
        """,
    )
    assert _lines(_problems(tmp_path / "tasks.yaml"), tmp_path) == [
        "tasks.yaml:3: tasks[0].events[0]: unknown event an object; expected onFailed",
        "tasks.yaml:3: tasks[0].events[1]: unknown event a list; expected onFailed",
        "tasks.yaml:3: tasks[0].events: events lists onFailed but no executor was given to "
        "provide on_a_failed or on_A_failed (or give hooks: {onFailed: pkg.module.function})",
    ]


# -- values every store and front end can hold ----------------------------------------


def test_yao_numbers_are_bounded_like_the_decorators(tmp_path: Path) -> None:
    # Each was accepted once and then failed every add (a count past SQLite's
    # INTEGER) or stored a retry past the year 9999 (1e20 ms).
    module = _package(tmp_path, "def run(job_id):\n    pass\n")
    huge = 10**23
    _write(
        tmp_path / "tasks" / "big.yao",
        f"""
        {{
          "process": "{module}.run",
          "worker_nums": {huge},
          "size": 1e20,
          "attempts": {huge},
          "attempt_after": 1e20,
          "timeout": 1e12,
        }}
        """,
    )
    assert _lines(_problems(tmp_path / "tasks"), tmp_path) == [
        "tasks/big.yao:3: worker_nums: expected a positive number of workers, "
        f"at most {2**63 - 1}, found {huge}",
        f"tasks/big.yao:4: size: expected a positive queue size, at most {2**63 - 1}, "
        f"found {10**20}",
        "tasks/big.yao:5: attempts: expected a number of attempts (0 or more), "
        f"at most {2**63 - 1}, found {huge}",
        "tasks/big.yao:6: attempt_after: expected milliseconds, at most 3155760000000, found 1e+20",
        "tasks/big.yao:7: timeout: expected seconds, at most 3155760000, found 1000000000000.0",
    ]


def test_yao_numbers_at_the_bounds_load(tmp_path: Path) -> None:
    module = _package(tmp_path, "def run(job_id):\n    pass\n")
    most = 2**63 - 1
    hundred_years = 100 * 365.25 * 86_400
    _write(
        tmp_path / "tasks" / "edge.yao",
        f'{{"process": "{module}.run", "worker_nums": {most}, "size": {most}, '
        f'"attempts": {most}, "attempt_after": {hundred_years * 1000:.0f}, '
        f'"timeout": {hundred_years:.0f}}}',
    )
    (spec,) = load_tasks(tmp_path / "tasks")
    assert (spec.pool_concurrency, spec.pool_capacity, spec.attempts) == (most, most, most)
    assert (spec.retry, spec.timeout) == (RetryPolicy(delays=(hundred_years,)), hundred_years)


async def test_yao_attempts_at_the_bound_can_be_added(tmp_path: Path) -> None:
    module = _package(tmp_path, "def run(job_id):\n    return 'ran'\n")
    _write(tmp_path / "tasks" / "t.yao", f'{{"process": "{module}.run", "attempts": {2**63 - 1}}}')
    async with Runtime(str(tmp_path / "app.db"), tasks=tmp_path / "tasks") as rt:
        info = await rt.wait(await rt.add("t"), timeout=10)
    assert (info.status, info.result) == (JobStatus.SUCCESS, "ran")


def test_anchor_priority_must_fit_64_bits(tmp_path: Path) -> None:
    _write(
        tmp_path / "tasks.yaml",
        f"""
        tasks:
          - name: Big
            process: os.path.join
            priority: {2**63}
          - name: Small
            process: os.path.join
            priority: {-(2**63) - 1}
          - name: Edge
            process: os.path.join
            priority: {-(2**63)}
        """,
    )
    expected = f"an integer from {-(2**63)} to {2**63 - 1}"
    assert _lines(_problems(tmp_path / "tasks.yaml"), tmp_path) == [
        f"tasks.yaml:4: tasks[0].priority: expected {expected}, found {2**63}",
        f"tasks.yaml:7: tasks[1].priority: expected {expected}, found {-(2**63) - 1}",
    ]
    _write(
        tmp_path / "ok.yaml",
        f"tasks:\n  - name: Edge\n    process: os.path.join\n    priority: {2**63 - 1}\n",
    )
    (spec,) = load_tasks(tmp_path / "ok.yaml")
    assert spec.priority == 2**63 - 1


@pytest.mark.parametrize(
    ("ref", "why"),
    [
        ("#/nope", "this schema has nothing at that JSON pointer"),
        ("#nowhere", "this schema has no anchor named 'nowhere'"),
        (
            "http://example.com/s.json",
            "a schema outside this one is never fetched; point inside it, like '#/$defs/name'",
        ),
        (
            "file:///etc/passwd",
            "a schema outside this one is never fetched; point inside it, like '#/$defs/name'",
        ),
    ],
)
def test_anchor_refs_that_do_not_resolve_are_refused(tmp_path: Path, ref: str, why: str) -> None:
    _write(
        tmp_path / "tasks.yaml",
        f"""
        tasks:
          - name: Refs
            process: os.path.join
            parameters:
              type: object
              $defs:
                id: {{type: integer}}
              properties:
                ok: {{$ref: '#/$defs/id'}}
                a:
                  $ref: '{ref}'
        """,
    )
    (problem,) = _problems(tmp_path / "tasks.yaml")
    assert (problem.line, problem.field) == (11, "tasks[0].parameters.properties.a.$ref")
    assert problem.message == f"invalid JSON Schema: $ref {ref!r} does not resolve: {why}"


def test_refs_that_resolve_inside_the_schema_load(tmp_path: Path) -> None:
    _write(
        tmp_path / "tasks.yaml",
        """
        tasks:
          - name: Refs
            process: os.path.join
            parameters:
              $id: 'https://example.com/order.json'
              type: object
              $defs:
                id: {type: integer, minimum: 1}
                named: {$anchor: named, type: string}
                other: {$id: 'other.json', type: boolean}
              properties:
                a: {$ref: '#/$defs/id'}
                b: {$ref: '#named'}
                c: {$ref: 'other.json'}
                d: {$ref: 'https://json-schema.org/draft/2020-12/schema'}
                e: {const: {$ref: '#/not/a/schema/just/a/value'}}
        """,
    )
    (spec,) = load_tasks(tmp_path / "tasks.yaml")
    spec.validate((), {"a": 1, "b": "x", "c": True, "d": {"type": "string"}})
    with pytest.raises(ValidationError) as caught:
        spec.validate((), {"a": 0})
    assert caught.value.parameter == "a"


def test_every_ref_that_does_not_resolve_is_reported_with_the_other_problems(
    tmp_path: Path,
) -> None:
    """Only the first $ref that did not resolve was reported, and none while the schema
    had any other problem: fixing one showed the next, one load at a time."""
    _write(
        tmp_path / "tasks.yaml",
        """
        tasks:
          - name: Refs
            process: os.path.join
            parameters:
              type: object
              $defs:
                ok: {type: integer}
              properties:
                a: {type: intger}
                b: {$ref: '#/$defs/ok'}
                c: {$ref: '#/$defs/nope'}
                d: {items: {$ref: '#/properties/zzz'}}
                e: {$ref: 'https://example.com/x.json'}
        """,
    )
    nowhere = "this schema has nothing at that JSON pointer"
    assert _lines(_problems(tmp_path / "tasks.yaml"), tmp_path) == [
        "tasks.yaml:9: tasks[0].parameters.properties.a.type: invalid JSON Schema: "
        "'intger' is not valid under any of the given schemas",
        "tasks.yaml:11: tasks[0].parameters.properties.c.$ref: invalid JSON Schema: "
        f"$ref '#/$defs/nope' does not resolve: {nowhere}",
        "tasks.yaml:12: tasks[0].parameters.properties.d.items.$ref: invalid JSON Schema: "
        f"$ref '#/properties/zzz' does not resolve: {nowhere}",
        "tasks.yaml:13: tasks[0].parameters.properties.e.$ref: invalid JSON Schema: "
        "$ref 'https://example.com/x.json' does not resolve: a schema outside this one is "
        "never fetched; point inside it, like '#/$defs/name'",
    ]
    # A base the walk cannot read is the meta-schema's problem, not "cannot load".
    _write(
        tmp_path / "id.yaml",
        """
        tasks:
          - name: Ids
            process: os.path.join
            parameters: {type: object, $id: 5, properties: {a: {$ref: '#/x'}}}
        """,
    )
    assert _lines(_problems(tmp_path / "id.yaml"), tmp_path) == [
        "id.yaml:4: tasks[0].parameters.$id: invalid JSON Schema: 5 is not of type 'string'"
    ]


def test_an_unresolvable_ref_at_add_time_is_a_validation_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A schema derived from hints is not checked when the task is registered:
    # its bad $ref meets the validator only when a job is added.
    import urllib.request

    from taskrt.definitions import make_spec
    from taskrt.params import attach

    fetched: list[object] = []

    def urlopen(request: object, *args: object, **kwargs: object) -> object:
        fetched.append(request)
        raise OSError("no network in this test")

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)

    def local(x: Annotated[int, {"$ref": "#/nope"}]) -> None: ...

    def remote(x: Annotated[int, {"$ref": "http://example.com/s.json"}]) -> None: ...

    for handler, ref in ((local, "/nope"), (remote, "http://example.com/s.json")):
        spec = attach(make_spec(handler, call="plain"))
        with pytest.raises(ValidationError) as caught:
            spec.validate((1,), {})
        assert str(caught.value).endswith(
            f"the task's parameters schema has a $ref {ref!r} that does not resolve"
        )
        assert status_of(caught.value) == 422
    assert fetched == []  # nothing was fetched


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            # A second ``tasks:`` once dropped every task above it.
            "tasks:\n  - name: A\n    process: os.path.join\n"
            "tasks:\n  - name: B\n    process: os.path.join\n",
            ["tasks.yaml:4: tasks: field 'tasks' is given twice"],
        ),
        (
            "tasks:\n  - name: A\n    process: os.path.join\n    timeout: 5s\n    timeout: 10s\n",
            ["tasks.yaml:5: tasks[0].timeout: field 'timeout' is given twice"],
        ),
        (
            "tasks:\n  - name: A\n    process: os.path.join\n"
            "    retryPolicy: {interval: 1s, maxAttempts: 2, interval: 2s}\n",
            ["tasks.yaml:4: tasks[0].retryPolicy.interval: field 'interval' is given twice"],
        ),
    ],
)
def test_anchor_keys_given_twice(tmp_path: Path, text: str, expected: list[str]) -> None:
    (tmp_path / "tasks.yaml").write_text(text)
    problems = _problems(tmp_path / "tasks.yaml")
    assert _lines(problems, tmp_path) == expected
    assert (problems[0].found, problems[0].expected) == (expected[0].split("'")[1], "")


def test_anchor_merges_and_distinct_keys_are_not_repeats(tmp_path: Path) -> None:
    _write(
        tmp_path / "tasks.yaml",
        """
        tasks:
          - &base
            name: A
            process: os.path.join
            timeout: 5s
          - <<: *base
            name: B
            timeout: 10s
            parameters:
              type: object
              properties:
                1: {type: integer}
                "1": {type: integer}
        """,
    )
    problems = _problems(tmp_path / "tasks.yaml")
    # the YAML int key 1 is refused as not JSON; "1" beside it is no repeat
    assert [p.field for p in problems] == ["tasks[1].parameters.properties.1"]
    _write(
        tmp_path / "ok.yaml",
        """
        tasks:
          - &base
            name: A
            process: os.path.join
            timeout: 5s
          - <<: *base
            name: B
            timeout: 10s
        """,
    )
    specs = load_tasks(tmp_path / "ok.yaml")
    assert [(s.name, s.timeout) for s in specs] == [("A", 5.0), ("B", 10.0)]


@pytest.mark.parametrize("interval", ["1m,,2m", "1m,2m,", ",1m", " , "])
def test_anchor_interval_with_an_empty_delay(tmp_path: Path, interval: str) -> None:
    _write(
        tmp_path / "tasks.yaml",
        f"""
        tasks:
          - name: A
            process: os.path.join
            retryPolicy: {{interval: '{interval}', maxAttempts: 3}}
        """,
    )
    (problem,) = _problems(tmp_path / "tasks.yaml")
    assert (problem.line, problem.field) == (4, "tasks[0].retryPolicy.interval")
    assert problem.message.startswith(f"bad interval {interval!r}")


def test_retry_lists_refuse_an_empty_delay_everywhere() -> None:
    from taskrt.errors import InvalidOption
    from taskrt.retry import parse_retry

    assert parse_retry(" 1m, 2m ") == RetryPolicy(delays=(60.0, 120.0))
    with pytest.raises(InvalidOption) as caught:
        parse_retry("1m,,2m")
    assert caught.value.field == "retry"
    assert "expected durations separated by single commas" in str(caught.value)


@pytest.mark.parametrize(("pool", "found"), [("''", "''"), ('""', "''"), ("7", "7")])
def test_anchor_pool_must_be_a_non_empty_name(tmp_path: Path, pool: str, found: str) -> None:
    _write(
        tmp_path / "tasks.yaml",
        f"""
        tasks:
          - name: A
            process: os.path.join
            pool: {pool}
        """,
    )
    assert _lines(_problems(tmp_path / "tasks.yaml"), tmp_path) == [
        f"tasks.yaml:4: tasks[0].pool: expected a non-empty pool name, found {found}"
    ]


@pytest.mark.parametrize(
    "retry", ["1234567s", [1, 2_000_000], "0.0000001", "0.1234567", "200ms", "1h30m", 3155760000]
)
def test_a_described_retry_policy_reads_back_the_same(retry: Any) -> None:
    # A job stores its own retry policy as described; ``1e+06s`` or a delay
    # rounded to six digits once came back unreadable (the task's policy ran instead).
    from taskrt.retry import parse_retry

    policy = parse_retry(retry)
    assert parse_retry(policy.describe()) == policy


def test_every_problem_of_a_parameters_schema_is_reported_at_once(tmp_path: Path) -> None:
    _write(
        tmp_path / "tasks.yaml",
        """
        tasks:
          - name: SignUp
            process: os.path.join
            parameters:
              type: object
              required: userId
              properties:
                userId:
                  type: integr
                  minimum: "3"
        """,
    )
    assert _lines(_problems(tmp_path / "tasks.yaml"), tmp_path) == [
        "tasks.yaml:10: tasks[0].parameters.properties.userId.minimum: invalid JSON Schema: "
        "'3' is not of type 'number'",
        "tasks.yaml:9: tasks[0].parameters.properties.userId.type: invalid JSON Schema: "
        "'integr' is not valid under any of the given schemas",
        "tasks.yaml:6: tasks[0].parameters.required: invalid JSON Schema: "
        "'userId' is not of type 'array'",
    ]


def test_a_bad_cron_timezone_is_reported_as_the_timezone(tmp_path: Path) -> None:
    # A bug hunt: the problem was at the timezone's field, but its found and expected
    # were the cron expression's.
    _write(
        tmp_path / "tasks.yaml",
        """
        tasks:
          - name: Nightly
            process: os.path.join
            cronjob:
              cronExpression: "0 0 2 * * *"
              timezone: Europe/Berln
        """,
    )
    (problem,) = _problems(tmp_path / "tasks.yaml")
    assert (problem.line, problem.field) == (6, "tasks[0].cronjob.timezone")
    assert problem.found == "Europe/Berln"
    assert problem.expected == "an IANA time zone name, like 'Europe/Berlin' or 'UTC'"
    assert problem.message == (
        "time zone 'Europe/Berln' is unknown: expected an IANA name like 'Europe/Berlin' or 'UTC'"
    )


def test_a_cron_task_whose_parameters_are_required_is_refused(tmp_path: Path) -> None:
    """A cron slot adds its job without parameters: a schema requiring some would refuse
    every slot, so the file is refused when it is loaded instead."""
    _write(
        tmp_path / "tasks.yaml",
        """
        tasks:
          - name: DailyReport
            process: os.path.join
            cronjob: {cronExpression: "0 0 2 * * *"}
            parameters:
              type: object
              required: [date, region]
              properties:
                date: {type: string, format: date}
                region: {type: string}
          - name: Cleanup
            process: os.path.join
            cronjob: {cronExpression: "0 0 3 * * *"}
            parameters:
              type: object
              properties:
                daysToKeep: {type: integer, default: 30}
          - name: Report
            process: os.path.join
            parameters:
              type: object
              required: [date]
              properties:
                date: {type: string}
        """,
    )
    (problem,) = _problems(tmp_path / "tasks.yaml")
    assert (problem.line, problem.field) == (4, "tasks[0].cronjob")
    assert problem.message == (
        "a cron job is added without parameters, but the parameters schema refuses that: "
        "'date' is a required property; 'region' is a required property"
    )
    assert problem.expected == "a parameters schema a job without parameters satisfies"


def test_a_cron_task_whose_process_needs_an_argument_is_refused(tmp_path: Path) -> None:
    """The schema let a job without parameters through, but the process function required
    one: the file loaded and validated, then the runtime refused to start with an error
    naming no file. It is the file's problem at the cronjob, as a required property is."""
    module = _package(
        tmp_path,
        """
        def clean(daysToKeep):
            return daysToKeep

        def clean_job(job, daysToKeep, dryRun=False):
            return daysToKeep

        def clean_default(job, daysToKeep=30):
            return daysToKeep
        """,
    )
    _write(
        tmp_path / "tasks" / "tasks.yaml",
        f"""
        tasks:
          - name: Cleanup
            process: {module}.clean
            cronjob: {{cronExpression: "0 0 3 * * *"}}
            parameters:
              type: object
              properties:
                daysToKeep: {{type: integer}}
          - name: CleanupJob
            process: {module}.clean_job
            cronjob: {{cronExpression: "0 0 3 * * *"}}
          - name: CleanupDefault
            process: {module}.clean_default
            cronjob: {{cronExpression: "0 0 3 * * *"}}
          - name: CleanupOnDemand
            process: {module}.clean
        """,
    )
    assert _lines(_problems(tmp_path / "tasks"), tmp_path / "tasks") == [
        f"tasks.yaml:4: tasks[0].cronjob: a cron job is added without parameters, but "
        f"{module}.clean cannot be called without them: missing a required argument: "
        "'daysToKeep'",
        f"tasks.yaml:11: tasks[1].cronjob: a cron job is added without parameters, but "
        f"{module}.clean_job cannot be called without them: missing a required argument: "
        "'daysToKeep'",
    ]


# -- hostile input: every problem named, no raw exception, no hang ---------------------


@pytest.mark.parametrize(
    ("name", "snake"),
    [
        ("SendEmail", "send_email"),
        ("deleteOpaqueKey", "delete_opaque_key"),
        ("HTTPServer", "http_server"),
        ("getHTTPResponseCode", "get_http_response_code"),
        ("IOError", "io_error"),
        ("ABCdEFg", "ab_cd_e_fg"),
        ("send2Email", "send2_email"),
        ("v2API", "v2_api"),
        ("send-email now", "send_email_now"),
        ("__X__", "x"),
        ("AAAA", "aaaa"),
        ("already_snake", "already_snake"),
    ],
)
def test_snake_case(name: str, snake: str) -> None:
    assert snake_case(name) == snake


def test_a_long_all_caps_anchor_name_loads_at_once(tmp_path: Path) -> None:
    # ``([A-Z]+)([A-Z][a-z])`` backtracked over every run of capitals: 73 s for this one.
    name = "A" * 100_000
    _write(tmp_path / "tasks.yaml", f"tasks:\n  - name: {name}\n    process: os.path.join\n")
    started = time.perf_counter()
    (spec,) = load_tasks(tmp_path / "tasks.yaml")
    assert time.perf_counter() - started < 1.0
    assert spec.name == name


def test_numbers_past_a_float_are_problems_naming_the_field(tmp_path: Path) -> None:
    # ``math.isfinite(10**400)`` raised OverflowError: "cannot load", the other problems lost.
    module = _package(tmp_path, "def run(job_id):\n    pass\n")
    nines = "9" * 400
    found = "9" * 77 + "..."
    _write(
        tmp_path / "tasks" / "t.yao",
        f"""
        {{
          "process": "{module}.run",
          "timeout": {nines},
          "attempt_after": {nines},
          "size": "x",
        }}
        """,
    )
    _write(
        tmp_path / "tasks" / "t.yaml",
        f"""
        tasks:
          - name: A
            process: os.path.join
            timeout: {nines}
            pool: ''
        """,
    )
    assert _lines(_problems(tmp_path / "tasks"), tmp_path) == [
        f"tasks/t.yaml:4: tasks[0].timeout: expected a duration like '200ms', '30s', '10m' or "
        f"'1h30m', from 0 to 3155760000 seconds (100 years), found {found}",
        "tasks/t.yaml:5: tasks[0].pool: expected a non-empty pool name, found ''",
        "tasks/t.yao:5: size: expected a positive queue size, found 'x'",
        f"tasks/t.yao:4: attempt_after: expected milliseconds, at most 3155760000000, "
        f"found {found}",
        f"tasks/t.yao:3: timeout: expected seconds, at most 3155760000, found {found}",
    ]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (
            "{interval: , maxAttempts: }",
            [
                "tasks.yaml:4: tasks[0].retryPolicy.interval: bad interval null: expected a "
                "duration like '30s' or a list like '1m,2m,4m'",
                "tasks.yaml:4: tasks[0].retryPolicy.maxAttempts: expected a positive integer, "
                "or -1 for unlimited, found null",
            ],
        ),
        (
            "{interval: 1s, maxAttempts: -1.0}",
            [
                "tasks.yaml:4: tasks[0].retryPolicy.maxAttempts: expected a positive integer, "
                "or -1 for unlimited, found -1.0",
            ],
        ),
    ],
)
def test_anchor_retry_policy_fields_given_empty_or_as_floats(
    tmp_path: Path, policy: str, expected: list[str]
) -> None:
    # null once read as "no delay" and "unlimited attempts", and -1.0 as -1.
    text = f"tasks:\n  - name: A\n    process: os.path.join\n    retryPolicy: {policy}\n"
    _write(tmp_path / "tasks.yaml", text)
    assert _lines(_problems(tmp_path / "tasks.yaml"), tmp_path) == expected
    _write(tmp_path / "ok.yaml", text.replace(policy, "{interval: 1s, maxAttempts: -1}"))
    (spec,) = load_tasks(tmp_path / "ok.yaml")
    assert (spec.attempts, spec.retry) == (None, RetryPolicy(delays=(1.0,)))


def test_yaml_numbers_in_base_60_or_leading_zero_octal_are_problems(tmp_path: Path) -> None:
    """YAML 1.1 (PyYAML) reads ``1:30`` as 90 and ``010`` as 8; YAML 1.2 (Anchor's
    reader) as text and ten. A timeout meant as an hour and a half was 90 s, silently."""
    _write(
        tmp_path / "tasks.yaml",
        """
        tasks:
          - name: A
            process: os.path.join
            timeout: 1:30
            priority: 010
            description: 1:30.5
          - name: B
            process: os.path.join
            timeout: 0x10
            priority: 0
        """,
    )
    lines = _lines(_problems(tmp_path / "tasks.yaml"), tmp_path)
    assert lines[:3] == [
        "tasks.yaml:4: tasks[0].timeout: 1:30 is read by YAML 1.1 as a base-60 number, by "
        "YAML 1.2 as text: write the number itself, a duration like '1m30s', or quote it "
        "for text",
        "tasks.yaml:5: tasks[0].priority: 010 is read by YAML 1.1 as the octal number 8, by "
        "YAML 1.2 as 10: write it without the leading zero, or quote it for text",
        "tasks.yaml:6: tasks[0].description: 1:30.5 is read by YAML 1.1 as a base-60 number, "
        "by YAML 1.2 as text: write the number itself, a duration like '1m30s', or quote it "
        "for text",
    ]
    assert not [line for line in lines if "tasks[1]" in line], lines
    _write(
        tmp_path / "ok.yaml",
        """
        tasks:
          - name: A
            process: os.path.join
            timeout: "1h30m"
            priority: 10
            description: "1:30"
        """,
    )
    (spec,) = load_tasks(tmp_path / "ok.yaml")
    assert (spec.timeout, spec.priority, spec.description) == (5400.0, 10, "1:30")


def test_yaml_scalars_python_cannot_read_are_problems_at_their_field(tmp_path: Path) -> None:
    # PyYAML raised ValueError for each: "not valid YAML: ValueError: ...", nothing else said.
    digits = "9" * 5000
    _write(
        tmp_path / "tasks.yaml",
        f"""
        tasks:
          - name: A
            process: os.path.join
            description: 2024-13-45
            timeout: soon
          - name: B
            process: os.path.join
            priority: {digits}
            description: 2024-01-01 10:00:00 +99:00
          - name: C
            process: os.path.join
            priority: 0x{"f" * 4000}
        """,
    )
    assert _lines(_problems(tmp_path / "tasks.yaml"), tmp_path) == [
        "tasks.yaml:4: tasks[0].description: invalid date '2024-13-45': month must be in "
        "1..12 (quote it to keep it as text)",
        "tasks.yaml:8: tasks[1].priority: an integer of 5000 characters is more than the "
        "4300 one may have (quote it to keep it as text)",
        "tasks.yaml:9: tasks[1].description: invalid date '2024-01-01 10:00:00 +99:00': "
        "the time zone is 24 hours or more from UTC (quote it to keep it as text)",
        "tasks.yaml:5: tasks[0].timeout: bad duration 'soon': expected a duration like "
        "'200ms', '30s', '10m' or '1h30m'",
        "tasks.yaml:8: tasks[1].priority: expected an integer from -9223372036854775808 to "
        f"9223372036854775807, found '{'9' * 76}...",
        # Python reads it (base 16), but cannot print it in base 10.
        "tasks.yaml:12: tasks[2].priority: expected an integer from -9223372036854775808 to "
        "9223372036854775807, found an integer of about 4816 digits",
    ]
