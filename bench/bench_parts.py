"""A diagnostic, with no target: where the per-run benchmark's overhead goes, part by part.

The experiment side of ``bench_runs.py`` (1,000 executions, serial) runs with the plugin's
later stages switched off one at a time, through a ``conftest.py`` that replaces them:

- ``recording``: runs are recorded in the test body (prompts, bot, call, metric, the run
  context and its hooks), but never frozen, spooled or stored;
- ``spooled``: each run is also frozen into its masked JSON, appended to the spool and
  handed over on its report; the writer counts it stored but inserts nothing;
- ``stored``: the plugin as it is (what ``bench_runs.py`` measures);
- ``stored, grown database``: the same, into a copy of a database that already holds
  ``--db-runs`` runs (built as ``bench_scale.py`` builds its database), since a user's
  message_log.db grows with every session.

The bots make their request through the ``openai`` client's ``post`` and read the reply as
JSON, which costs less than ``chat.completions.create`` (the bare side of ``bench_runs.py``).
So the parts are measured against a bare run that makes its request the same way (``bare,
as the bots call``), and the bare run of ``bench_runs.py`` is shown beside it. All sides run
alternately, and each repeat gives every side's ratio to each bare run of the same repeat;
the table shows their medians, and what each part adds per run (the median of the repeats'
differences from the side before it).

    python bench/bench_parts.py [--repeats N] [--executions N] [--db-runs N]
"""

from __future__ import annotations

import shutil
import statistics
from pathlib import Path

import bench_scale
from harness import (
    Side,
    alternate,
    compile_package,
    experiment_session,
    fake_server,
    int_arg,
    llm_env,
    pytest_cmd,
    repeats_arg,
    starting_database,
    timed,
    workdir,
)
from workloads import bare, bare_post, experiment

#: Replaces the stages after a part; it fails the session if what it replaces is gone, so a
#: refactor cannot make it measure nothing.
CONFTEST = """
import os

PART = os.environ.get("BENCH_PART", "stored")


def _replace(owner, name, function):
    if not callable(getattr(owner, name, None)):
        raise RuntimeError(f"bench_parts: {owner.__name__}.{name} is gone; update the script")
    setattr(owner, name, function)


if PART == "recording":
    from pytest_llmexp._plugin.relay import RunRelay

    _replace(RunRelay, "_hand_over_run", lambda self, report, state, junit: None)
elif PART == "spooled":
    from pytest_llmexp._plugin.intake import Intake

    def _count_only(self):
        queue, self._queue = self._queue, []
        for _, _, worker in queue:
            self._count(worker)

    _replace(Intake, "flush", _count_only)
"""

PARTS = ("recording", "spooled", "stored")


def main() -> None:
    repeats, count = repeats_arg(15), int_arg("--executions", 1000)
    grown_runs = int_arg("--db-runs", 30_000)
    compile_package()
    with fake_server() as server, workdir("parts") as where:
        (where / "conftest.py").write_text(CONFTEST)
        (where / "test_bare.py").write_text(bare(count))
        (where / "test_bare_post.py").write_text(bare_post(count))
        (where / "test_experiment.py").write_text(experiment(count))
        env = llm_env(server)
        empty, grown = starting_database(where, env), where / "grown.db"
        shutil.copy(empty, grown)
        print(f"building a database of {grown_runs:,} runs...", flush=True)
        bench_scale.build(grown, server.url, grown_runs, count=max(1, grown_runs // 10_000))

        def side(name: str, part: str, start: Path) -> Side:
            part_env = {**env, "BENCH_PART": part}
            return Side(name, lambda: experiment_session(where, start, part_env))

        def bare_side(name: str, test_file: str) -> Side:
            return Side(
                name,
                lambda: timed(pytest_cmd(test_file, "-p", "no:llmexp"), cwd=where, env=env),
            )

        sides = [
            bare_side("bare, chat.completions.create", "test_bare.py"),
            bare_side("bare, as the bots call", "test_bare_post.py"),
            *(side(part, part, empty) for part in PARTS),
            side(f"stored, database of {grown_runs:,} runs", "stored", grown),
        ]
        alternate(sides, repeats=repeats)
    report(sides, count)


def report(sides: list[Side], count: int) -> None:
    create, post = sides[0].samples, sides[1].samples
    print(f"\n## Where the per-run overhead goes: {count} executions, serial")
    print(f"{'side':<34} {'median s':>9} {'vs create':>10} {'vs post':>8} {'adds per run':>13}")
    for i, s in enumerate(sides):
        ratios = [
            statistics.median(a.seconds / b.seconds for a, b in zip(s.samples, base, strict=True))
            for base in (create, post)
        ]
        if i < 2:
            adds = "-"
        else:
            # Each side against the one before it: the recording against the bare run that
            # calls as the bots do, the grown database against the empty one.
            before = sides[i - 1].samples
            pairs = zip(s.samples, before, strict=True)
            diff = statistics.median(a.seconds - b.seconds for a, b in pairs)
            adds = f"{diff / count * 1e6:+.0f} µs"
        print(f"{s.name:<34} {s.median:9.3f} {ratios[0]:10.3f} {ratios[1]:8.3f} {adds:>13}")


if __name__ == "__main__":
    main()
