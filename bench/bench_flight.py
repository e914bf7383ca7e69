"""Benchmark 6, executions in flight (``--llm-concurrency``) and rate limits.

- 1,000 executions, 1 s per call, ``--llm-concurrency 64``, no xdist: wall against the ideal
  (executions x latency / 64), the fake server's peak of requests in flight, and peak memory
  against a K = 1 session of the same experiment (100 executions at 50 ms, so that it ends).
- The same with ``-n 2 --llm-concurrency 32``.
- Per-run overhead with no latency: 1,000 executions at K = 64 against K = 1.
- An endpoint that admits 10 requests a second and answers 429 + ``Retry-After: 1`` beyond:
  200 executions with ``--llm-rpm 600 --llm-concurrency 16 -n 2``, and without
  ``--llm-rpm``, against the ideal 20 s; no run may error; the 429s are counted.

    python bench/bench_flight.py [--repeats N] [--executions N]
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from harness import (
    Result,
    Sample,
    Side,
    compare,
    compile_package,
    experiment_session,
    fake_server,
    int_arg,
    llm_env,
    repeats_arg,
    starting_database,
    workdir,
)
from workloads import experiment

LATENCY = 1.0


def _not_passed(where: Path) -> int:
    """Runs of the last measured session (``where/bench.db``) that did not pass."""
    with sqlite3.connect(where / "bench.db") as db:
        (count,) = db.execute("select count(*) from experiment_runs where status != 'passed'")
        return int(count[0])


def main() -> list[Result]:
    repeats, count = repeats_arg(3), int_arg("--executions", 1000)
    compile_package()
    results = []
    with fake_server(LATENCY) as server, workdir("flight") as where:
        (where / "test_experiment.py").write_text(experiment(count))
        env = llm_env(server)
        empty = starting_database(where, env)

        for args, k in (((), 64), (("-n", "2"), 32)):
            ideal = count * LATENCY / (k * (2 if args else 1))
            peaks: list[int] = []

            def flight(
                args: tuple[str, ...] = args, k: int = k, peaks: list[int] = peaks
            ) -> Sample:
                server.peak_in_flight = 0
                sample = experiment_session(where, empty, env, *args, f"--llm-concurrency={k}")
                peaks.append(server.peak_in_flight)
                return sample

            title = (
                f"In flight: {count} executions, {LATENCY:g} s per call, "
                f"{' '.join(args) or 'serial'} --llm-concurrency {k}, ideal {ideal:.1f} s"
            )
            results.append(
                compare(
                    title,
                    [
                        Side("ideal (N x latency / in flight)", lambda i=ideal: Sample(i)),
                        Side(f"@experiment K={k}", flight),
                    ],
                    repeats=repeats,
                    target=1.25 if not args else 1.3,
                    warmup=False,
                )
            )
            print(f"requests in flight at the endpoint, at most: {max(peaks)}")

    # Memory and per-run overhead: the same experiment at K = 1 and at K = 64.
    for latency, n, what in ((0.05, 100, "memory"), (0.0, count, "per run")):
        with fake_server(latency) as server, workdir("flight-k") as where:
            (where / "test_experiment.py").write_text(experiment(n))
            env = llm_env(server)
            empty = starting_database(where, env)
            sides = [
                Side(
                    "@experiment K=1",
                    lambda e=empty, v=env, w=where: experiment_session(w, e, v),
                ),
                Side(
                    "@experiment K=64",
                    lambda e=empty, v=env, w=where: experiment_session(
                        w, e, v, "--llm-concurrency=64"
                    ),
                ),
            ]
            if what == "memory":
                title = f"Peak memory: {n} executions at {latency * 1000:.0f} ms, K=64 vs K=1"
                result = compare(title, sides, repeats=repeats, target=1.0, memory_target=1.5)
                # The wall is meant to shrink here; only the memory ratio is the target.
                results.append(Result(title, 0.0, 1.0, result.memory_ratio, 1.5))
            else:
                title = f"Per run: {n} executions, no latency, K=64 vs K=1"
                results.append(compare(title, sides, repeats=repeats, target=1.10))

    with fake_server(0.05) as server, workdir("flight-429") as where:
        n, admit = 200, 10
        (where / "test_experiment.py").write_text(experiment(n))
        env = llm_env(server)
        empty = starting_database(where, env)
        ideal = n / admit
        for extra, target in ((("--llm-rpm=600",), 1.2), ((), 1.6)):
            throttled: list[int] = []

            def limited(extra: tuple[str, ...] = extra, throttled: list[int] = throttled) -> Sample:
                server.reset()
                server.latency = 0.05
                server.admit_per_second = admit
                sample = experiment_session(
                    where, empty, env, "-n", "2", "--llm-concurrency=16", *extra
                )
                throttled.append(server.throttled)
                bad = _not_passed(where)
                if bad:
                    raise SystemExit(f"{bad} run(s) did not pass under a rate limit")
                return sample

            title = (
                f"Rate limited: {n} executions, endpoint admits {admit}/s, -n 2 K=16 "
                f"{' '.join(extra) or 'no --llm-rpm'}, ideal {ideal:.0f} s"
            )
            results.append(
                compare(
                    title,
                    [
                        Side("ideal (N / admitted per s)", lambda: Sample(ideal)),
                        Side("@experiment", limited),
                    ],
                    repeats=repeats,
                    target=target,
                    warmup=False,
                )
            )
            print(f"answers 429 per session: {throttled}; no run errored")
    return results


if __name__ == "__main__":
    main()
