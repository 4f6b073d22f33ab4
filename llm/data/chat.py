"""The one chat renderer: `messages` → token ids plus a parallel mask of the assistant's tokens.

Every place that turns chat into ids calls it: SFT rows, preference / KTO / reward rows,
RL prompts, labelling, the AI judge, evaluation with generation and `sample.py`.

A tokenizer with a Jinja chat template (an imported model's own, or one set with
`--config.data.chat_template=FILE`) renders through it (`jinja_chat.py`), giving exactly the
ids of transformers' `apply_chat_template`. The assistant mask then comes from the template's
`{% generation %}` blocks where it has them, else from rendering growing prefixes of the
conversation (as TRL does): an assistant turn's tokens are those between the conversation up
to it (with the generation prompt) and the conversation including it, up to and including its
end-of-turn token. A template whose prefixes are not prefixes of the whole conversation cannot
give a consistent mask: one error names the row.

Tokenizers trained here use the role-token layout (role tokens are single ids; see
tokenizer.ROLE_TOKENS):

    <s> <|system|> text <|end|> \\n <|user|> text <|end|> \\n <|assistant|> text <|end|> </s>

where the mask is 1 on an assistant message's content tokens and its `<|end|>` (the model must
learn to stop), and on the final `</s>` when the last message is the assistant's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from llm.data import DataError, jinja_chat
from llm.data.tokenizer import ROLE_TOKENS, Tokenizer

ROLES = ("system", "user", "assistant")


def has_targets(messages: Sequence[dict]) -> bool:
    """Whether a conversation has any token SFT trains on (an assistant turn: its body and
    end marker are targets, even when its content is empty)."""
    return any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages)


def render_messages(tok: Tokenizer, messages: Sequence[dict], add_generation_prompt: bool = False,
                    where: str = "chat row", **row_fields) -> tuple[list[int], list[int]]:
    """Token ids of a conversation and the assistant mask (1 exactly on assistant tokens).

    `row_fields` (e.g. `tools`) reach a Jinja template as transformers passes them; `where`
    names the row in errors.
    """
    if tok.chat_template is None:
        tok.require("chat", where)
        return _render_role_tokens(tok, messages, add_generation_prompt, where)
    messages = list(messages)
    _check_roles(messages, where)
    text, spans = _template_text(tok, messages, add_generation_prompt, where, row_fields,
                                 track=jinja_chat.has_generation_blocks(tok.chat_template))
    ids = tok.encode(text)
    if tok.kind != "tokenizers":  # no character offsets: token-level prefixes
        return ids, _mask_by_token_prefixes(tok, ids, messages, where, row_fields)
    offsets = tok.offsets(text)
    if not spans:  # no generation blocks: each assistant turn's text from growing prefixes
        spans = [_through_end_of_turn(tok, ids, offsets,
                                      _turn_span(tok, text, messages, n, where, row_fields))
                 for n, m in enumerate(messages) if m.get("role") == "assistant"]
    # a token is the assistant's when it overlaps a span (transformers' assistant_masks)
    mask = [int(any(a < end and b > start for start, end in spans) and b > a)
            for a, b in offsets]
    return ids, mask


def render_prompt(tok: Tokenizer, prompt: str | Sequence[dict], system: str | None = None,
                  where: str = "prompt", **row_fields) -> list[int]:
    """Ids of a prompt (a user string or messages) ending in the assistant's generation prompt
    (what sampling and RL start from)."""
    ids, _ = render_messages(tok, prompt_messages(prompt, system), True, where, **row_fields)
    return ids


def prompt_messages(prompt: str | Sequence[dict], system: str | None = None) -> list[dict]:
    """A prompt as a message list: a string is one user turn (after `system`, if given)."""
    if not isinstance(prompt, str):
        return list(prompt)
    return ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt}]


@dataclasses.dataclass(frozen=True)
class RenderedPair:
    """A prompt and one assistant reply rendered as one conversation.

    `ids` starts with `prompt_ids`; `mask` is 1 exactly on the reply's tokens (its end of
    turn included), which preference, KTO and reward rows score.
    """

    prompt_ids: list[int]
    ids: list[int]
    mask: list[int]


def render_pair(tok: Tokenizer, prompt: str | Sequence[dict], reply: str,
                where: str = "pair", **row_fields) -> RenderedPair:
    """`prompt` followed by the assistant's `reply`, rendered as one whole conversation; the
    rendered prompt must be a prefix of it (else one error naming the row)."""
    messages = prompt_messages(prompt)
    prompt_ids = render_prompt(tok, messages, where=where, **row_fields)
    ids, mask = render_messages(tok, messages + [{"role": "assistant", "content": reply}],
                                where=where, **row_fields)
    if ids[:len(prompt_ids)] != prompt_ids:
        raise DataError(f"{where}: the chat template renders the prompt differently alone "
                        "than before its reply (not a prefix of the whole conversation), so "
                        "the reply's tokens are ambiguous", tok.chat_template_source)
    mask = [0] * len(prompt_ids) + mask[len(prompt_ids):]
    return RenderedPair(prompt_ids, ids, mask)


# ----- Jinja templates -------------------------------------------------------------------
def _template_text(tok, messages, add_generation_prompt, where, row_fields, track=False):
    return jinja_chat.render(tok.chat_template, tok.chat_template_source, messages,
                             add_generation_prompt, tok.special_tokens, where, track,
                             **row_fields)


def _check_roles(messages, where) -> None:
    for n, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise DataError(f"{where}: message {n} needs a string 'role'")


def _turn_span(tok, text, messages, n, where, row_fields) -> tuple[int, int]:
    """[start, end) characters of assistant message n in `text`: between the conversation
    before it (with the generation prompt) and the conversation through it."""
    before, _ = _template_text(tok, messages[:n], True, where, row_fields)
    through, _ = _template_text(tok, messages[:n + 1], False, where, row_fields)
    if not (text.startswith(before) and text.startswith(through)):
        raise DataError(f"{where}: cannot mask assistant message {n}: the chat template "
                        "renders the conversation up to it differently from the whole "
                        "conversation (and has no {% generation %} blocks to mark it instead)",
                        tok.chat_template_source)
    return len(before), len(through)


def _through_end_of_turn(tok, ids, offsets, span) -> tuple[int, int]:
    """`span` cut after its last end-of-turn token (the model learns to stop there, not what
    the template writes after it)."""
    start, end = span
    stops = [b for (a, b), i in zip(offsets, ids, strict=True)
             if start <= a < end and i in tok.stop_ids]
    return start, stops[-1] if stops else end


def _mask_by_token_prefixes(tok, ids, messages, where, row_fields) -> list[int]:
    mask = [0] * len(ids)
    for n, m in enumerate(messages):
        if m.get("role") != "assistant":
            continue
        start = len(_prefix_ids(tok, ids, messages[:n], True, where, row_fields, n))
        end = len(_prefix_ids(tok, ids, messages[:n + 1], False, where, row_fields, n))
        stops = [i for i in range(start, end) if ids[i] in tok.stop_ids]
        for i in range(start, stops[-1] + 1 if stops else end):
            mask[i] = 1
    return mask


def _prefix_ids(tok, ids, messages, add_generation_prompt, where, row_fields, n) -> list[int]:
    text, _ = _template_text(tok, messages, add_generation_prompt, where, row_fields)
    prefix = tok.encode(text)
    if ids[:len(prefix)] != prefix:
        raise DataError(f"{where}: cannot mask assistant message {n}: the chat template renders "
                        "the conversation up to it differently from the whole conversation",
                        tok.chat_template_source)
    return prefix


# ----- the role-token layout (tokenizers trained here) -------------------------------------
def _marker(tok: Tokenizer, role: str) -> list[int]:
    role_ids = tok.role_ids
    if role in role_ids:
        return [role_ids[role]]
    return tok.encode(ROLE_TOKENS[role])


def _render_role_tokens(tok: Tokenizer, messages: Sequence[dict], add_generation_prompt: bool,
                        where: str) -> tuple[list[int], list[int]]:
    sep = tok.encode(tok.role_separator) if tok.role_separator else []
    ids: list[int] = [tok.bos_id]
    mask: list[int] = [0]
    for n, m in enumerate(messages):
        role = m["role"]
        if role not in ROLES:
            raise DataError(f"{where}: unknown chat role {role!r} in message {n}; expected "
                            f"{ROLES}")
        head = _marker(tok, role)
        body = tok.encode(m["content"]) + _marker(tok, "end")
        ids += head + body
        mask += [0] * len(head) + [int(role == "assistant")] * len(body)
        if n + 1 < len(messages):
            ids += sep
            mask += [0] * len(sep)
    if add_generation_prompt:
        if messages:
            ids += sep
            mask += [0] * len(sep)
        head = _marker(tok, "assistant")
        ids += head
        mask += [0] * len(head)
    elif messages and messages[-1]["role"] == "assistant":
        ids.append(tok.eos_id)
        mask.append(1)
    return ids, mask


def render_response(tok: Tokenizer, response: str) -> list[int]:
    """Ids of an assistant reply continuing `render_prompt` in the role-token layout
    (content, end marker, EOS)."""
    return tok.encode(response) + _marker(tok, "end") + [tok.eos_id]
