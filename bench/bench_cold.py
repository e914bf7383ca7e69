"""A diagnostic, with no target: what recording one run costs in-process, with the CPU's
caches warm (the same run in a loop) and cold (16 MiB copied before each run, as the HTTP
client, pytest and the server evict them between two tests of a session).

The run is the per-run benchmark's experiment body (two prompts, a StructuredBot call, a
metric), then freezing the run and its masked JSON, as the relay does; the endpoint's reply
is made in-process, so only the plugin's own code is timed. The baseline validates the same
reply, as the bare test does.

    python bench/bench_cold.py [--runs N]
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

from harness import int_arg
from workloads import EXPERIMENT

REPLY = '{"name": "fake name", "description": "fake description"}'


def workload() -> tuple[Callable[[], Any], Callable[[], Any]]:
    """The recorded run and the bare baseline, as functions of no arguments."""
    os.environ.setdefault("OPENAI_API_KEY", "sk-bench")
    os.environ.setdefault("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    from pytest_llmexp._run import bots
    from pytest_llmexp._run.calls import Reply
    from pytest_llmexp._run.recording import RunContext, activate
    from pytest_llmexp._util.redact import redact

    reply = Reply(REPLY, "gpt-4o-mini", 24, 6, "stop", 0)
    bots.request_completion = lambda client, retries, **request: reply  # no HTTP
    namespace: dict[str, Any] = {}
    source = EXPERIMENT.replace("COUNT", "1").replace("@experiment(num_executions=1)\n", "")
    exec(compile(source, "bench_cold_workload", "exec"), namespace)
    test, model = namespace["test_names"], namespace["JobDescription"]

    def recorded() -> str:
        run = RunContext("names", num_executions=1, execution_index=0, worker="main")
        with activate(run, process_wide=True):
            test()
        return redact(run.finish("passed").model_dump_json())

    return recorded, lambda: model.model_validate_json(REPLY)


def main() -> None:
    runs = int_arg("--runs", 300)
    recorded, bare = workload()
    scratch = bytearray(16 * 1024 * 1024)

    def evict() -> None:
        bytes(scratch)  # a 16 MiB copy through the caches

    def per_run(fn: Callable[[], Any], cold: bool) -> float:
        total = 0.0
        for _ in range(runs):
            if cold:
                evict()
            start = time.perf_counter()
            fn()
            total += time.perf_counter() - start
        return total / runs * 1e6

    results: dict[tuple[str, bool], list[float]] = {}
    recorded(), bare()
    for _ in range(5):
        for name, fn in (("bare", bare), ("recorded", recorded)):
            for cold in (False, True):
                results.setdefault((name, cold), []).append(per_run(fn, cold))
    print("## One run's recording, in-process (µs per run, median of 5)")
    print(f"{'side':10s} {'warm':>8s} {'cold':>8s}  cold/warm")
    for name in ("bare", "recorded"):
        warm, cold = (statistics.median(results[(name, c)]) for c in (False, True))
        print(f"{name:10s} {warm:8.1f} {cold:8.1f}  {cold / warm:8.2f}")


if __name__ == "__main__":
    main()
