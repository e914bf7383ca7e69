"""All six benchmarks, then one table of what they measured against their targets.

    python bench/run.py [--repeats N]   (N overrides every benchmark's own default)

Takes about twenty minutes on two cores; each benchmark script also runs on its own.
"""

from __future__ import annotations

import bench_capture
import bench_flight
import bench_idle
import bench_parallel
import bench_runs
import bench_scale
from harness import Result


def main() -> int:
    results: list[Result] = []
    for bench in (bench_idle, bench_runs, bench_parallel, bench_flight, bench_capture, bench_scale):
        results += bench.main()
    print("\n## Summary\n")
    print("| benchmark | measured | target | |")
    print("|---|---|---|---|")
    for r in results:
        measured = f"{r.ratio:.3f}"
        target = f"<= {r.target}"
        if r.memory_ratio is not None:
            measured += f", memory {r.memory_ratio:.3f}"
            target += f", memory <= {r.memory_target}"
        print(f"| {r.title} | {measured} | {target} | {'met' if r.met else 'NOT MET'} |")
    return 0 if all(r.met for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
