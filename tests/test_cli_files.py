"""``taskrt validate`` and ``taskrt generate``, and the command table the CLI is built from."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from taskrt import cli
from taskrt.codegen import generate as render

FIXTURES = Path(__file__).parent / "fixtures"
YAO_TASKS = FIXTURES / "yao_app" / "tasks"
ANCHOR = FIXTURES / "anchor_app" / "tasks.yaml"

BAD_YAML = """\
tasks:
  - name: SendEmail
    retryPolicy:
      interval: 1x
      maxAttempts: -1
    timout: 10m
  - name: Nightly
    cronjob:
      cronExpression: "0 0 2 * *  * *"
"""


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def bad(tmp_path: Path) -> Path:
    path = tmp_path / "tasks.yaml"
    path.write_text(BAD_YAML)
    return path


def test_validate_good_files(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "validate", str(YAO_TASKS), str(ANCHOR))
    assert (code, out, err) == (0, "ok: 8 tasks in 5 files\n", "")


def test_validate_checks_the_executor_when_given(capsys: pytest.CaptureFixture[str]) -> None:
    root = str(ANCHOR.parent)
    code, out, _ = run(
        capsys, "validate", "--root", root, "--executor", "shop.executor:Executor", str(ANCHOR)
    )
    assert (code, out) == (0, "ok: 4 tasks in 1 file\n")

    code, out, err = run(
        capsys, "validate", "--executor", "shop.executor:Nope", "--root", root, str(ANCHOR)
    )
    assert code == 2
    assert out == ""
    assert (
        err
        == "taskrt: error: --executor shop.executor:Nope: 'shop.executor' has no attribute 'Nope'\n"
    )


def test_validate_refuses_an_executor_class_that_needs_arguments(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A usage error naming --executor (it ended in a TypeError, exit 1)."""
    (tmp_path / "needs_args_executor.py").write_text(
        "class NeedsArgs:\n    def __init__(self, db):\n        self.db = db\n"
    )
    reference = "needs_args_executor:NeedsArgs"
    argv = ["validate", "--root", str(tmp_path), "--executor", reference, str(ANCHOR)]
    code, out, err = run(capsys, *argv)
    assert (code, out) == (2, "")
    assert err == (
        f"taskrt: error: --executor {reference}: expected a class instantiated with no "
        "arguments (or an instance), found NeedsArgs(db)\n"
    )


def test_validate_prints_every_problem(capsys: pytest.CaptureFixture[str], bad: Path) -> None:
    code, out, err = run(capsys, "validate", str(bad))
    assert code == 1
    assert out.splitlines() == [
        f"{bad}:6: tasks[0].timout: unknown field 'timout'; did you mean 'timeout'?",
        f"{bad}:4: tasks[0].retryPolicy.interval: bad interval '1x': expected a duration like "
        "'30s' or a list like '1m,2m,4m'",
        f"{bad}:9: tasks[1].cronjob.cronExpression: cron expression '0 0 2 * *  * *': expected 5 "
        "fields (minute hour day-of-month month day-of-week), 6 with seconds first (second "
        "minute hour day-of-month month day-of-week), an alias like @daily or '@every "
        "<duration>', found 7",
    ]
    assert err == "3 problems found\n"


def test_validate_json(capsys: pytest.CaptureFixture[str], bad: Path) -> None:
    code, out, _ = run(capsys, "validate", "--json", str(bad), str(YAO_TASKS))
    assert code == 1
    report = json.loads(out)
    assert report["ok"] is False
    assert report["tasks"] == ["flaky", "plain", "strict", "test"]
    assert report["problems"][0] == {
        "file": str(bad),
        "line": 6,
        "field": "tasks[0].timout",
        "found": "timout",
        "expected": "timeout",
        "message": "unknown field 'timout'; did you mean 'timeout'?",
    }
    assert len(report["problems"]) == 3

    code, out, _ = run(capsys, "validate", "--json", str(ANCHOR))
    assert (code, json.loads(out)["ok"]) == (0, True)


def test_validate_duplicates_across_paths(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "test.yao").write_text('{"process": "os.path.join"}')
    code, out, _ = run(capsys, "validate", str(YAO_TASKS), str(tmp_path / "a"))
    assert code == 1
    assert out == (
        f"{tmp_path}/a/test.yao: name: duplicate task id 'test': also defined in "
        f"{YAO_TASKS}/test.yao\n"
    )


def test_validate_a_yao_file_name_that_is_not_utf8(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """It said ok, and the runtime then failed on the task id the name gave."""
    bad = tmp_path / os.fsdecode(b"b\xff.yao")
    try:
        bad.write_text('{"process": "os.path.join"}')
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system takes only UTF-8 names")
    code, out, err = run(capsys, "validate", str(tmp_path))
    assert (code, err) == (1, "1 problem found\n")
    assert out == (
        f"{tmp_path}/b\\xff.yao: the file name is not valid UTF-8, and a Yao task's id is "
        "taken from it: rename the file\n"
    )


def test_validate_a_missing_path(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(capsys, "validate", str(tmp_path / "nothing"))
    assert (code, out) == (1, f"{tmp_path}/nothing: no such file or folder\n")


def test_generate_writes_the_module_and_can_check_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    target = tmp_path / "app" / "taskgen.py"
    code, out, err = run(capsys, "generate", str(ANCHOR), "-o", str(target))
    assert (code, out, err) == (0, f"wrote {target}\n", "")  # stderr: for failures only
    assert target.read_text() == render(ANCHOR)
    first = target.read_bytes()
    assert run(capsys, "generate", str(ANCHOR), "-o", str(target))[0] == 0
    assert target.read_bytes() == first  # regenerated identically

    assert run(capsys, "generate", str(ANCHOR), "-o", str(target), "--check")[0] == 0
    target.write_text(target.read_text() + "# edited\n")
    code, _, err = run(capsys, "generate", str(ANCHOR), "-o", str(target), "--check")
    assert code == 1
    assert err == (
        f"taskrt: error: {target} is out of date; run: taskrt generate {ANCHOR} -o {target}\n"
    )

    code, out, _ = run(capsys, "generate", str(ANCHOR))
    assert (code, out) == (0, render(ANCHOR))


def test_generate_with_bad_definitions(
    capsys: pytest.CaptureFixture[str], bad: Path, tmp_path: Path
) -> None:
    target = tmp_path / "gen.py"
    code, out, err = run(capsys, "generate", str(bad), "-o", str(target))
    assert code == 1
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 4
    assert lines[0].startswith(f"{bad}:6: tasks[0].timout:")
    assert lines[-1] == f"taskrt: error: 3 problem(s) in {bad}; nothing generated"
    assert not target.exists()


def test_generate_refuses_an_output_that_is_a_directory(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A usage error naming -o (it ended in an IsADirectoryError, exit 1, as a bug)."""
    for check in ([], ["--check"]):
        code, out, err = run(capsys, "generate", str(ANCHOR), "-o", str(tmp_path), *check)
        assert (code, out) == (2, "")
        assert (
            err
            == f"taskrt: error: -o {tmp_path}: is a directory; expected the module's file name\n"
        )
    (tmp_path / "file").write_text("")
    for target in (tmp_path / "file" / "gen.py", tmp_path / "file" / "sub" / "gen.py"):
        code, out, err = run(capsys, "generate", str(ANCHOR), "-o", str(target))
        assert (code, out) == (2, "")
        assert err == (
            f"taskrt: error: -o {target}: a part of its path is a file, not a directory\n"
        )


def test_unexpected_errors_are_one_line_unless_debug(capsys: pytest.CaptureFixture[str]) -> None:
    """A bug (an error no command expects) is exit 1: one line, the traceback under --debug."""

    def broken(args: argparse.Namespace) -> int:
        raise KeyError("a bug")

    bug = cli.Command("broken", "a command with a bug", lambda parser: None, broken)
    code = cli.main(["broken"], commands=[*cli.COMMANDS, bug])
    err = capsys.readouterr().err
    assert (code, err) == (1, "taskrt: error: KeyError: 'a bug'\n")
    code = cli.main(["--debug", "broken"], commands=[*cli.COMMANDS, bug])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("Traceback (most recent call last):")
    assert "KeyError: 'a bug'" in err


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys)
    assert code == 2
    assert "validate" in err and "generate" in err


def test_commands_are_registered_in_a_table() -> None:
    seen: list[argparse.Namespace] = []

    def configure(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("job_id", type=int)

    def hello(args: argparse.Namespace) -> int:
        seen.append(args)
        return 7

    extra = cli.Command("hello", "a command another module adds", configure, hello)
    assert cli.main(["hello", "42"], commands=[*cli.COMMANDS, extra]) == 7
    assert seen[0].job_id == 42
    again = cli.Command("hello", "again", lambda parser: None, lambda args: 0)
    with pytest.raises(ValueError, match="registered twice"):
        cli.build_parser([*cli.COMMANDS, extra, again])
    assert "hello" not in {c.name for c in cli.COMMANDS}  # the table itself is unchanged


def test_the_console_script_entry_point() -> None:
    repo = Path(cli.__file__).parents[2]  # taskrt/cli/__init__.py -> the checkout
    assert 'taskrt = "taskrt.cli:main"' in (repo / "pyproject.toml").read_text()
    result = subprocess.run(
        [sys.executable, "-m", "taskrt.cli", "validate", str(ANCHOR)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=repo,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "ok: 4 tasks in 1 file\n", "")
