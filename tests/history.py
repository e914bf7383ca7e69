"""A message_log.db with a history, made by real pytest sessions against the fake server: the
CLI and HTML report tests read it.

Sessions, oldest first:

1. ``namer`` (2 cases x 3 executions), serial: the baseline; all gates pass.
2. ``namer`` with the system prompt changed, under ``-n 2``: "Ninja" names fail their run.
3. ``namer`` at a lower temperature, serial, with a gate from the command line; one reply
   holds markup that must stay text.
4. ``halted``: its second execution calls ``pytest.exit``, so the session is interrupted.
"""

from __future__ import annotations

import itertools
import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from fakellm import FakeLLM, default_reply

NAMER = '''
import pytest
from pytest_llmexp import SimpleBot, experiment, metric, prompt


@prompt("system")
def namer_system():
    """You name jobs.{extra}"""


@prompt("user")
def namer_user(topic):
    """Give me a job name for {{{{ topic }}}}."""


@prompt("user")
def rate_user(name):
    """Rate this name from 1 to 10: {{{{ name }}}}"""


@metric
def words(reply: str) -> int:
    return len(reply.split())


@metric
def short(reply: str) -> bool:
    return len(reply) < 20


@metric(better="higher")
def coolness(reply: str) -> float:
    judge = SimpleBot("You are a judge.", model_name="judge-model", temperature=0.0)
    return float(judge(rate_user(reply)).content)


@pytest.mark.parametrize("topic", ["ai apps", "data pipelines"])
@experiment(num_executions=3, gates=["words: mean <= 4", "short: pass_rate >= 0.3"])
def test_namer(topic):
    bot = SimpleBot(namer_system(), model_name="gen-model", temperature={temperature})
    reply = bot(namer_user(topic)).content
    if "Ninja" in reply:
        raise RuntimeError("ninja names are not allowed")
    words(reply)
    short(reply)
    coolness(reply)
'''

HALTED = """
import pytest
from pytest_llmexp import SimpleBot, experiment, metric


@metric
def size(reply: str) -> int:
    return len(reply)


@experiment(num_executions=3)
def test_halted(llm_run):
    if llm_run.execution_index == 1:
        pytest.exit("stopped by the test")
    size(SimpleBot("You halt.", model_name="gen-model")("go").content)
"""

#: A reply with markup: the report must show it as text.
MARKUP = '<img src=x onerror="document.title=1"> Script Kid'
#: Key-shaped text a model repeated: stored as it came, masked in every output.
SECRET = "sk-live-0123456789abcdefghij"


@dataclass
class History:
    path: Path
    #: Session ids, oldest first.
    sessions: list[str] = field(default_factory=list)


def build_history(server: FakeLLM, directory: Path) -> History:
    """Run the four sessions in ``directory``; the replies are scripted, so the numbers are
    the same every time."""
    names = itertools.cycle(
        ["Chief AI Wizard", "Data Lead", "AI Ninja", "Pipeline Builder Lead Person", MARKUP, SECRET]
    )
    scores = itertools.cycle(["7", "4", "9", "5", "6"])

    def reply(request: dict) -> str:
        last = request["messages"][-1]["content"]
        if last.startswith("Rate this name"):
            return next(scores)
        if last == "go":
            return default_reply(request)
        return next(names)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "LLMEXP_"))}
    env.update(OPENAI_BASE_URL=server.url, OPENAI_API_KEY="sk-history-0123456789abcdef")
    history = History(directory / "message_log.db")
    steps = [
        (NAMER.format(extra="", temperature=0.7), []),
        (NAMER.format(extra=" Keep it short.", temperature=0.7), ["-n", "2"]),
        (
            NAMER.format(extra=" Keep it short.", temperature=0.2),
            ["--llm-gate", "namer.coolness: mean >= 1"],
        ),
    ]
    server.reset()
    server.responder = reply
    try:
        for source, args in steps:
            (directory / "test_namer.py").write_text(source)
            _pytest(directory, env, args, "test_namer.py")
        (directory / "test_halted.py").write_text(HALTED)
        _pytest(directory, env, [], "test_halted.py")
    finally:
        server.reset()
    with sqlite3.connect(history.path) as conn:
        rows = conn.execute("SELECT id FROM sessions ORDER BY started_at")
        history.sessions = [r[0] for r in rows]
    assert len(history.sessions) == 4, history.sessions
    return history


def _pytest(directory: Path, env: dict[str, str], args: list[str], target: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args, target],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    # Failing runs (exit 1) and the interrupted session (exit 2) are part of the history.
    assert result.returncode in (0, 1, 2), result.stdout + result.stderr
