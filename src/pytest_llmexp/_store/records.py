"""The records that cross process boundaries: JSON in, JSON out, never pickle."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .._util.jsontext import compact_json as _json

RunStatus = Literal["passed", "failed", "error", "skipped", "crashed", "rerun"]
MetricKind = Literal["bool", "int", "float"]


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PromptRecord(_Record):
    """One version of a ``@prompt`` function: its template and role, keyed by ``hash``."""

    hash: str
    function_name: str
    module: str
    role: str
    template: str

    @property
    def key(self) -> tuple[str, str, str]:
        """How the version is found in the ``prompts`` table: module, function, hash."""
        return (self.module, self.function_name, self.hash)


class BotRecord(_Record):
    """One bot configuration as it was called (after any ``--llm-model`` override)."""

    hash: str
    class_name: str
    model_name: str
    temperature: float | None
    system_prompt: str | None
    system_prompt_hash: str | None
    response_schema: dict[str, Any] | None
    params: dict[str, Any]
    #: ``bot`` (SimpleBot, StructuredBot) or ``client``: the code's own ``openai`` client,
    #: whose calls were captured (``class_name`` is ``OpenAI`` or ``AsyncOpenAI``).
    kind: Literal["bot", "client"] = "bot"


class CallRecord(_Record):
    """One chat completion request and what came back (or the error)."""

    id: str
    bot_hash: str
    timestamp: str
    model_name: str
    response_model: str | None
    temperature: float | None
    messages: list[dict[str, Any]]
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_ms: float
    retries: int
    finish_reason: str | None
    error: str | None
    #: The failure's type (``RateLimitError``, ``APITimeoutError``, ``MalformedResponse``...).
    error_type: str | None = None
    #: A message's text was longer than the storage cap and was cut.
    truncated: bool = False
    #: The call's cache key, and what it was made of (see :mod:`.cache`); ``None`` outside runs.
    cache_key: str | None = None
    request: dict[str, Any] | None = None
    #: The recorded call (a ``message_log`` id) this reply was served from, not the endpoint.
    replayed_from: str | None = None
    #: The sampling seed the request sent (the embedded model gets a fresh one per call).
    seed: int | None = None
    #: Store this call as the recorded reply of its key (``--llm-cache record`` or ``auto``).
    record: bool = False
    #: The API called: ``chat.completions`` (every bot call) or ``responses``.
    api: str = "chat.completions"
    #: The reply was streamed (``stream=True``).
    stream: bool = False
    #: A judge made it: a bot (or client) called inside a ``@metric`` function.
    judge: bool = False

    def row(self, run_id: str | None) -> tuple[Any, ...]:
        """The call's ``message_log`` row, in the column order the store inserts, with the
        bot's hash where the store puts the bot's id."""
        return (
            self.id,
            run_id,
            self.bot_hash,
            self.timestamp,
            self.model_name,
            self.response_model,
            self.temperature,
            _json(self.messages),
            self.prompt_tokens,
            self.completion_tokens,
            self.latency_ms,
            self.retries,
            self.finish_reason,
            self.error,
            self.error_type,
            int(self.truncated),
            self.cache_key,
            None if self.request is None else _json(self.request),
            self.replayed_from,
            self.seed,
            self.api,
            int(self.stream),
            int(self.judge),
        )


class MetricRecord(_Record):
    """One metric value of one run."""

    name: str
    value: float
    kind: MetricKind


class MetricSpec(_Record):
    """What a ``@metric`` declares beyond its value, carried by each run that records it."""

    gates: list[str] = Field(default_factory=list)
    min: float | None = None
    max: float | None = None
    #: Which direction is an improvement (``None``: from the gates, else higher).
    better: Literal["higher", "lower"] | None = None
    #: The metric function itself called an LLM in this run (an LLM judge).
    judge: bool = False
    #: The version of the metric's code: a hash of its source, as prompts are versioned.
    code: str | None = None


class Recording(_Record):
    """What a run, or the calls made outside any run, used: prompts, bots, calls."""

    prompts: list[PromptRecord] = Field(default_factory=list)
    bots: list[BotRecord] = Field(default_factory=list)
    calls: list[CallRecord] = Field(default_factory=list)
    #: Outside runs: the test of each call that came after its run had ended (a thread the
    #: test started and did not wait for), for the session's warning; not stored.
    late: list[str] = Field(default_factory=list)


class RunRecord(Recording):
    """One execution of an experiment, as it reaches the writer.

    ``prompts`` and ``bots`` carry the definitions the run used; ``prompt_refs`` and
    ``bot_refs`` name the others it used, whose definitions an earlier record of the same
    process carried (each definition travels once per process, not with every run).
    """

    run_id: str
    experiment: str
    num_executions: int
    execution_index: int
    nodeid: str | None
    worker: str
    started_at: str
    duration_s: float
    status: RunStatus
    error_type: str | None = None
    error_message: str | None = None
    metrics: list[MetricRecord] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    #: The parametrize id of the run's case, without ``exec-N`` (``None``: one case).
    #: Which attempt of its execution this is: a rerun plugin (pytest-rerunfailures) runs
    #: a failed execution again; only the last attempt is evaluated.
    attempt: int = 1
    case_id: str | None = None
    #: The variant the run belongs to, ``model=gpt-4o`` (``None``: the experiment has none).
    variant: str | None = None
    #: The experiment's variants in the order declared (the first is the reference).
    variants: list[str] = Field(default_factory=list)
    #: What its calls cost in US dollars at the session's prices (``None``: some model has
    #: no price, or no prices are set), the judges' calls apart.
    cost: float | None = None
    judge_cost: float | None = None
    #: The gates its experiment declares in code (``@experiment(gates=...)``).
    gates: list[str] = Field(default_factory=list)
    #: The executions the code declares, when the session ran another number
    #: (``--llm-num-executions``).
    declared_executions: int | None = None
    #: Adaptive executions (``--llm-adaptive``): the cases a round has, the confidence.
    adaptive: dict[str, Any] | None = None
    metric_specs: dict[str, MetricSpec] = Field(default_factory=dict)
    #: The stored run whose generations this run replayed (``--llm-replay-from``).
    replayed_from: str | None = None
    #: Prompts used (module, function, hash) and bots used (hash) that are defined earlier.
    prompt_refs: list[tuple[str, str, str]] = Field(default_factory=list)
    bot_refs: list[str] = Field(default_factory=list)

    def row(self) -> tuple[Any, ...]:
        """The run's ``experiment_runs`` row, in the column order the store inserts, with
        the experiment's name and size where the store puts the experiment's id."""
        return (
            self.run_id,
            self.experiment,
            self.num_executions,
            self.execution_index,
            self.worker,
            self.nodeid,
            self.status,
            self.error_type,
            self.error_message,
            self.started_at,
            self.duration_s,
            sum(c.retries for c in self.calls),
            _json(self.run_data()),
            self.case_id,
            self.replayed_from,
            self.attempt,
            self.variant,
            self.cost,
            self.judge_cost,
        )

    def run_data(self) -> dict[str, Any]:
        """What ``experiment_runs.run_data`` stores: what no table of the run holds."""
        data: dict[str, Any] = {
            "metadata": self.metadata,
            "gates": self.gates,
            "metric_specs": {
                name: spec.model_dump(exclude_defaults=True)
                for name, spec in self.metric_specs.items()
            },
        }
        if self.declared_executions is not None:
            data["declared_executions"] = self.declared_executions
        if self.variants:
            data["variants"] = self.variants
        if self.adaptive is not None:
            data["adaptive"] = self.adaptive
        return data
