"""Benchmark 1, idle cost: 500 trivial tests with the plugin loaded against ``-p no:llmexp``;
again where pytest cannot cache the modules it rewrites (``PYTHONDONTWRITEBYTECODE=1``, as
many container images set it, or a read-only install).

Also the plugin's own import time, from ``python -X importtime`` with pytest already
imported, and which heavy modules loading the plugin pulls in (there should be none).

    python bench/bench_idle.py [--repeats N]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path

from harness import (
    Result,
    Side,
    base_env,
    compare,
    compile_package,
    pytest_cmd,
    repeats_arg,
    timed,
    workdir,
)

TESTS = 500
HEAVY = ("openai", "jinja2", "sqlite_utils", "pydantic", "httpx", "sqlite3")


def import_ms(runs: int = 15) -> float:
    """The median cumulative import time of pytest_llmexp.plugin, in milliseconds."""
    code = "import pytest, _pytest.pytester; import pytest_llmexp.plugin"
    times = []
    for _ in range(runs):
        err = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env=base_env(),
        ).stderr
        line = next(x for x in err.splitlines() if x.endswith("| pytest_llmexp.plugin"))
        times.append(int(line.split("|")[1]) / 1000)
    return statistics.median(times)


def heavy_imports() -> list[str]:
    code = (
        "import sys, pytest, pytest_llmexp.plugin\n"
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=base_env()
    )
    return out.stdout.split()


def uncached_env() -> dict[str, str]:
    """An environment where pytest cannot cache the modules whose asserts it rewrites, which
    include every module of a plugin's distribution that it does not exempt."""
    import pytest_llmexp

    for pyc in Path(pytest_llmexp.__file__).parent.glob("__pycache__/*-pytest-*.pyc"):
        pyc.unlink()
    return base_env(PYTHONDONTWRITEBYTECODE="1")


def main() -> list[Result]:
    # A 0.4 s session's ratio moves by up to 20% between repeats here, twice as much as a
    # 2 s session's; a median's error only shrinks with the square root of the repeats.
    repeats = repeats_arg(61)
    compile_package()
    with workdir("idle") as where:
        body = "".join(f"def test_{i}():\n    assert {i} + 1 > {i}\n\n" for i in range(TESTS))
        (where / "test_trivial.py").write_text(body)
        off = Side("pytest -p no:llmexp", lambda: timed(pytest_cmd("-p", "no:llmexp"), cwd=where))
        on = Side("pytest (llmexp loaded)", lambda: timed(pytest_cmd(), cwd=where))
        result = compare(f"Idle: {TESTS} trivial tests", [off, on], repeats=repeats, target=1.03)
        env = uncached_env()
        off = Side(
            "pytest -p no:llmexp",
            lambda: timed(pytest_cmd("-p", "no:llmexp"), cwd=where, env=env),
        )
        on = Side("pytest (llmexp loaded)", lambda: timed(pytest_cmd(), cwd=where, env=env))
        uncached = compare(
            f"Idle: {TESTS} trivial tests, PYTHONDONTWRITEBYTECODE=1",
            [off, on],
            repeats=repeats,
            target=1.03,
        )
        if (where / "message_log.db").exists():
            print("NOTE: a session with no experiment created message_log.db")
    ms = import_ms()
    heavy = heavy_imports()
    print(f"plugin import: {ms:.1f} ms (target <= 20 ms); heavy modules loaded: {heavy or 'none'}")
    return [result, uncached, Result("Idle: plugin import (ms)", ms, 20.0)]


if __name__ == "__main__":
    main()
