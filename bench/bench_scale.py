"""Benchmark 4, scale: a database of 100,000 runs with 10 metrics and one call each.

The runs are ten sessions of 10,000 executions of one experiment (the largest session the
memory check below runs, ten times over). One run is recorded for
real (a StructuredBot call to the fake server and 10 @metric calls inside a run context);
the others are copies with fresh ids and metric values, stored through ``Store.insert_runs``
in batches of 200, as the writer stores runs. Then, each timed alternately:

- the end-of-session work behind the terminal summary of the last 10,000-run session (the
  summaries, the verdict, the table), in process;
- ``llmexp show``, ``llmexp compare`` and ``llmexp report``, as commands (wall time,
  interpreter start included).

It also prints the database's size per run beyond the message text, and the memory of a
real 10,000-run pytest session, sampled as it runs (it must stay flat), against a bare one:
each side three times, alternately, and the medians of their growth compared.

    python bench/bench_scale.py [--repeats N] [--runs N]
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from harness import (
    FakeLLM,
    Result,
    Sample,
    base_env,
    compile_package,
    fake_server,
    int_arg,
    llm_env,
    pytest_cmd,
    repeats_arg,
    within,
    workdir,
)
from workloads import bare, experiment

METRICS = 10


def template_run(url: str):  # -> RunRecord
    """One run recorded for real: a structured call and 10 metrics."""
    os.environ.update(OPENAI_BASE_URL=url, OPENAI_API_KEY="sk-bench")
    from pydantic import BaseModel, Field

    from pytest_llmexp import StructuredBot, metric, prompt
    from pytest_llmexp._run.recording import RunContext, activate

    class JobDescription(BaseModel):
        name: str = Field(..., description="A job name.")
        description: str = Field(..., description="A job description.")

    @prompt("user")
    def ask(description):
        """Give me a name for a job that follows this description: {{ description }}."""

    def make(i: int):
        def value(response: JobDescription) -> float:
            return len(response.name) / (i + 1)

        value.__name__ = f"metric_{i}"
        return metric(value)

    metrics = [make(i) for i in range(METRICS)]
    run = RunContext("scale", num_executions=1, execution_index=0, worker="main", nodeid=None)
    with activate(run):
        bot = StructuredBot(model_name="gpt-4o-mini", pydantic_model=JobDescription)
        response = bot(ask("someone who builds full stack AI apps"))
        for m in metrics:
            m(response)
    return run.finish("passed", None, None)


def build(db: Path, url: str, runs: int, count: int = 10) -> list[str]:
    """``count`` sessions of ``runs // count`` executions each; their ids."""
    from pytest_llmexp._store.store import Store

    template = template_run(url)
    rng = random.Random(0)
    store = Store(db)
    sessions = []
    per_session = runs // count
    for _ in range(count):
        session = store.begin_session(kind="pytest", argv=["bench"])
        sessions.append(session)
        batch = []
        for index in range(per_session):
            calls = [c.model_copy(update={"id": uuid.uuid4().hex}) for c in template.calls]
            metrics = [
                m.model_copy(update={"value": round(rng.uniform(0, 30), 3)})
                for m in template.metrics
            ]
            run = template.model_copy(
                update={
                    "run_id": uuid.uuid4().hex,
                    "num_executions": per_session,
                    "execution_index": index,
                    "calls": calls,
                    "metrics": metrics,
                }
            )
            batch.append(run)
            if len(batch) == 200:  # as the writer inserts them
                store.insert_runs(session, batch)
                batch = []
        store.insert_runs(session, batch)
        store.finish_session(session, status="complete", exitstatus=0)
    store.close()
    return sessions


def message_bytes(db: Path) -> int:
    import sqlite3

    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT SUM(LENGTH(message_log)) FROM message_log").fetchone()[0])


def summary_seconds(db: Path, session: str) -> Sample:
    """The session-end work behind the terminal summary, in process."""
    from pytest_llmexp._plugin.terminal import write_summary
    from pytest_llmexp._store.store import Store
    from pytest_llmexp._verdict.verdicts import judge_session

    class Terminal:
        def __init__(self) -> None:
            self.lines: list[str] = []

        def write_sep(self, sep: str, title: str, **_: object) -> None:
            self.lines.append(title)

        def write_line(self, line: str, **_: object) -> None:
            self.lines.append(line)

    store = Store(db)
    start = time.perf_counter()
    summaries = store.summaries(session)
    with store.reading() as conn:
        verdict = judge_session(
            conn,
            session,
            ini_gates=(),
            cli_gates=(),
            compare=None,
            fail_on_regression=False,
            not_evaluable=None,
        )
    terminal = Terminal()
    write_summary(terminal, summaries, str(db), session, verdict)  # type: ignore[arg-type]
    seconds = time.perf_counter() - start
    store.close()
    assert any("metric_9" in line for line in terminal.lines), terminal.lines
    return Sample(seconds)


def command(db: Path, *args: str) -> Sample:
    llmexp = [sys.executable, "-m", "pytest_llmexp.cli"]
    start = time.perf_counter()
    subprocess.run(
        [*llmexp, "--db", str(db), *args], check=True, capture_output=True, env=base_env()
    )
    return Sample(time.perf_counter() - start)


def rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(x.split()[1]) * 1024 for x in f if x.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0


def memory_growth(server: FakeLLM, count: int, *, ours: bool) -> tuple[float, float]:
    """A ``count``-run session's resident memory, sampled every half second: the peak, and
    its growth from a quarter of the session's time to its end (MiB)."""
    with workdir("memory") as where:
        if ours:
            (where / "test_it.py").write_text(experiment(count))
            cmd = pytest_cmd("test_it.py", f"--llm-db={where / 'bench.db'}")
        else:
            (where / "test_it.py").write_text(bare(count))
            cmd = pytest_cmd("test_it.py", "-p", "no:llmexp")
        proc = subprocess.Popen(cmd, cwd=where, env=llm_env(server), stdout=subprocess.DEVNULL)
        points = []
        while proc.poll() is None:
            time.sleep(0.5)
            points.append(rss(proc.pid))
        assert proc.returncode == 0, proc.returncode
    points = [p for p in points if p]
    quarter = points[len(points) // 4 :]
    return max(points) / 2**20, (quarter[-1] - quarter[0]) / 2**20


def main() -> list[Result]:
    repeats, runs = repeats_arg(5), int_arg("--runs", 100_000)
    compile_package()
    results = []
    with fake_server() as server, workdir("scale") as where:
        db = where / "big.db"
        start = time.perf_counter()
        sessions = build(db, server.url, runs)
        first, second = sessions[-2], sessions[-1]
        print(f"built {runs} runs x {METRICS} metrics in {time.perf_counter() - start:.0f} s")
        for suffix in ("-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        size, text = db.stat().st_size, message_bytes(db)
        per_run = (size - text) / runs
        print(
            f"database: {size / 2**20:.1f} MiB, message text {text / 2**20:.1f} MiB, "
            f"{per_run:.0f} bytes per run beyond the message text (target <= 2048)"
        )
        results.append(Result("Scale: bytes per run beyond text", per_run, 2048))
        out = where / "report.html"
        timings = [
            ("terminal summary (10,000-run session)", lambda: summary_seconds(db, second)),
            ("llmexp show scale", lambda: command(db, "show", "scale")),
            (
                "llmexp compare",
                lambda: command(db, "compare", first[:12], second[:12]),
            ),
            ("llmexp report", lambda: command(db, "report", "-o", str(out))),
        ]
        for title, measure in timings:
            results.append(within(f"Scale: {title}", measure, repeats=repeats, limit=0.5))
        count = 10_000
        print(f"\n## Memory of a {count}-run session (resident MiB, growth over its last 3/4)")
        # Each side three times, alternately: one session's growth varies from one session
        # to the next (the bare side's has measured from 4 to 22 MiB on the same machine).
        growths: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(3):
            for ours in (False, True):
                peak, growth = memory_growth(server, count, ours=ours)
                name = "@experiment" if ours else "bare pytest + openai"
                print(f"{name:<24} peak {peak:6.1f}  growth {growth:5.1f}", flush=True)
                growths[ours].append(growth)
        extra = statistics.median(growths[True]) - statistics.median(growths[False])
        print(
            f"growth beyond bare pytest's own (medians): {extra:.1f} MiB "
            "(target <= 5, 0.5 KB a run)"
        )
        results.append(
            Result("Scale: memory growth beyond pytest's, 10,000 runs (MiB)", extra, 5.0)
        )
    return results


if __name__ == "__main__":
    main()
