"""Every command in the README and the docs pages runs as written, from the repo root.

Each ``bash`` block line and each ``$ `` line of a ``console`` block is run, in a copy of the
repo's examples and configuration with no API key: a pytest command with ``--collect-only``
(its options, paths, experiment names and gates are checked; nothing is called), an
``llmexp`` or ``sqlite3`` command against a database of two real sessions of the examples
(made on the fake server), with the session and run ids of the docs replaced by real ones.
The README's own example also runs on the embedded model for real, in ``test_local.py``. A
command that cannot run here is listed in ``NOT_RUN`` with why, and is not collected.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fakellm import FakeLLM

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: Commands that are not run here, and why (matched by their start). A set-up chain
#: (``python3 -m venv ... && pip install ... && X``) contributes only X, which is run.
NOT_RUN = {
    "git add": "changes the repository",
    "echo $?": "prints the exit status of the command before it",
    ".venv/bin/mkdocs": "CI builds the docs site with mkdocs build --strict",
}
#: Hex ids the docs show, as a reader's own database would have them.
_ID = re.compile(r"(?<![\w.])(?=[0-9]*[a-f])[0-9a-f]{4,32}(?![\w.])")


def commands(page: Path) -> list[str]:
    """The commands of a page's ``bash`` and ``console`` blocks, continuation lines joined;
    a chain of set-up steps (``a && b && c``) contributes its last step."""
    found: list[str] = []
    kind = None
    pending = ""
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            kind = line[3:].strip() if kind is None else None
            continue
        if kind == "console":
            if pending:
                pending += " " + line.strip()
            elif line.startswith("$ "):
                pending = line[2:].strip()
            else:
                continue
        elif kind == "bash" and line.strip() and not line.lstrip().startswith("#"):
            pending = (pending + " " + line.strip()) if pending else line.strip()
        else:
            continue
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        if pending.count('"') % 2:  # a quoted argument spans lines (an SQL query)
            continue
        command = re.sub(r"\s+#\s.*$", "", pending)  # a trailing comment
        found.append(command.split(" && ")[-1])
        pending = ""
    return found


def every_command() -> list[tuple[str, str]]:
    """Every command of the README and the pages (``index.md`` is the README)."""
    return [
        (page.name, command)
        for page in PAGES
        if page.name != "index.md"
        for command in commands(page)
    ]


def not_run(command: str) -> bool:
    return command.startswith(tuple(NOT_RUN))


def test_every_command_that_is_not_run_is_listed_with_why() -> None:
    found = [command for _, command in every_command()]
    # Each entry of NOT_RUN stands for a command the docs still have.
    unused = [start for start in NOT_RUN if not any(c.startswith(start) for c in found)]
    assert unused == []


def test_the_commands_are_found() -> None:
    found = [command for _, command in every_command()]
    # The README's set-up, its whole suite, and the pages' pytest and llmexp commands.
    assert ".venv/bin/python -m pytest examples --llm-experiment name_generator -n 2" in found
    assert sum(c.split()[0] == "llmexp" for c in found) >= 8
    assert sum("pytest" in c.split()[:3] for c in found) >= 8


@pytest.fixture(scope="module")
def workspace(
    tmp_path_factory: pytest.TempPathFactory, _fake_server: FakeLLM
) -> tuple[Path, dict[str, str], dict[str, str]]:
    """A copy of the repo's examples and configuration holding two real sessions (of the
    name_generator and tagline examples), the environment to run commands in, and the ids
    the docs' ids stand for."""
    root = tmp_path_factory.mktemp("repo")
    shutil.copytree(ROOT / "examples", root / "examples")
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    (root / "tests").symlink_to(ROOT / "tests")
    # The README's 30-second example, saved as the file it names.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    example = re.search(r"```python\n(# test_naming.py\n.*?)```", readme, re.S)
    assert example is not None, "the README's example is a python block naming test_naming.py"
    (root / "project").mkdir()
    (root / "project" / "test_naming.py").write_text(example.group(1), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "LLMEXP_"))}
    env.pop("PYTEST_ADDOPTS", None)
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        env.pop(name, None)
    bin_dir = Path(sys.executable).parent
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    (root / ".venv").symlink_to(Path(sys.prefix))
    made = {**env, "OPENAI_BASE_URL": _fake_server.url}
    # The second records its calls and gates a metric, as the docs' sessions did.
    gate = ["--llm-gate", "name_generator.coolness: max <= 10"]
    for extra in ([], ["--llm-cache", "record", *gate]):
        if extra:  # a new version of a prompt, as in the docs
            example = root / "examples" / "test_name_generator.py"
            text = example.read_text(encoding="utf-8")
            example.write_text(text.replace("a name for", "a short, catchy name for"))
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "examples",
                "--llm-experiment",
                "name_generator",
                # Variants, for the pages that show them.
                "--llm-experiment",
                "tagline",
                "-p",
                "no:cacheprovider",
                "-q",
                *extra,
            ],
            cwd=root,
            env=made,
            check=True,
            capture_output=True,
            timeout=120,
        )
    import sqlite3

    with sqlite3.connect(root / "message_log.db") as conn:
        sessions = [r[0] for r in conn.execute("SELECT id FROM sessions ORDER BY started_at")]
        run_id = conn.execute("SELECT id FROM experiment_runs LIMIT 1").fetchone()[0]
    ids = {"session": sessions[-1], "baseline": sessions[0], "run": run_id}
    return root, env, ids


def _substitute(command: str, ids: dict[str, str]) -> str:
    """The command with the docs' ids replaced: a run's for ``llmexp run``, else sessions'
    (the first id a command names is the baseline when it names two)."""
    found = _ID.findall(command)
    if command.startswith("llmexp run "):
        return _ID.sub(ids["run"][: len(found[0])], command) if found else command
    replacements = iter([ids["baseline"], ids["session"]] if len(found) > 1 else [ids["session"]])
    return _ID.sub(lambda m: next(replacements)[: len(m.group(0))], command)


#: The README's 30-second example runs in the reader's own project, beside test_naming.py.
IN_PROJECT = {"pytest --llm-experiment name_generator -n 10"}
#: Commands the docs show failing on purpose, with their exit status.
EXPECTED_FAILURES = {
    "llmexp show name_generater": 2,
    "llmexp run 4aa826337d29": 2,
    "llmexp sessions --db other.db": 2,
}


@pytest.mark.parametrize(
    ("page", "command"), [(p, c) for p, c in every_command() if not not_run(c)]
)
def test_a_command_of_the_docs_runs_as_written(
    workspace: tuple[Path, dict[str, str], dict[str, str]], page: str, command: str
) -> None:
    root, env, ids = workspace
    expected = {EXPECTED_FAILURES[command]} if command in EXPECTED_FAILURES else {0}
    if command.startswith("llmexp gate"):
        expected = {0, 1}  # a verdict either way: it depends on the numbers
    # A command that fails on purpose names an id that does not exist.
    line = command if command in EXPECTED_FAILURES else _substitute(command, ids)
    words = shlex.split(line)
    while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):  # VAR=value command
        words.pop(0)
    if words[0] == "pytest" or words[:3] == [".venv/bin/python", "-m", "pytest"]:
        # Options, paths, experiment names and gates are checked; no model is called.
        line += " --collect-only -q -p no:cacheprovider"
    elif words[0] not in ("llmexp", "sqlite3"):
        pytest.fail(f"{page}: {command!r} is neither run nor listed in NOT_RUN")
    # As a reader's shell runs it: quoting, escapes and VAR=value prefixes included.
    result = subprocess.run(
        ["bash", "-c", line],
        cwd=root / "project" if command in IN_PROJECT else root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.returncode in expected, f"{page}: {command}\n{output}"
