"""Host-side `Sampler`: text in, text out, around the jitted prefill / decode in decode.py.

It tokenises (and for chat renders the chat template), pads the batch, decodes in chunks of
`chunk_size` steps that carry the KV cache between calls, and between chunks decodes the
new text on the host to match stop strings (also across token boundaries), to stream text
and to end rows early. Output is trimmed at the stop string; EOS is not part of the text.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llm.sampling import beam
from llm.sampling import decode as sampling
from llm.sampling.decode import SamplingParams
from llm.sampling.filters import DEFAULTS


class TokenizerLike(Protocol):
    """The part of `llm.data.tokenizer.Tokenizer` the sampler uses."""

    bos_id: int
    eos_id: int
    eos_ids: tuple[int, ...]
    pad_id: int
    vocab_size: int

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


# messages → prompt text or token ids (e.g. `llm.data.chat.render_messages(tok, m, True)[0]`).
ChatTemplate = Callable[[Sequence[Mapping[str, str]]], "str | list[int]"]


def plain_chat_template(messages: Sequence[Mapping[str, str]]) -> str:
    """A minimal fallback template: '<|role|>\\ncontent\\n' per turn, then the reply cue."""
    turns = "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages)
    return turns + "<|assistant|>\n"


@dataclasses.dataclass
class Completion:
    """One row's result; `tokens` / `logprobs` cover the trimmed completion only."""

    text: str
    tokens: list[int]
    logprobs: list[float]
    finish_reason: str  # 'eos' | 'stop' | 'length'


def find_stop(text: str, stops: Sequence[str], start: int = 0, min_end: int = 0) -> int:
    """Index of the earliest stop string in text[start:] (in text coordinates) that ends
    after text[:min_end], or -1."""
    hits = []
    for stop in filter(None, stops):
        at = text.find(stop, start)
        while 0 <= at and at + len(stop) <= min_end:
            at = text.find(stop, at + 1)
        if at >= 0:
            hits.append(at)
    return min(hits, default=-1)


class Sampler:
    """Sample text from a split model with a tokenizer (and an optional chat template)."""

    def __init__(self, graphdef: nnx.GraphDef, params: Any, tokenizer: TokenizerLike, *,
                 max_len: int | None = None, mesh: jax.sharding.Mesh | None = None,
                 chat_template: ChatTemplate | None = None, chunk_size: int = 16,
                 add_bos: bool = True, unstack_layers: bool = True):
        if chunk_size < 1:
            raise ValueError(f"chunk_size={chunk_size}: expected >= 1 decode steps per chunk")
        self.graphdef, self.params, self.tokenizer = graphdef, params, tokenizer
        self.max_len, self.mesh, self.chunk_size, self.add_bos = max_len, mesh, chunk_size, \
            add_bos
        self.chat_template = chat_template or plain_chat_template
        self.unstack_layers = unstack_layers  # see sampling.decode

    def encode(self, prompt: str | Sequence[int]) -> list[int]:
        """Text → ids (with BOS); token-id prompts pass through."""
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("this model has no tokenizer: give token ids, not text")
            return self.tokenizer.encode(prompt, add_bos=self.add_bos)
        return [int(t) for t in prompt]

    def _batch(self, prompts: Sequence[str | Sequence[int]]) -> tuple[np.ndarray, list[int]]:
        """Right-padded ids_BP and the row lengths of a non-empty batch of prompts."""
        if not prompts:
            raise ValueError("no prompts: expected at least one")
        ids = [self.encode(p) for p in prompts]
        tokens_BP = np.zeros((len(ids), max(1, *map(len, ids))), np.int32)
        for b, row in enumerate(ids):
            tokens_BP[b, :len(row)] = row
        return tokens_BP, [len(row) for row in ids]

    def _check_stops(self, stop: Sequence[str]) -> list[str]:
        """The non-empty stop strings; they need a tokenizer, to have text to match."""
        if isinstance(stop, str) or not all(isinstance(s, str) for s in stop):
            raise ValueError(f"stop={stop!r}: expected a list of strings")
        stops = [s for s in stop if s]
        if stops and self.tokenizer is None:
            raise ValueError("stop strings are matched on text and this model has no "
                             "tokenizer; use stop_token_ids")
        return stops

    def _hidden_ids(self, stop_token_ids: Sequence[int]) -> set[int]:
        """Ids that end a row without being part of its text: EOS and the stop ids."""
        eos = set(self.tokenizer.eos_ids) if self.tokenizer is not None else set()
        return eos | {int(i) for i in stop_token_ids}

    def complete(self, prompts: Sequence[str | Sequence[int]],
                 sampling_params: SamplingParams | None = None, *, stop: Sequence[str] = (),
                 stop_token_ids: Sequence[int] = (), **controls: Any) -> list[Completion]:
        """Complete a batch of prompts (text or ids); controls build SamplingParams."""
        stream = self._run(prompts, sampling_params, stop, stop_token_ids, controls,
                           chunked=bool(stop))
        while True:
            try:
                next(stream)
            except StopIteration as done:
                return done.value

    def complete_beam(self, prompts: Sequence[str | Sequence[int]], *, beam_width: int,
                      max_new_tokens: int, stop: Sequence[str] = (),
                      stop_token_ids: Sequence[int] = (), length_penalty: float = 0.0
                      ) -> list[Completion]:
        """Beam search (the best beam per prompt), trimmed at stop strings afterwards."""
        stops = self._check_stops(stop)
        tokens_BP, lengths = self._batch(prompts)
        hidden = self._hidden_ids(stop_token_ids)
        eos_ids = list(self.tokenizer.eos_ids) if self.tokenizer is not None else []
        found = beam.beam_search(
            self.graphdef, self.params, tokens_BP, lengths,
            beam_width=beam_width, max_new_tokens=max_new_tokens, max_len=self.max_len,
            eos_ids=[*eos_ids, *stop_token_ids], length_penalty=length_penalty,
            unstack_layers=self.unstack_layers)
        reasons = [r if r == "length" or found.tokens_BN[b, found.lengths_B[b] - 1]
                   in eos_ids else "stop" for b, r in enumerate(found.finish_reason)]
        out = sampling.GenerateOutput(found.tokens_BN, found.logprobs_BN, found.logprobs_BN,
                                      found.lengths_B, reasons)
        return [self._finish(out, b, stops, find_stop(
            self._text(out.tokens_BN[b, :out.lengths_B[b]], hidden), stops) if stops else -1,
            hidden) for b in range(len(lengths))]

    def chat(self, messages: Sequence[Mapping[str, str]], **kwargs: Any) -> Completion:
        """Reply to one conversation rendered with the chat template."""
        return self.complete([self.chat_template(messages)], **kwargs)[0]

    def stream(self, prompt: str | Sequence[int], sampling_params: SamplingParams | None = None,
               *, stop: Sequence[str] = (), stop_token_ids: Sequence[int] = (),
               **controls: Any) -> Iterator[str]:
        """Yield text pieces of one completion as chunks decode; returns the Completion."""
        stream = self._run([prompt], sampling_params, stop, stop_token_ids, controls,
                           chunked=True)
        while True:
            try:
                pieces = next(stream)
            except StopIteration as done:
                return done.value[0]
            if pieces[0]:
                yield pieces[0]

    def _run(self, prompts, sampling_params, stop, stop_token_ids, controls, chunked: bool
             ) -> Iterator[list[str]]:
        """Prefill, then decode chunk by chunk; yields new safe text per row, returns rows.

        Like EOS and stop ids, stop strings count only after `min_new_tokens`: a stop
        string must end after the text of the row's first min_new_tokens tokens.
        """
        stops = self._check_stops(stop)
        tokens_BP, lengths = self._batch(prompts)
        B = len(lengths)
        if sampling_params is None:
            sampling_params = SamplingParams.create(B, **controls)
        elif controls:
            raise ValueError(f"pass either sampling_params or controls, not both: {controls}")
        # Without a tokenizer (prompt_ids only) there is no EOS and no text, just tokens.
        eos_ids = list(self.tokenizer.eos_ids) if self.tokenizer is not None else []
        hidden = self._hidden_ids(stop_token_ids)  # they end a row but are not text
        state, max_len = sampling.prefill(
            self.graphdef, self.params, tokens_BP, lengths, sampling_params,
            max_len=self.max_len, eos_ids=eos_ids, stop_token_ids=stop_token_ids,
            mesh=self.mesh)
        hold = max((len(s) for s in stops), default=1) - 1  # a stop may still be forming
        min_new_B = np.asarray(sampling_params.min_new_tokens)
        min_end: list[int | None] = [None] * B  # text length of the first min_new tokens
        emitted = [0] * B
        stop_at = [-1] * B
        while True:
            done_B = np.asarray(state.done_B)
            n_B = np.asarray(state.n_new_B)
            tokens_BN = np.asarray(state.tokens_BN)
            texts = [self._text(tokens_BN[b, :n_B[b]], hidden) for b in range(B)]
            for b in range(B):
                if stop_at[b] < 0 and stops and n_B[b] >= min_new_B[b]:
                    if min_end[b] is None:
                        min_end[b] = len(self._text(tokens_BN[b, :min_new_B[b]], hidden))
                    stop_at[b] = find_stop(texts[b], stops, max(0, emitted[b] - hold),
                                           min_end[b])
            hit_B = np.array([s >= 0 for s in stop_at])
            finished = np.all(done_B | hit_B)
            pieces = []
            for b in range(B):
                end = stop_at[b] if stop_at[b] >= 0 else len(texts[b])
                if not (finished or done_B[b] or hit_B[b]):
                    end = max(emitted[b], end - hold)
                    while end > emitted[b] and texts[b][end - 1] == "\ufffd":
                        end -= 1  # an incomplete multi-byte character: wait for the rest
                pieces.append(texts[b][emitted[b]:end])
                emitted[b] = max(emitted[b], end)
            yield pieces
            if finished:
                break
            if hit_B.any():  # end rows whose stop string appeared; the loop skips them
                state = state._replace(
                    done_B=jnp.asarray(done_B | hit_B),
                    finish_B=jnp.where(hit_B & ~done_B, sampling.STOP, state.finish_B))
            steps = self.chunk_size if chunked else 2**30
            state = sampling.decode(self.graphdef, self.params, state, max_len=max_len,
                                    max_steps=steps, mesh=self.mesh,
                                    unstack_layers=self.unstack_layers)
        out = sampling.to_output(state)
        return [self._finish(out, b, stops, stop_at[b], hidden, min_end[b] or 0)
                for b in range(B)]

    def _text(self, tokens: Sequence[int], hidden: set[int]) -> str:
        """The text of `tokens`, leaving out the `hidden` ids ('' without a tokenizer)."""
        if self.tokenizer is None:
            return ""
        return self.tokenizer.decode([int(t) for t in tokens if int(t) not in hidden])

    def _finish(self, out: sampling.GenerateOutput, b: int, stops: Sequence[str],
                stop_at: int, hidden: set[int], min_end: int = 0) -> Completion:
        n = int(out.lengths_B[b])
        tokens, logprobs = out.tokens_BN[b, :n].tolist(), out.logprobs_BN[b, :n].tolist()
        reason = out.finish_reason[b]
        text = self._text(tokens, hidden)
        if stop_at >= 0:
            # The shortest token prefix whose text contains the stop string (binary search).
            lo, hi = 1, n
            while lo < hi:
                mid = (lo + hi) // 2
                if find_stop(self._text(tokens[:mid], hidden), stops, 0, min_end) >= 0:
                    hi = mid
                else:
                    lo = mid + 1
            tokens, logprobs, text, reason = tokens[:lo], logprobs[:lo], text[:stop_at], "stop"
        return Completion(text, tokens, logprobs, reason)


def _row_prompt(sampler: Sampler, row: Mapping[str, Any], where: str
                ) -> str | list[int]:
    """The prompt of one JSONL request row; a malformed row is one ValueError naming it."""
    if "prompt_ids" in row:
        ids = row["prompt_ids"]
        if not isinstance(ids, list) or not ids or not all(
                isinstance(t, int) and not isinstance(t, bool) for t in ids):
            raise ValueError(f"{where}: 'prompt_ids' must be a non-empty list of integer "
                             f"token ids, got {ids!r:.80}")
        vocab = sampling.model_config(sampler.graphdef, sampler.params).vocab_size
        if not all(0 <= t < vocab for t in ids):
            raise ValueError(f"{where}: 'prompt_ids' must lie in [0, {vocab})")
        return ids
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str)
                and isinstance(m.get("content"), str) for m in messages):
            raise ValueError(f"{where}: 'messages' must be a non-empty list of "
                             f'{{"role": str, "content": str}} turns, got {messages!r:.80}')
        try:
            return sampler.chat_template(messages)
        except ValueError as error:  # e.g. a role the template does not know
            raise ValueError(f"{where}: {error}") from None
    if "prompt" in row:
        if not isinstance(row["prompt"], str):
            raise ValueError(f"{where}: 'prompt' must be a string, got {row['prompt']!r:.80}")
        if not row["prompt"] and not sampler.add_bos:
            raise ValueError(f"{where}: empty 'prompt' (and no BOS is added)")
        return row["prompt"]
    raise ValueError(f"{where}: expected 'prompt', 'messages' or 'prompt_ids', got keys "
                     f"{sorted(row)}")


TRUNCATE_PROMPT = ("", "left")


def fit_prompt(sampler: Sampler, prompt: str | list[int], max_new_tokens: int, where: str,
               truncate_prompt: str = "") -> list[int]:
    """The prompt's ids if they leave room for `max_new_tokens` in the context; else one
    ValueError naming the row, or with `truncate_prompt='left'` its newest tokens kept."""
    ids = sampler.encode(prompt)
    context = sampler.max_len or sampling.model_config(sampler.graphdef,
                                                       sampler.params).max_seq_len
    room = context - max_new_tokens
    if len(ids) <= room:
        return ids
    if truncate_prompt == "left" and room >= 1:
        return ids[len(ids) - room:]
    hint = ("" if room < 1 else "; lower max_new_tokens, shorten the prompt, or set "
            "truncate_prompt=left to keep its last tokens")
    raise ValueError(f"{where}: prompt of {len(ids)} tokens does not fit the context of "
                     f"{context} with max_new_tokens {max_new_tokens}{hint}")


def complete_rows(sampler: Sampler, rows: Sequence[Mapping[str, Any]], *, batch_size: int,
                  stop: Sequence[str] = (), stop_token_ids: Sequence[int] = (),
                  beam_width: int = 1, where: Sequence[str] | None = None,
                  truncate_prompt: str = "", **controls: Any) -> list[dict]:
    """JSONL requests ('prompt' text, 'messages' or 'prompt_ids') → rows with results.

    Each output row is the input row plus `completion` (text; only with a tokenizer),
    `tokens`, `logprobs` and `finish_reason`; rows are batched `batch_size` at a time,
    seeds offset per row. `where` names each row in errors (default 'prompts row N'); a
    prompt too long for the context is one of them unless `truncate_prompt='left'`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: expected >= 1")
    if beam_width < 1:
        raise ValueError(f"beam_width={beam_width}: expected >= 1 (1 samples, > 1 searches)")
    if truncate_prompt not in TRUNCATE_PROMPT:
        raise ValueError(f"truncate_prompt={truncate_prompt!r}: expected one of "
                         f"{TRUNCATE_PROMPT} ('' refuses a prompt that does not fit)")
    where = where or [f"prompts row {n}" for n in range(1, len(rows) + 1)]
    max_new = int(controls.get("max_new_tokens", DEFAULTS["max_new_tokens"]))
    # Every row's shape first: a malformed row is the error to report, not its length.
    prompts = [_row_prompt(sampler, row, name) for row, name in zip(rows, where, strict=True)]
    prompts = [fit_prompt(sampler, prompt, max_new, name, truncate_prompt)
               for prompt, name in zip(prompts, where, strict=True)]
    seed = int(controls.pop("seed", 0))
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        seeds = [seed + start + i for i in range(len(chunk))]
        if beam_width > 1:
            results = sampler.complete_beam(chunk, beam_width=beam_width, stop=stop,
                                            stop_token_ids=stop_token_ids,
                                            max_new_tokens=int(controls["max_new_tokens"]))
        else:
            results = sampler.complete(chunk, stop=stop, stop_token_ids=stop_token_ids,
                                       seed=seeds, **controls)
        for row, result in zip(rows[start:start + batch_size], results, strict=True):
            text = {"completion": result.text} if sampler.tokenizer is not None else {}
            out.append({**row, **text, "tokens": result.tokens,
                        "logprobs": [round(x, 6) for x in result.logprobs],
                        "finish_reason": result.finish_reason})
    return out


def chat_sampler(graphdef: nnx.GraphDef, params: Any, tokenizer: Any, **kwargs: Any
                 ) -> tuple[Sampler, list[int]]:
    """A Sampler using the tokenizer's chat template, and the ids that end a turn."""
    from llm.data import chat

    def template(messages):
        return chat.render_messages(tokenizer, messages, True)[0]

    end_ids = [i for i in tokenizer.stop_ids if i not in tokenizer.eos_ids]
    return Sampler(graphdef, params, tokenizer, chat_template=template, **kwargs), end_ids


def load_sampler(init_from: str, mesh: jax.sharding.Mesh | None = None, **kwargs: Any
                 ) -> tuple[Sampler, list[int]]:
    """A chat-capable Sampler for a workdir, `checkpoints/<step>` or `hf:DIR`."""
    from llm import loading
    from llm.data.tokenizer import Tokenizer

    loaded = loading.load_model(init_from, mesh=mesh)
    if loaded.tokenizer_dir is None:
        return Sampler(loaded.graphdef, loaded.params, None, mesh=mesh, **kwargs), []
    return chat_sampler(loaded.graphdef, loaded.params, Tokenizer.load(loaded.tokenizer_dir),
                        mesh=mesh, **kwargs)
