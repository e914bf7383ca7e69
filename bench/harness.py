"""What the benchmarks share: timing two sides alternately, peak memory, the fake server.

Each benchmark compares a side that uses pytest-llmexp with a baseline doing the same work
without it. The sides run alternately (A, B, A, B, ...), so that a machine that slows down
half-way slows both, and the median ratio is the number that is reported.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The fake OpenAI-compatible server of the test suite: real HTTP on 127.0.0.1, Nagle off.
sys.path.insert(0, str(ROOT / "tests"))

from fakellm import FakeLLM  # noqa: E402


@dataclass
class Sample:
    seconds: float
    peak_bytes: int = 0
    #: CPU seconds (user + system) of the process tree.
    cpu: float = 0.0


@dataclass
class Side:
    name: str
    measure: Callable[[], Sample]
    samples: list[Sample] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(s.seconds for s in self.samples)

    @property
    def peak(self) -> int:
        return int(statistics.median(s.peak_bytes for s in self.samples))

    @property
    def cpu(self) -> float:
        return statistics.median(s.cpu for s in self.samples)


@dataclass
class Result:
    title: str
    ratio: float
    target: float
    memory_ratio: float | None = None
    memory_target: float | None = None

    @property
    def met(self) -> bool:
        memory_ok = self.memory_ratio is None or self.memory_ratio <= (self.memory_target or 0)
        return self.ratio <= self.target and memory_ok


def compare(
    title: str,
    sides: Sequence[Side],
    *,
    repeats: int,
    target: float,
    memory_target: float | None = None,
    warmup: bool = True,
) -> Result:
    """Run ``sides`` alternately ``repeats`` times; print min/median/max and the ratio of
    each side's median to the first (the baseline)."""
    print(f"\n## {title}", flush=True)
    alternate(sides, repeats=repeats, warmup=warmup)
    base = sides[0]
    print(
        f"{'side':<34} {'min s':>8} {'median s':>9} {'max s':>8} {'CPU s':>7} {'peak MiB':>9} "
        f"{'ratio':>6}"
    )
    for side in sides:
        times = [s.seconds for s in side.samples]
        peak = f"{side.peak / 2**20:9.1f}" if side.peak else f"{'-':>9}"
        cpu = f"{side.cpu:7.2f}" if side.cpu else f"{'-':>7}"
        print(
            f"{side.name:<34} {min(times):8.3f} {side.median:9.3f} {max(times):8.3f} {cpu} "
            f"{peak} {side.median / base.median:6.3f}"
        )
    ratio = sides[-1].median / base.median
    # The two sides ran alternately, so each repeat gives a ratio of its own: their spread
    # tells how far a single session's ratio can be trusted on this machine.
    paired = [s.seconds / b.seconds for s, b in zip(sides[-1].samples, base.samples, strict=True)]
    low, middle, high = statistics.quantiles(paired, n=4) if len(paired) > 1 else paired * 3
    print(
        f"ratio of each repeat: min {min(paired):.3f}, quartiles {low:.3f} / {middle:.3f} / "
        f"{high:.3f}, max {max(paired):.3f}"
        + (f"; CPU ratio {sides[-1].cpu / base.cpu:.3f}" if base.cpu else "")
    )
    memory_ratio = sides[-1].peak / base.peak if memory_target and base.peak else None
    result = Result(title, ratio, target, memory_ratio, memory_target)
    verdict = "met" if result.met else "NOT MET"
    line = f"median ratio {ratio:.3f} (target <= {target})"
    if memory_ratio is not None:
        line += f", peak memory ratio {memory_ratio:.3f} (target <= {memory_target})"
    print(f"{line}: {verdict}", flush=True)
    return result


def alternate(sides: Sequence[Side], *, repeats: int, warmup: bool = True) -> None:
    """Measure ``sides`` in turn (A, B, A, B, ...) ``repeats`` times, after one warm-up
    round, so that a machine that slows down half-way slows every side."""
    if warmup:
        for side in sides:
            side.measure()
    for _ in range(repeats):
        for side in sides:
            side.samples.append(side.measure())


def within(title: str, measure: Callable[[], Sample], *, repeats: int, limit: float) -> Result:
    """Run ``measure`` ``repeats`` times; print min/median/max seconds against ``limit``."""
    print(f"\n## {title}", flush=True)
    measure()  # warm-up
    times = sorted(measure().seconds for _ in range(repeats))
    median = statistics.median(times)
    verdict = "met" if median <= limit else "NOT MET"
    print(
        f"min {times[0]:.3f} s, median {median:.3f} s, max {times[-1]:.3f} s "
        f"(target <= {limit} s): {verdict}",
        flush=True,
    )
    return Result(f"{title} (s)", median, limit)


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _high_water(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class TreeMemory:
    """Peak resident memory of a process and its descendants, summed over processes.

    Each process's own high-water mark (VmHWM) is read while it lives; the last value read
    for each process is kept, so a process that lives for the whole run counts its peak.
    """

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid, self.interval = pid, interval
        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self.read()

    def read(self) -> None:
        tree, todo = _children(), [self.pid]
        while todo:
            pid = todo.pop()
            peak = _high_water(pid)
            if peak:
                self.peaks[pid] = peak
            todo.extend(tree.get(pid, []))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return sum(self.peaks.values())


def base_env(**extra: str) -> dict[str, str]:
    """The environment of both sides: no OPENAI_*/LLMEXP_* settings of the caller's, and
    bytecode caching on, as for an installed package (pip compiles a wheel's modules)."""
    skip = ("LLMEXP_", "OPENAI_", "PYTHONDONTWRITEBYTECODE")
    env = {k: v for k, v in os.environ.items() if not k.startswith(skip)}
    env.update(extra)
    return env


def compile_package() -> None:
    """Write the package's bytecode once, so that no side pays for compiling it."""
    import compileall

    import pytest_llmexp

    compileall.compile_dir(Path(pytest_llmexp.__file__).parent, quiet=1)


def timed(cmd: Sequence[str], *, cwd: Path, env: dict[str, str] | None = None) -> Sample:
    """Run ``cmd`` to completion; its wall time and the peak memory of its process tree."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env or base_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    memory = TreeMemory(proc.pid)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    tree_peak = memory.stop()
    output = proc.stdout.read() if proc.stdout else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{output[-3000:]}")
    # ru_maxrss is the process's own peak in KiB, exact even for a short run; the CPU times
    # include the descendants it waited for (xdist's workers).
    cpu = usage.ru_utime + usage.ru_stime
    return Sample(seconds, max(tree_peak, usage.ru_maxrss * 1024), cpu)


def starting_database(where: Path, env: dict[str, str]) -> Path:
    """A database that a first session created in ``where``: most sessions add to an existing
    one, so each measured session starts from a copy of it (see :func:`experiment_session`)
    and creating it is paid once, outside any measurement."""
    from workloads import experiment

    db = where / "empty.db"
    (where / "test_empty.py").write_text(experiment(1).replace("test_names", "test_e"))
    timed(pytest_cmd("test_empty.py", f"--llm-db={db}"), cwd=where, env=env)
    return db


def experiment_session(where: Path, start: Path, env: dict[str, str], *args: str) -> Sample:
    """One timed session of ``where/test_experiment.py`` into a fresh copy of ``start``."""
    db = where / "bench.db"
    for leftover in where.glob("bench.db*"):
        leftover.unlink()
    shutil.copy(start, db)
    return timed(pytest_cmd("test_experiment.py", f"--llm-db={db}", *args), cwd=where, env=env)


def pytest_cmd(*args: str) -> list[str]:
    # -p no:cacheprovider: both sides skip the .pytest_cache writes; -q: little output.
    return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]


@contextlib.contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=f"llmexp-bench-{prefix}-") as where:
        path = Path(where)
        # An ini file of its own, so the repository's pytest settings do not apply.
        (path / "pytest.ini").write_text("[pytest]\n")
        yield path


@contextlib.contextmanager
def fake_server(latency: float = 0.0) -> Iterator[FakeLLM]:
    server = FakeLLM().start()
    server.latency = latency
    try:
        yield server
    finally:
        server.stop()


def llm_env(server: FakeLLM, **extra: str) -> dict[str, str]:
    return base_env(OPENAI_BASE_URL=server.url, OPENAI_API_KEY="sk-bench", **extra)


def int_arg(option: str, default: int) -> int:
    """``OPTION N`` from the command line, else ``default``."""
    args = sys.argv[1:]
    return int(args[args.index(option) + 1]) if option in args else default


def repeats_arg(default: int) -> int:
    """``--repeats N`` from the command line, else ``default``."""
    return int_arg("--repeats", default)
