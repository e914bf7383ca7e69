"""The README's set-up commands are the ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Set up")
    section = text[start : text.index("\n## ", start + 1)]
    return re.findall(r"```bash\n(.+?)\n```", section, flags=re.S)


def test_readme_has_exactly_two_setup_commands() -> None:
    commands = readme_commands()
    assert len(commands) == 2
    assert "examples --llm-experiment name_generator" in commands[0]
    # The first command runs the example on the embedded model: it needs no key.
    assert '".[local,' in commands[0] and "OPENAI" not in commands[0]
    assert all(cmd.startswith("python3 -m venv .venv && ") for cmd in commands)


def test_ci_runs_the_readme_test_command() -> None:
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert readme_commands()[1] in ci_lines
