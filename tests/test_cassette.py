"""Cache keys, replay-miss explanations and cassette files, without pytest sessions."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from conftest import inside_run
from fakellm import FakeLLM
from pytest_llmexp import ReplayMiss, SimpleBot, StoreError, StructuredBot, prompt
from pytest_llmexp._run import cache as cache_module
from pytest_llmexp._run.cache import CacheSettings, describe_miss
from pytest_llmexp._store.cassette import build_cassette, export_cassette, import_cassette
from pytest_llmexp._store.store import Store
from pytest_llmexp._util.jsontext import cache_key, request_digest


@prompt("user")
def ask(topic: str) -> None:
    """Name a {{ topic }}."""


def request(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "experiment": "names",
        "case": None,
        "execution": 0,
        "params": {},
        "schema": None,
        "prompts": [None, ["ask", "a" * 64]],
        "occurrence": 0,
    }
    return {**base, **changes}


def call(**changes: Any) -> dict[str, Any]:
    """A call as describe_miss sees it: model, temperature, messages and the request."""
    messages = changes.pop(
        "messages",
        [{"role": "system", "content": "You name."}, {"role": "user", "content": "Name a cat."}],
    )
    model = changes.pop("model", "namer")
    temperature = changes.pop("temperature", 0.5)
    return {"model": model, "temperature": temperature, "messages": messages, **request(**changes)}


def key_of(entry: dict[str, Any]) -> str:
    fields = {k: v for k, v in entry.items() if k not in ("model", "temperature", "messages")}
    digest = request_digest(entry["model"], entry["temperature"], entry["messages"], fields)
    return cache_key(digest, entry["occurrence"])


def test_the_key_holds_what_decides_the_reply_and_where_it_was_asked() -> None:
    base = key_of(call())
    assert key_of(call()) == base
    for change in (
        {"execution": 1},
        {"occurrence": 1},
        {"case": "x"},
        {"experiment": "other"},
        {"model": "other"},
        {"temperature": 0.6},
        {"params": {"max_tokens": 5}},
        {"schema": "b" * 64},
        {"messages": [{"role": "user", "content": "Name a dog."}]},
    ):
        assert key_of(call(**change)) != base, change
    # Which prompt rendered a message explains misses; the text is what is keyed.
    assert key_of(call(prompts=[None, ["ask", "c" * 64]])) == base


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (
            call(
                prompts=[None, ["ask", "c" * 64]],
                messages=[
                    {"role": "system", "content": "You name."},
                    {"role": "user", "content": "Name a cat, please."},
                ],
            ),
            f"prompt 'ask' changed from version {'a' * 8} to {'c' * 8}",
        ),
        (
            call(
                messages=[
                    {"role": "system", "content": "You name."},
                    {"role": "user", "content": "Name a dog."},
                ]
            ),
            f"prompt 'ask' (version {'a' * 8}) rendered other text, so its arguments changed: "
            "'Name a cat.' became 'Name a dog.'",
        ),
        (call(model="bigger"), "model 'bigger' (recorded: 'namer')"),
        (call(temperature=0.9), "temperature 0.9 (recorded: 0.5)"),
        (call(params={"max_tokens": 5}), "request parameters max_tokens changed"),
        (call(schema="d" * 64), "the response schema changed"),
        (
            call(messages=[{"role": "system", "content": "You name."}], prompts=[None]),
            "1 messages (recorded: 2)",
        ),
        (call(execution=7), "execution 7 was not recorded (recorded executions: 0-2, 5)"),
        (call(case="dog"), "case 'dog' was not recorded (recorded cases: (none))"),
        (
            call(occurrence=1),
            "the run makes this same request more often than was recorded "
            "(1 time(s) recorded; this is time 2)",
        ),
    ],
)
def test_a_miss_names_what_differs_from_the_nearest_recorded_call(
    now: dict[str, Any], expected: str
) -> None:
    recorded = [call(execution=i) for i in (0, 1, 2, 5)]
    assert describe_miss(now, recorded, ["names"]) == expected


def test_a_miss_with_nothing_recorded_for_the_experiment_says_what_is() -> None:
    assert describe_miss(call(), [], []) == "nothing is recorded"
    assert describe_miss(call(), [], ["a", "b"]) == (
        "nothing is recorded for this experiment (recorded: a, b)"
    )


def test_a_call_outside_any_run_cannot_be_replayed() -> None:
    cache_module.configure(CacheSettings(mode="replay"))
    try:
        with pytest.raises(ReplayMiss, match="outside any experiment run"):
            SimpleBot(model_name="namer")("hello")
    finally:
        cache_module.configure(CacheSettings())


def record_calls(store: Store, fake_llm: FakeLLM, *texts: str) -> None:
    """Run one execution per text under --llm-cache record and store its run."""
    cache_module.configure(CacheSettings(mode="record"))
    try:
        for index, text in enumerate(texts):
            with inside_run(base_url=fake_llm.url) as run:
                run.execution_index = index
                SimpleBot("You name.", model_name="namer")(ask(text))
                store.insert_run("s1", run.finish("passed"))
    finally:
        cache_module.configure(CacheSettings())


@pytest.fixture
def store(tmp_path: Path) -> Any:
    store = Store(tmp_path / "message_log.db")
    store.begin_session(kind="test", session_id="s1")
    yield store
    store.close()


def test_a_recorded_call_replays_from_a_cassette(
    store: Store, fake_llm: FakeLLM, tmp_path: Path
) -> None:
    record_calls(store, fake_llm, "cat", "dog")
    path = tmp_path / "s2.cassette"
    assert build_cassette(store, path, cache=True, session=None) == 2
    fake_llm.requests.clear()
    cache_module.configure(CacheSettings(mode="replay", cassette=path))
    try:
        # With fresh seeds (the embedded model's): a served reply records no seed of its own.
        with inside_run(base_url=fake_llm.url, fresh_seed=True) as run:
            run.execution_index = 1
            reply = SimpleBot("You name.", model_name="namer")(ask("dog"))
        served = run.finish("passed").calls[0]
        assert served.replayed_from is not None and served.seed is None
        with inside_run(base_url=fake_llm.url) as run, pytest.raises(ReplayMiss) as miss:
            run.execution_index = 1
            SimpleBot("You name.", model_name="namer")(ask("cat"))
    finally:
        cache_module.configure(CacheSettings())
    assert reply.content == "Reply to: Name a dog."
    assert "rendered other text, so its arguments changed: 'Name a dog.' became 'Name a cat.'" in (
        str(miss.value)
    )
    assert fake_llm.requests == []


def test_export_masks_key_like_text_and_import_rejects_bad_lines(
    store: Store, fake_llm: FakeLLM
) -> None:
    record_calls(store, fake_llm, "cat", "key sk-proj-abcdefghijklmnopqrstuv")
    out = io.StringIO()
    with store.reading() as conn:
        assert export_cassette(conn, out) == (2, 1)
    text = out.getvalue()
    assert "abcdefghijklmnop" not in text
    lines = text.splitlines()
    entry = json.loads(lines[0])

    for bad, why in [
        ("not json", "JSONDecodeError"),
        (json.dumps({**entry, "v": 2}), "its format version is 2, this reads 1"),
        (json.dumps({k: v for k, v in entry.items() if k != "model"}), "model: Field required"),
        (json.dumps({**entry, "messages": "hi"}), "messages: Input should be a valid list"),
        (json.dumps({**entry, "messages": [{"content": "hi"}]}), "messages.0.role: Field"),
        (json.dumps({**entry, "reply": {"content": 3}}), "reply.content: Input should be a"),
        (json.dumps({**entry, "execution": "first"}), "execution: Input should be a valid int"),
        (json.dumps({**entry, "occurrence": -1}), "occurrence: Input should be greater than"),
        (json.dumps({**entry, "prompts": [None]}), "([name, version] or null) per message"),
        (json.dumps({**entry, "api_key": "x"}), "api_key: Extra inputs are not permitted"),
        ("[1, 2]", "(the line): Input should be"),
    ]:
        problem = r"cassette\.jsonl line 2 is not a pytest-llmexp"
        with pytest.raises(StoreError, match=problem) as exc:
            import_cassette(store, [lines[0], bad], "cassette.jsonl")
        assert why in str(exc.value)
        assert "nothing was imported" in str(exc.value)
    # Blank lines are skipped; a line the file repeats, or the store holds, is not added twice.
    result = import_cassette(store, ["", lines[0], lines[0]], "cassette.jsonl")
    assert (result.added, result.unchanged) == (0, 2)


def test_a_structured_reply_replays_after_the_json_schema_fallback(
    store: Store, fake_llm: FakeLLM, tmp_path: Path
) -> None:
    from pydantic import BaseModel

    class Verdict(BaseModel):
        score: int

    # Recorded against a server that refuses json_schema: the refused request and the
    # json_object one that answered are one call, so the answer is occurrence 0.
    fake_llm.refuse_json_schema = True
    cache_module.configure(CacheSettings(mode="record"))
    try:
        with inside_run(base_url=fake_llm.url, max_retries=0) as run:
            assert StructuredBot(pydantic_model=Verdict, model_name="judge")("rate").score == 1
            store.insert_run("s1", run.finish("passed"))
    finally:
        cache_module.configure(CacheSettings())
    assert [r["response_format"]["type"] for r in fake_llm.requests] == [
        "json_schema",
        "json_object",
    ]
    path = tmp_path / "s2.cassette"
    assert build_cassette(store, path, cache=True, session=None) == 1
    fake_llm.requests.clear()
    cache_module.configure(CacheSettings(mode="replay", cassette=path))
    try:
        with inside_run(base_url=fake_llm.url):  # a fresh endpoint: json_schema is tried first
            assert StructuredBot(pydantic_model=Verdict, model_name="judge")("rate").score == 1
    finally:
        cache_module.configure(CacheSettings())
    assert fake_llm.requests == []


def test_the_cache_commands_say_what_is_wrong(
    tmp_path: Path, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    from pytest_llmexp.cli import main as llmexp

    db = str(store.path)
    missing = str(tmp_path / "absent.db")
    assert llmexp(["cache", "export", "--db", missing]) == 2
    assert f"no database at {missing}; pass --db PATH" in capsys.readouterr().err
    assert llmexp(["cache", "export", "--db", db]) == 1
    assert "nothing to export: record calls with pytest --llm-cache record" in (
        capsys.readouterr().err
    )
    assert llmexp(["cache", "export", "--db", db, "--session", "ffff"]) == 2
    assert "--session ffff: no session with this id" in capsys.readouterr().err
    assert llmexp(["cache", "import", str(tmp_path / "none.jsonl"), "--db", db]) == 2
    assert "cannot read" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{}\n")
    assert llmexp(["cache", "import", str(bad), "--db", db]) == 2
    assert f"{bad} line 1 is not a pytest-llmexp cassette entry" in capsys.readouterr().err
