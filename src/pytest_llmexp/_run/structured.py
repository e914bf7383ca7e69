"""JSON schemas for structured output: asking for them, and endpoints that refuse them."""

from __future__ import annotations

import functools
import json
import math
import re
import weakref
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from pydantic import BaseModel

__all__ = [
    "enumerate_int_ranges",
    "json_schema",
    "refuses_json_schema",
    "schema_name",
    "validate_reply",
]

ModelT = TypeVar("ModelT", bound="BaseModel")

# What servers say when they do not take response_format={"type": "json_schema", ...}, e.g.
# llama-cpp-python: "Input should be 'text' or 'json_object'".
_FORMAT_REFUSAL = re.compile(r"json_schema|json_object|response_format", re.IGNORECASE)
# Integer ranges up to this many values are also sent as an enum in json_object mode.
_MAX_ENUM = 256


_SCHEMAS: weakref.WeakKeyDictionary[type[BaseModel], dict[str, Any]] = weakref.WeakKeyDictionary()


def json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema, made once per model class: a bot is often built per run, and
    pydantic takes longer to make a schema than the endpoint call takes to send it. Callers
    must not change it."""
    schema = _SCHEMAS.get(model)
    if schema is None:
        schema = _SCHEMAS[model] = model.model_json_schema()
    return schema


def refuses_json_schema(status_code: int | None, message: str) -> bool:
    """Whether an endpoint's error says it does not take a ``json_schema`` response format."""
    return status_code in (400, 422, 500) and bool(_FORMAT_REFUSAL.search(message))


def enumerate_int_ranges(schema: Any) -> Any:
    """``schema`` with each small bounded integer range (``ge=1, le=10``) also given as an enum.

    The same values are valid; but grammar-constrained servers such as llama.cpp honour
    ``enum`` and ignore ``minimum``/``maximum``, so without it a 1-10 score comes back as 0.
    """
    if isinstance(schema, list):
        return [enumerate_int_ranges(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    node = {key: enumerate_int_ranges(value) for key, value in schema.items()}
    if node.get("type") == "integer" and "enum" not in node and "const" not in node:
        low = _bound(node, "minimum", "exclusiveMinimum", 1)
        high = _bound(node, "maximum", "exclusiveMaximum", -1)
        if low is not None and high is not None and 0 <= high - low < _MAX_ENUM:
            node["enum"] = list(range(low, high + 1))
    return node


def _bound(node: dict[str, Any], inclusive: str, exclusive: str, step: int) -> int | None:
    """The inclusive integer bound a schema node sets with ``inclusive`` or ``exclusive``."""
    values: list[int] = []
    if isinstance(node.get(inclusive), int | float):
        value = node[inclusive]
        values.append(math.ceil(value) if step > 0 else math.floor(value))
    if isinstance(node.get(exclusive), int | float):
        value = node[exclusive]
        values.append(math.floor(value) + 1 if step > 0 else math.ceil(value) - 1)
    if not values:
        return None
    return max(values) if step > 0 else min(values)


def schema_name(model: type[BaseModel]) -> str:
    """The pydantic model's name as OpenAI accepts it for a ``json_schema`` format."""
    return _safe_name(model.__name__)


@functools.lru_cache(maxsize=256)
def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64] or "response"


def validate_reply(model: type[ModelT], text: str) -> ModelT:
    """The reply ``text`` as ``model``. Raw control characters (a newline, a tab) inside JSON
    strings are read as themselves, as ``json.loads(strict=False)`` does: small models emit
    them, and what they mean is unambiguous."""
    from pydantic import ValidationError

    try:
        return model.model_validate_json(text)
    except ValidationError as exc:
        if any(e["type"] != "json_invalid" for e in exc.errors()):
            raise
        try:
            lenient = json.loads(text, strict=False)
        except ValueError:
            raise exc from None
        return model.model_validate_json(json.dumps(lenient))
