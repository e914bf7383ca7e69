from __future__ import annotations

import pytest

from pytest_llmexp import Message, PromptError, prompt
from pytest_llmexp._run.recording import RunContext, activate


@prompt("user")
def ask(topic, tone="plain"):
    """Tell me about {{ topic }} in a {{ tone }} tone."""


def test_renders_the_docstring_with_its_variables() -> None:
    message = ask("tea", tone="warm")
    assert message == Message(role="user", content="Tell me about tea in a warm tone.")
    assert ask("tea").content == "Tell me about tea in a plain tone."
    assert ask.__name__ == "ask"
    assert ask.__doc__ == "Tell me about {{ topic }} in a {{ tone }} tone."
    assert message.prompt is not None and message.prompt.hash == ask.hash


def test_values_are_data_never_templates() -> None:
    assert ask("{{ 7*7 }}").content == "Tell me about {{ 7*7 }} in a plain tone."
    assert ask("{% for x in range(3) %}x{% endfor %}").content.startswith("Tell me about {%")


def test_hash_depends_on_template_and_role_only() -> None:
    def body(topic, tone):
        """Tell me about {{ topic }} in a {{ tone }} tone."""

    same = prompt("user")(body)
    other_role = prompt("system")(body)
    assert same.hash == ask.hash
    assert other_role.hash != ask.hash
    assert len(ask.hash) == 64 and ask.version == ask.hash[:12]


def test_missing_variable_names_prompt_and_variable() -> None:
    with pytest.raises(PromptError, match=r"prompt 'ask' called with the wrong variables.*topic"):
        ask()
    with pytest.raises(PromptError, match=r"prompt 'ask' called with the wrong variables.*colour"):
        ask("tea", colour="red")


def test_misspelled_template_variable_is_caught_at_definition() -> None:
    with pytest.raises(PromptError, match=r"prompt 'typo'.*\{\{ topik \}\}.*parameters: topic"):

        @prompt("user")
        def typo(topic):
            """About {{ topik }}."""


def test_undefined_attribute_is_an_error_not_an_empty_string() -> None:
    @prompt("user")
    def describe(item):
        """Name: {{ item.name }}"""

    with pytest.raises(PromptError, match=r"prompt 'describe'.*has no attribute 'name'"):
        describe({"title": "x"})


def test_kwargs_prompts_take_any_variable() -> None:
    @prompt("system")
    def free(**variables):
        """{{ a }} and {{ b }}"""

    assert free(a=1, b=2).content == "1 and 2"
    with pytest.raises(PromptError, match=r"prompt 'free': 'b' is undefined"):
        free(a=1)


def test_template_cannot_reach_python_internals() -> None:
    @prompt("user")
    def sneaky(x):
        """{{ x.__class__.__mro__[1].__subclasses__() }}"""

    with pytest.raises(PromptError, match=r"prompt 'sneaky' failed to render: SecurityError"):
        sneaky("s")


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: prompt("robot"),
            r"role must be one of 'system', 'user', 'assistant', got 'robot'",
        ),
        (lambda: prompt(lambda: None), r"@prompt needs a role: write @prompt\('user'\)"),
        (lambda: prompt("user")(lambda x: None), r"has no docstring"),
    ],
)
def test_bad_declarations(build, message: str) -> None:
    with pytest.raises(PromptError, match=message):
        build()


def test_syntax_error_names_the_prompt_and_line() -> None:
    with pytest.raises(
        PromptError, match=r"prompt 'broken': the template does not parse at line 2"
    ):

        @prompt("user")
        def broken(x):
            """Hello
            {{ x"""


def test_calls_inside_a_run_record_the_version() -> None:
    run = RunContext("e", num_executions=1, execution_index=0, worker="main")
    with activate(run):
        ask("tea")
        ask("coffee")
    record = run.finish("passed")
    assert [(p.function_name, p.hash) for p in record.prompts] == [("ask", ask.hash)]
    assert record.prompts[0].module == __name__


SIMPLE = [
    "Hello {{ name }}.",
    "{{name}}{{ other }}",
    "{{ name }} and {{ name }}",
    "Braces } {x} {{ name }}}} {",
    "Multi\nline\n  {{ name }}\n\nend",
    "Ünïcödé {{ name }} ✓",
    "no variables at all",
]
JINJA = [
    "{{ name | upper }}",
    "{% if name %}{{ name }}{% endif %}",
    "{# note #}{{ name }}",
    "{{- name -}} x",
    "{{{ name }}",
    "{{ none }} {{ name }}",
    "{{ name.attr }}",
    "{{\tname }}",
]


@pytest.mark.parametrize("template", SIMPLE + JINJA)
@pytest.mark.parametrize("value", ["Ada", 42, None, 1.5, ["a"], {"k": 1}, "{{ name }}", "a\nb"])
def test_the_fast_path_renders_as_jinja2_does(template: str, value: object) -> None:
    from jinja2 import TemplateError

    from pytest_llmexp._run.prompts import _environment, simple_parts

    def greet(name, other="x"):
        pass

    greet.__doc__ = template
    assert (simple_parts(template) is not None) == (template in SIMPLE)
    try:
        expected = _environment().from_string(template).render(name=value, other="x")
    except TemplateError:
        return  # an attribute of a value that has none: the Jinja2 path's error, tested above
    assert prompt("user")(greet)(value).content == expected


def test_the_fast_path_reports_an_undefined_kwargs_variable() -> None:
    @prompt("user")
    def anything(**kwargs):
        """Hello {{ who }}."""

    assert anything(who="Ada").content == "Hello Ada."
    with pytest.raises(PromptError, match=r"'who' is undefined; pass it when calling"):
        anything()
