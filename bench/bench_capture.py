"""Benchmark 6, the capture of the code's own openai calls: 300 executions of an experiment
whose body makes five calls through the application's own client (made at import), with
capture on against ``--llm-capture off``, serial, against the fake server with no latency.
What capture costs a call: reading its request and reply, its cache key, its record.

    python bench/bench_capture.py [--repeats N] [--executions N]
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
    repeats_arg,
    starting_database,
    workdir,
)

APPLICATION = """
from openai import OpenAI

client = OpenAI(max_retries=2, timeout=60.0)  # made at import, as applications do


def answer(question):
    reply = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "system", "content": "Answer briefly."},
                  {"role": "user", "content": question}],
        temperature=0.2,
    )
    return reply.choices[0].message.content
"""

EXPERIMENT = """
import application
from pytest_llmexp import experiment, metric


@metric
def words(text) -> int:
    return len(text.split())


@experiment(num_executions=COUNT)
def test_application():
    replies = [application.answer(f"question {n}") for n in range(5)]
    words(" ".join(replies))
"""


def main() -> list[Result]:
    repeats, count = repeats_arg(7), int_arg("--executions", 300)
    compile_package()
    with fake_server() as server, workdir("capture") as where:
        (where / "application.py").write_text(APPLICATION)
        (where / "test_experiment.py").write_text(EXPERIMENT.replace("COUNT", str(count)))
        env = llm_env(server)
        empty = starting_database(where, env)
        sides = [
            Side(
                "experiment, --llm-capture off",
                lambda: experiment_session(where, empty, env, "--llm-capture", "off"),
            ),
            Side("experiment, capture on", lambda: experiment_session(where, empty, env)),
        ]
        return [
            compare(
                f"Capture: {count} executions x 5 client calls, serial",
                sides,
                repeats=repeats,
                target=1.10,
                memory_target=1.1,
            )
        ]


if __name__ == "__main__":
    main()
