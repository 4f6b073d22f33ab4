"""The chat template: `messages` → token ids plus a parallel mask of the assistant's tokens.

Layout (role tokens are single ids from the tokenizer; see tokenizer.ROLE_TOKENS):

    <s> <|system|> text <|end|> \\n <|user|> text <|end|> \\n <|assistant|> text <|end|> </s>

The assistant mask is 1 on an assistant message's content tokens and its `<|end|>` (the
model must learn to stop), and on the final `</s>` when the last message is the
assistant's; 0 everywhere else (role tokens, prompts, separators). Tokenizers without
role tokens (imported `tokenizer.json`) get the same layout with the markers as text.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from llm.data import DataError
from llm.data.tokenizer import ROLE_TOKENS, Tokenizer

ROLES = ("system", "user", "assistant")


def _marker(tok: Tokenizer, role: str) -> list[int]:
    role_ids = tok.role_ids
    if role in role_ids:
        return [role_ids[role]]
    return tok.encode(ROLE_TOKENS[role])


def has_targets(messages: Sequence[dict]) -> bool:
    """Whether a conversation has any token SFT trains on (an assistant turn: its body and
    end marker are targets, even when its content is empty)."""
    return any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages)


def render_messages(tok: Tokenizer, messages: Sequence[dict], add_generation_prompt: bool = False
                    ) -> tuple[list[int], list[int]]:
    """Token ids of a conversation and the assistant mask (1 exactly on assistant tokens)."""
    sep = tok.encode(tok.chat_template["separator"]) if tok.chat_template["separator"] else []
    ids: list[int] = [tok.bos_id]
    mask: list[int] = [0]
    for n, m in enumerate(messages):
        role = m["role"]
        if role not in ROLES:
            raise DataError(f"unknown chat role {role!r} in message {n}; expected {ROLES}")
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


def prompt_messages(prompt: str | Sequence[dict], system: str | None = None) -> list[dict]:
    """A prompt as a message list: a string is one user turn (after `system`, if given)."""
    if not isinstance(prompt, str):
        return list(prompt)
    return ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt}]


def render_prompt(tok: Tokenizer, prompt: str | Sequence[dict], system: str | None = None
                  ) -> list[int]:
    """Ids of a prompt (a user string or messages) ending in the assistant's generation prompt
    (what sampling and RL start from)."""
    ids, _ = render_messages(tok, prompt_messages(prompt, system), add_generation_prompt=True)
    return ids


@dataclasses.dataclass(frozen=True)
class RenderedPair:
    """A prompt and one assistant reply rendered as one conversation.

    `ids` starts with `prompt_ids`; `mask` is 1 exactly on the reply's tokens (its end of
    turn included), which preference, KTO and reward rows score.
    """

    prompt_ids: list[int]
    ids: list[int]
    mask: list[int]


def render_pair(tok: Tokenizer, prompt: str | Sequence[dict], reply: str) -> RenderedPair:
    """Ids of `prompt` followed by the assistant's `reply` (see RenderedPair)."""
    prompt_ids = render_prompt(tok, prompt)
    reply_ids = render_response(tok, reply)
    return RenderedPair(prompt_ids, prompt_ids + reply_ids,
                        [0] * len(prompt_ids) + [1] * len(reply_ids))


def render_response(tok: Tokenizer, response: str) -> list[int]:
    """Ids of an assistant reply continuing `render_prompt` (content, end marker, EOS)."""
    return tok.encode(response) + _marker(tok, "end") + [tok.eos_id]
