"""Benchmark 3, parallel throughput, with 200 ms of latency per call.

- 200 executions under ``-n 8`` against the bare pytest + xdist equivalent.
- ``Experiment.run`` with 16 threads against the ideal: executions x latency / threads. Its
  time is the ``with Experiment(...)`` block, timed by the script itself (the interpreter's
  start and imports are not the experiment's).

    python bench/bench_parallel.py [--repeats N]
"""

from __future__ import annotations

import subprocess
import sys

from harness import (
    Result,
    Sample,
    Side,
    compare,
    compile_package,
    fake_server,
    llm_env,
    pytest_cmd,
    repeats_arg,
    timed,
    workdir,
)
from workloads import bare, experiment, script

COUNT, LATENCY, WORKERS, THREADS = 200, 0.2, 8, 16


def main() -> list[Result]:
    repeats = repeats_arg(3)
    compile_package()
    results = []
    with fake_server(LATENCY) as server, workdir("parallel") as where:
        (where / "test_bare.py").write_text(bare(COUNT))
        (where / "test_experiment.py").write_text(experiment(COUNT))
        (where / "threads.py").write_text(script(COUNT, THREADS))
        env = llm_env(server)
        db = where / "bench.db"
        xdist = ("-n", str(WORKERS))

        def fresh(*cmd: str) -> Sample:
            for leftover in where.glob("bench.db*"):
                leftover.unlink()
            return timed(cmd, cwd=where, env=env)

        base = Side(
            f"bare pytest + openai -n {WORKERS}",
            lambda: timed(
                pytest_cmd("test_bare.py", "-p", "no:llmexp", *xdist), cwd=where, env=env
            ),
        )
        ours = Side(
            f"@experiment -n {WORKERS}",
            lambda: fresh(*pytest_cmd("test_experiment.py", f"--llm-db={db}", *xdist)),
        )
        title = f"Parallel: {COUNT} executions, {LATENCY * 1000:.0f} ms per call, -n {WORKERS}"
        results.append(compare(title, [base, ours], repeats=repeats, target=1.1))

        def block() -> Sample:
            for leftover in where.glob("bench.db*"):
                leftover.unlink()
            out = subprocess.run(
                [sys.executable, "threads.py", str(db)],
                cwd=where,
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            return Sample(float(out.stdout.split()[-1]))

        ideal = COUNT * LATENCY / THREADS
        title = f"Experiment.run: {COUNT} executions, {THREADS} threads, ideal {ideal:.2f} s"
        results.append(
            compare(
                title,
                [
                    Side("ideal (N x latency / threads)", lambda: Sample(ideal)),
                    Side("Experiment.run", block),
                ],
                repeats=repeats,
                target=1.3,
            )
        )
    return results


if __name__ == "__main__":
    main()
