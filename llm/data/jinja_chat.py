"""A model's own Jinja chat template, rendered with Hugging Face's semantics, sandboxed.

A chat template comes from a download, so it runs in jinja2's `ImmutableSandboxedEnvironment`
(no attribute access to Python internals, no mutation of the arguments). It sees what
transformers' `apply_chat_template` passes: `messages`, `add_generation_prompt`, the special
tokens as text (`bos_token`, `eos_token`, ...), `raise_exception`, `strftime_now`, a `tojson`
filter that keeps non-ASCII text, and any extra row fields (a `tools` list, `documents`).
The rendered text is tokenised without adding special tokens, as transformers does.

`{% generation %}...{% endgeneration %}` blocks mark the assistant's tokens where a template
has them (transformers' `return_assistant_tokens_mask`): they render their body and, when a
mask is asked for, record where it lies in the text.
"""

from __future__ import annotations

import datetime
import functools
import json
import re

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llm.data import DataError

# Private-use characters that bracket a generation block's output while spans are tracked.
_OPEN, _CLOSE = "\ue000", "\ue001"


class TemplateError(DataError):
    """A chat template that does not parse, raises, or refuses a conversation."""


class _Generation(Extension):
    """`{% generation %}` ... `{% endgeneration %}`: the body, bracketed when tracking."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        call = self.call_method("_render", [nodes.Name("_llm_track", "load")])
        return nodes.CallBlock(call, [], [], body).set_lineno(lineno)

    def _render(self, track, caller):
        text = caller()
        return f"{_OPEN}{text}{_CLOSE}" if track else text


class _Namespace(jinja2.utils.Namespace):
    """`namespace(...)` that refuses underscore names (no reach into Python internals)."""

    def __init__(*args, **kwargs):
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"a chat template may not set the underscore attribute {name!r}")


def _dict(*args, **kwargs):
    return dict(*args, **kwargs)


# Names under which a message's reasoning arrives; templates read the first (transformers
# fills it, and `thinking`, from whichever is set).
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def template_messages(messages: list[dict]) -> list[dict]:
    """Messages as transformers hands them to a template: keys whose value is None dropped,
    reasoning under every name templates read."""
    out = []
    for message in messages:
        message = {k: v for k, v in message.items() if v is not None}
        reasoning = next((message[k] for k in _REASONING_FIELDS if k in message), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        out.append(message)
    return out


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _strftime_now(format_string):
    return datetime.datetime.now().strftime(format_string)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


@functools.lru_cache(maxsize=16)
def compile_template(source: str, where: str) -> jinja2.Template:
    """The compiled template, or TemplateError naming the file and line it fails to parse."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_Generation, loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _dict
    env.globals["namespace"] = _Namespace
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise TemplateError(f"chat template does not parse: {e.message}", where,
                            e.lineno) from None


def has_generation_blocks(source: str) -> bool:
    """Whether the template marks the assistant's text with `{% generation %}` blocks."""
    return re.search(r"\{%-?\s*generation\s*-?%\}", source) is not None


def render(source: str, where: str, messages: list[dict], add_generation_prompt: bool,
           special_tokens: dict[str, str], row: str, track: bool = False,
           **row_fields) -> tuple[str, list[tuple[int, int]]]:
    """(text, spans): the rendered conversation and, when `track`, the [start, end) character
    spans of its generation blocks. Errors name the row and the template's file."""
    template = compile_template(source, where)
    # transformers passes tools and documents always (None when absent); row fields win
    kwargs = {**special_tokens, "tools": None, "documents": None, **row_fields}
    try:
        text = template.render(messages=template_messages(messages),
                               add_generation_prompt=add_generation_prompt, _llm_track=track,
                               **kwargs)
    except jinja2.exceptions.TemplateError as e:
        raise TemplateError(f"{row}: the chat template refused the conversation: {e}",
                            where) from None
    except Exception as e:  # a template's own bug (e.g. a missing key) — still one line
        raise TemplateError(f"{row}: the chat template failed ({type(e).__name__}: {e})",
                            where) from None
    if not track:
        return text, []
    if any(_OPEN in str(m.get("content", "")) or _CLOSE in str(m.get("content", ""))
           for m in messages):
        raise TemplateError(f"{row}: a message holds the private-use characters U+E000/U+E001 "
                            "that mark generation blocks", where)
    spans, pieces, length, start = [], [], 0, 0
    for part in re.split(f"([{_OPEN}{_CLOSE}])", text):
        if part == _OPEN:
            start = length
        elif part == _CLOSE:
            spans.append((start, length))
        else:
            pieces.append(part)
            length += len(part)
    return "".join(pieces), spans
