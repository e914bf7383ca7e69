"""``@prompt``: functions whose docstring is a Jinja2 template, versioned by a content hash."""

from __future__ import annotations

import functools
import hashlib
import inspect
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._store.records import PromptRecord
from ..errors import BotError, PromptError
from .recording import record_prompt

if TYPE_CHECKING:
    import jinja2

__all__ = [
    "ROLES",
    "Message",
    "MessageInput",
    "MessageLike",
    "PromptFunction",
    "prompt",
    "to_messages",
]

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True, slots=True)
class Message:
    """A chat message: ``role`` and ``content``, and the prompt version that made it, if any."""

    role: str
    content: str
    prompt: PromptRecord | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, str]:
        """The message as the chat completions API takes it."""
        return {"role": self.role, "content": self.content}

    def __str__(self) -> str:
        return self.content


@functools.cache
def _environment() -> jinja2.Environment:
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    # The sandbox keeps templates away from Python internals; StrictUndefined turns a
    # misspelled variable into an error instead of an empty string.
    return ImmutableSandboxedEnvironment(
        undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False
    )


# Most templates are text and ``{{ name }}`` placeholders. Those are rendered here exactly as
# Jinja2 renders them (``str`` of each value), which spares a session Jinja2's import and
# compilation (tens of milliseconds); any other template is Jinja2's.
_PLACEHOLDER = re.compile(r"\{\{ *([A-Za-z_][A-Za-z0-9_]*) *\}\}")
# Names that Jinja2 reads as constants, operators or its own globals, not as variables.
_JINJA_NAMES = frozenset(
    [
        "true",
        "false",
        "none",
        "True",
        "False",
        "None",
        "and",
        "or",
        "not",
        "in",
        "is",
        "if",
        "else",
        "recursive",
        "range",
        "dict",
        "lipsum",
        "cycler",
        "joiner",
        "namespace",
    ]
)


def simple_parts(template: str) -> list[str] | None:
    """The template as literal texts (even indexes) and variable names (odd indexes), if it
    is made of nothing else; ``None`` if Jinja2 must render it."""
    if "{%" in template or "{#" in template or "\r" in template:
        return None
    parts = _PLACEHOLDER.split(template)
    texts, names = parts[::2], parts[1::2]
    if any("{{" in text for text in texts) or any(name in _JINJA_NAMES for name in names):
        return None
    # "{{{ x }}": Jinja2 starts the expression at the first "{{".
    if any(text.endswith("{") for text in texts[:-1]):
        return None
    return parts


def prompt_hash(role: str, template: str) -> str:
    """The version of a prompt: a sha256 of its role and template."""
    return hashlib.sha256(f"{role}\n{template}".encode()).hexdigest()


class PromptFunction:
    """A ``@prompt`` function: calling it renders its template into a :class:`Message`."""

    def __init__(self, fn: Callable[..., Any], role: str) -> None:
        functools.update_wrapper(self, fn)
        self.__wrapped__ = fn
        self.role = role
        self.name: str = fn.__name__
        self._signature = inspect.signature(fn)
        #: The parameter names, when all are plain (no default, no * or **): the common case,
        #: bound without ``Signature.bind``.
        self._plain: tuple[str, ...] | None = tuple(self._signature.parameters)
        if any(
            p.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD or p.default is not p.empty
            for p in self._signature.parameters.values()
        ):
            self._plain = None
        if not fn.__doc__ or not fn.__doc__.strip():
            raise PromptError(
                f"@prompt function {self.name!r} has no docstring; its docstring is the "
                'Jinja2 template, e.g. """Summarize {{ text }}."""',
                prompt_name=self.name,
            )
        self.template: str = inspect.cleandoc(fn.__doc__)
        self.hash = prompt_hash(role, self.template)
        self._parts = simple_parts(self.template)
        self.record = PromptRecord(
            hash=self.hash,
            function_name=self.name,
            module=getattr(fn, "__module__", None) or "",
            role=role,
            template=self.template,
        )
        self._compiled = self._compile() if self._parts is None else None
        if self._parts is not None:
            self._check_variables(set(self._parts[1::2]))

    @property
    def version(self) -> str:
        """A short form of the hash, for display."""
        return self.hash[:12]

    def _compile(self) -> jinja2.Template:
        from jinja2 import TemplateSyntaxError, meta

        env = _environment()
        try:
            ast = env.parse(self.template)
        except TemplateSyntaxError as exc:
            raise PromptError(
                f"prompt {self.name!r}: the template does not parse at line {exc.lineno}: "
                f"{exc.message}",
                prompt_name=self.name,
            ) from None
        self._check_variables(meta.find_undeclared_variables(ast))
        return env.from_string(ast)

    def _check_variables(self, variables: set[str]) -> None:
        params = self._signature.parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        unknown = sorted(v for v in variables if v not in params)
        if unknown and not takes_any:
            raise PromptError(
                f"prompt {self.name!r}: the template uses "
                f"{', '.join('{{ ' + v + ' }}' for v in unknown)} but the function has no "
                f"parameter of that name (parameters: {', '.join(params) or 'none'}); "
                "rename the variable or add the parameter",
                prompt_name=self.name,
            )

    def render(self, *args: Any, **kwargs: Any) -> str:
        """The rendered template, without recording anything."""
        __tracebackhide__ = True
        plain = self._plain
        if (
            plain is not None
            and len(args) + len(kwargs) == len(plain)
            and kwargs.keys() == set(plain[len(args) :])
        ):
            variables = dict(zip(plain, args, strict=False))
            variables.update(kwargs)
            if self._parts is not None:
                return self._render_simple(variables)
            return self._render_jinja(variables)
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise PromptError(
                f"prompt {self.name!r} called with the wrong variables: {exc} "
                f"(it takes {', '.join(self._signature.parameters) or 'no variables'})",
                prompt_name=self.name,
            ) from None
        bound.apply_defaults()
        variables = dict(bound.arguments)
        for param in self._signature.parameters.values():
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                variables.update(variables.pop(param.name, {}))
        if self._parts is not None:
            return self._render_simple(variables)
        return self._render_jinja(variables)

    def _render_jinja(self, variables: dict[str, Any]) -> str:
        __tracebackhide__ = True
        from jinja2 import TemplateError, UndefinedError

        assert self._compiled is not None
        try:
            return self._compiled.render(variables)
        except UndefinedError as exc:
            raise PromptError(
                f"prompt {self.name!r}: {exc.message}; pass it when calling the prompt",
                prompt_name=self.name,
            ) from None
        except TemplateError as exc:
            raise PromptError(
                f"prompt {self.name!r} failed to render: {type(exc).__name__}: {exc}",
                prompt_name=self.name,
            ) from None

    def _render_simple(self, variables: dict[str, Any]) -> str:
        parts = list(self._parts or ())
        for i in range(1, len(parts), 2):
            name = parts[i]
            if name not in variables:
                raise PromptError(
                    f"prompt {self.name!r}: {name!r} is undefined; pass it when calling the prompt",
                    prompt_name=self.name,
                )
            parts[i] = str(variables[name])
        return "".join(parts)

    def __call__(self, *args: Any, **kwargs: Any) -> Message:
        __tracebackhide__ = True
        content = self.render(*args, **kwargs)
        record_prompt(self.record)
        return Message(role=self.role, content=content, prompt=self.record)

    def __repr__(self) -> str:
        return f"<prompt {self.name!r} role={self.role!r} version={self.version}>"


def prompt(role: str) -> Callable[[Callable[..., Any]], PromptFunction]:
    """Turn a function whose docstring is a Jinja2 template into a message factory.

    ``role`` is ``"system"``, ``"user"`` or ``"assistant"``.
    """
    if callable(role):
        name = getattr(role, "__name__", "?")
        raise PromptError(
            f"@prompt needs a role: write @prompt('user') above {name!r}, not bare @prompt",
            prompt_name=name,
        )
    if role not in ROLES:
        raise PromptError(
            f"@prompt role must be one of {', '.join(map(repr, ROLES))}, got {role!r}",
            prompt_name="?",
        )

    def decorate(fn: Callable[..., Any]) -> PromptFunction:
        return PromptFunction(fn, role)

    return decorate


MessageLike = str | Message
MessageInput = MessageLike | Iterable[MessageLike]


def to_messages(inputs: tuple[MessageLike | Iterable[MessageLike], ...], bot: str) -> list[Message]:
    """A bot's inputs as messages: a string is a user message; iterables are flattened."""
    messages: list[Message] = []
    for item in inputs:
        if isinstance(item, str):
            messages.append(Message(role="user", content=item))
        elif isinstance(item, Message):
            messages.append(item)
        elif isinstance(item, Iterable):
            messages.extend(to_messages(tuple(item), bot))
        else:
            raise BotError(
                f"{bot} takes strings and messages (from @prompt functions), got "
                f"{type(item).__name__}: {item!r}"
            )
    if not inputs:
        raise BotError(f"{bot} was called with no message; pass a string or a @prompt message")
    return messages
