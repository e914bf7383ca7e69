"""An experiment over an application's own code: no bot of ours, only its openai calls.

    pytest examples --llm-experiment summariser

Every call the summariser makes (its sync client made at import, its gathered async calls)
is recorded in the run that made it: the conversation, the tokens, the latency. See
docs/testing-your-application.md.
"""

import asyncio

import summariser

from pytest_llmexp import experiment, metric

TEXTS = [
    "The city council voted on Tuesday to extend the night bus service to the airport. "
    "Buses will run every thirty minutes between midnight and five in the morning, starting "
    "in March, after two years of requests from nurses, cleaners and other shift workers "
    "who had no way to reach the terminals before the first train.",
    "A new study of two thousand gardens found that leaving a strip of grass unmown doubled "
    "the number of bees and butterflies that visited over one summer. The researchers say "
    "that a strip one metre wide is enough, and that mowing it once in late autumn keeps "
    "the wild flowers coming back the next year.",
]


@metric
def shorter(summaries: list[str]) -> float:
    """The share of summaries shorter than their text."""
    return sum(len(s) < len(t) for s, t in zip(summaries, TEXTS, strict=True)) / len(TEXTS)


@metric
def answered(summaries: list[str]) -> bool:
    """Every text got a summary with words in it."""
    return all(s.strip() for s in summaries)


@experiment(num_executions=3)
def test_summariser():
    first = summariser.summarise(TEXTS[0])
    rest = asyncio.run(summariser.summarise_all(TEXTS[1:]))
    summaries = [first, *rest]
    shorter(summaries)
    answered(summaries)
