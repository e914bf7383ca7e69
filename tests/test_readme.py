"""The README and the docs pages: the set-up commands are the ones CI runs, and every
option, ini key and ``llmexp`` command they name exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
#: What a reader reads: the README and every page of the docs site.
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def guide() -> str:
    return "\n".join(page.read_text() for page in PAGES)


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


def test_every_option_the_guide_names_exists(pytester: pytest.Pytester) -> None:
    text = guide()
    options = set(re.findall(r"(--llm-[a-z-]+[a-z])", text))
    ini_keys = set(re.findall(r"`(llm_[a-z_]+)`", text)) - {"llm_run"}  # llm_run: the fixture
    assert {"--llm-gate", "--llm-compare", "--llm-report-json", "--llm-report-md"} <= options
    assert "llm_gates" in ini_keys
    result = pytester.runpytest_subprocess("--help")
    help_text = "\n".join(result.outlines)
    missing = sorted(o for o in options if o not in help_text)
    missing += sorted(k for k in ini_keys if f"  {k} (" not in help_text)
    assert not missing, f"the guide names options pytest does not know: {missing}"


def test_every_llmexp_command_the_guide_names_exists(capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_llmexp.cli import main

    text = guide()
    # As typed: in code spans and after a shell prompt.
    named = set(re.findall(r"(?:`|\$ )llmexp ([a-z]+)\b", text))
    assert {"sessions", "show", "run", "prompts", "compare", "export", "gate", "report"} <= named
    assert "cache" in named
    with pytest.raises(SystemExit):
        main(["--help"])
    listed = capsys.readouterr().out
    missing = sorted(c for c in named if not re.search(rf"^\s+{c}\s", listed, flags=re.M))
    assert not missing, f"the guide names llmexp commands that do not exist: {missing}"


def test_every_image_and_page_the_guide_links_to_exists() -> None:
    linked = 0
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            assert (page.parent / target).is_file(), f"{page.name} links to {target}"
            linked += 1
    assert linked > 10


def test_the_docs_home_is_the_readme() -> None:
    # The site's home page is the README with its links made relative to docs/.
    readme = (ROOT / "README.md").read_text().replace("](docs/", "](")
    assert (ROOT / "docs" / "index.md").read_text() == readme


def test_the_readme_is_short_and_every_page_is_in_the_site() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250
    nav = (ROOT / "mkdocs.yml").read_text()
    missing = [p.name for p in PAGES[1:] if f" {p.name}" not in nav]
    assert not missing, f"pages not in mkdocs.yml's nav: {missing}"
