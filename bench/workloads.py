"""The test files the benchmarks run: one side with pytest-llmexp, one bare pytest + openai.

Both make the same structured call per test (the same messages and JSON-schema response
format, against the same endpoint) and validate the same pydantic model; the experiment
side also renders its prompts, records the run and its metric, and stores them.
"""

from __future__ import annotations

MODEL = """
from pydantic import BaseModel, Field


class JobDescription(BaseModel):
    name: str = Field(..., description="A job name.")
    description: str = Field(..., description="A job description.")
"""

EXPERIMENT = (
    MODEL
    + '''
from pytest_llmexp import StructuredBot, experiment, metric, prompt


@prompt("system")
def sysprompt(kind):
    """You are an {{ kind }}."""


@prompt("user")
def user_message(description):
    """Give me a name for a job that follows this description: {{ description }}."""


@metric
def name_length(response) -> int:
    return len(response.name)


@experiment(num_executions=COUNT)
def test_names():
    bot = StructuredBot(
        sysprompt("data science manager"), model_name="gpt-4o-mini", pydantic_model=JobDescription
    )
    response = bot(user_message("someone who builds full stack AI apps"))
    name_length(response)
'''
)

BARE = (
    MODEL
    + """
import pytest
from openai import OpenAI

client = OpenAI(max_retries=2, timeout=60.0)
MESSAGES = [
    {"role": "system", "content": "You are an data science manager."},
    {
        "role": "user",
        "content": "Give me a name for a job that follows this description: someone who "
        "builds full stack AI apps.",
    },
]
FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "JobDescription", "schema": JobDescription.model_json_schema()},
}


@pytest.mark.parametrize("execution", range(COUNT))
def test_names(execution):
    completion = client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, response_format=FORMAT
    )
    response = JobDescription.model_validate_json(completion.choices[0].message.content)
    assert len(response.name) >= 0
"""
)


#: The bare side with the request made as the bots make it (``client.post``, the reply read as
#: JSON): what the plugin itself adds, apart from the cheaper request path it takes.
BARE_POST = BARE.replace(
    """    completion = client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, response_format=FORMAT
    )
    response = JobDescription.model_validate_json(completion.choices[0].message.content)""",
    """    reply = json.loads(
        client.post(
            "/chat/completions",
            body={"model": "gpt-4o-mini", "messages": MESSAGES, "response_format": FORMAT},
            cast_to=str,
        )
    )
    response = JobDescription.model_validate_json(reply["choices"][0]["message"]["content"])""",
).replace("import pytest\n", "import json\n\nimport pytest\n")


def experiment(count: int) -> str:
    return EXPERIMENT.replace("COUNT", str(count))


def bare(count: int) -> str:
    return BARE.replace("COUNT", str(count))


def bare_post(count: int) -> str:
    assert BARE_POST != BARE, "the bare side's call changed: update BARE_POST"
    return BARE_POST.replace("COUNT", str(count))


SCRIPT = (
    EXPERIMENT.split("@experiment")[0]
    + """
import sys
import time

from pytest_llmexp import Experiment


def generate():
    bot = StructuredBot(
        sysprompt("data science manager"), model_name="gpt-4o-mini", pydantic_model=JobDescription
    )
    name_length(bot(user_message("someone who builds full stack AI apps")))


start = time.perf_counter()
with Experiment("threads", num_executions=COUNT, max_workers=THREADS, db=sys.argv[1]) as exp:
    runs = exp.run(generate)
print(time.perf_counter() - start)
assert [r.status for r in runs] == ["passed"] * COUNT, [r.error_message for r in runs]
"""
)


def script(count: int, threads: int) -> str:
    return SCRIPT.replace("COUNT", str(count)).replace("THREADS", str(threads))
