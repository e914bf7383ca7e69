"""Benchmark 2, per-run overhead: 1,000 executions of a one-call experiment against 1,000
parametrized bare pytest tests making the same ``openai`` call, serial and ``-n 4``, against
the fake server with no latency. Wall time and peak memory (the whole process tree).

    python bench/bench_runs.py [--repeats N] [--executions N]
"""

from __future__ import annotations

from harness import (
    Result,
    Side,
    compare,
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
from workloads import bare, experiment


def main() -> list[Result]:
    repeats, count = repeats_arg(9), int_arg("--executions", 1000)
    compile_package()
    results = []
    with fake_server() as server, workdir("runs") as where:
        (where / "test_bare.py").write_text(bare(count))
        (where / "test_experiment.py").write_text(experiment(count))
        env = llm_env(server)
        empty = starting_database(where, env)

        def run_experiment(*xdist: str) -> Side:
            return Side(
                f"@experiment {' '.join(xdist) or 'serial'}",
                lambda: experiment_session(where, empty, env, *xdist),
            )

        for xdist, target in (((), 1.05), (("-n", "4"), 1.10)):
            base = Side(
                f"bare pytest + openai {' '.join(xdist) or 'serial'}",
                lambda xdist=xdist: timed(
                    pytest_cmd("test_bare.py", "-p", "no:llmexp", *xdist), cwd=where, env=env
                ),
            )
            title = f"Per run: {count} executions, {' '.join(xdist) or 'serial'}"
            results.append(
                compare(
                    title,
                    [base, run_experiment(*xdist)],
                    repeats=repeats,
                    target=target,
                    memory_target=1.1,
                )
            )
    return results


if __name__ == "__main__":
    main()
