"""The tagline experiment: two prompt styles side by side, as variants, over two products.

Each style is a variant; each product is a case. Run both styles three times per product:

    pytest examples --llm-experiment tagline

Compare two models instead of two styles, with no change to the code (it needs an endpoint
that serves both, e.g. OpenAI: the embedded model is one model):

    pytest examples --llm-experiment tagline --llm-model gpt-4o-mini --llm-model gpt-4o

The summary shows each variant's metrics side by side, each compared with the first, what
each costs at the llm_prices of pyproject.toml, and the cheapest that passes every gate.
"""

import pytest

from pytest_llmexp import SimpleBot, experiment, metric, prompt

STYLES = {
    "plain": "Write one plain sentence.",
    "punchy": "Write at most six punchy words.",
}


@prompt("system")
def tagline_writer(style):
    """You write taglines for products. {{ style }}"""


@prompt("user")
def tagline_request(product):
    """Write a tagline for {{ product }}."""


def tagline(reply) -> str:
    """The reply's first line: a model may go on after its tagline."""
    lines = [line for line in reply.content.splitlines() if line.strip()]
    return lines[0].strip() if lines else ""


@metric(better="lower")
def words(reply) -> int:
    return len(tagline(reply).split())


@metric
def short(reply) -> bool:
    return 0 < len(tagline(reply).split()) <= 10


@pytest.mark.parametrize("product", ["a solar camping lamp", "a note-taking app"])
@pytest.mark.parametrize("style", list(STYLES))
@experiment(num_executions=3, variants=["style"], gates=["short: pass_rate >= 0.5"])
def test_tagline(style, product):
    bot = SimpleBot(
        tagline_writer(STYLES[style]), model_name="gpt-4o-mini", temperature=0.7, max_tokens=24
    )
    reply = bot(tagline_request(product))
    words(reply)
    short(reply)
