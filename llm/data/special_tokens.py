"""Special tokens and chat template of a Hugging Face tokenizer directory, read as
transformers reads them.

- Token strings (`bos_token`, `eos_token`, `pad_token`, `unk_token`) come from
  `tokenizer_config.json`; `special_tokens_map.json` overrides them only where the config has
  no `added_tokens_decoder` (transformers' legacy path). A value may be a string or an
  AddedToken object (`{"content": ...}`).
- Whether encoding adds BOS / EOS: with a `tokenizer.json`, its post-processor decides
  (transformers drops `add_bos_token` then); a sentencepiece-only directory honours
  `add_bos_token` (default true, as LlamaTokenizer) and `add_eos_token` (default false).
- The ids that end generation: `generation_config.json`'s `eos_token_id` (an int or a list;
  Llama 3 has two), with the tokenizer's EOS first.
- The chat template: `chat_template.jinja` before `tokenizer_config.json`'s `chat_template`
  (a string, or a list of named templates whose `default` is used), as transformers does.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Callable

from llm.data import DataError

HF_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_MAP_FILE = "special_tokens_map.json"
GENERATION_FILE = "generation_config.json"
TEMPLATE_FILE = "chat_template.jinja"
NAMES = ("bos_token", "eos_token", "pad_token", "unk_token")


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
    """What a Hugging Face tokenizer directory says about its special tokens."""

    tokens: dict[str, str]  # bos_token ... unk_token -> text, for chat templates
    ids: dict[str, int]  # bos_id ... unk_id -> id, -1 where the model has none
    eos_ids: tuple[int, ...]  # every id that ends generation
    add_bos: bool  # whether encoding text with special tokens adds BOS
    add_eos: bool
    chat_template: str | None
    chat_template_source: str  # the file it came from, for error messages


def read_json(path: pathlib.Path) -> dict:
    """A JSON object file, or DataError naming the file (and line) when it is not one."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"invalid JSON ({e.msg})", str(path), e.lineno) from None
    if not isinstance(value, dict):
        raise DataError(f"expected a JSON object, got {type(value).__name__}", str(path))
    return value


def _token_text(value, path: pathlib.Path, key: str) -> str | None:
    """A special token given as a string or as an AddedToken object."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise DataError(f"{key}: expected a string or an object with 'content', got {value!r}",
                    str(path))


def _template(directory: pathlib.Path, config: dict) -> tuple[str | None, str]:
    """The default chat template and the file it came from."""
    file = directory / TEMPLATE_FILE
    if file.is_file():
        return file.read_text(encoding="utf-8"), str(file)
    source = str(directory / HF_CONFIG_FILE)
    value = config.get("chat_template")
    if value is None or isinstance(value, str):
        return value, source
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        if isinstance(named.get("default"), str):
            return named["default"], source
    raise DataError("chat_template: expected a string or a list of {name, template} with a "
                    f"'default', got {type(value).__name__}", source)


def _generation_eos(directory: pathlib.Path) -> list[int]:
    path = directory / GENERATION_FILE
    if not path.is_file():
        return []
    value = read_json(path).get("eos_token_id")
    values = value if isinstance(value, list) else [] if value is None else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise DataError(f"eos_token_id: expected an int or a list of ints, got {value!r}",
                        str(path))
    return values


def read_special_tokens(directory: pathlib.Path, token_id: Callable[[str], int],
                        vocab_size: int, probe: Callable[[], list[int]] | None
                        ) -> SpecialTokens:
    """The special tokens of the HF tokenizer in `directory`.

    `token_id(text)` is the backend's id of a token (-1 when absent); `probe()` encodes a
    short text with the post-processor's special tokens (None for sentencepiece-only).
    """
    config_path = directory / HF_CONFIG_FILE
    config = read_json(config_path) if config_path.is_file() else {}
    texts = {k: _token_text(config.get(k), config_path, k) for k in NAMES}
    map_path = directory / SPECIAL_MAP_FILE
    if map_path.is_file() and "added_tokens_decoder" not in config:
        special_map = read_json(map_path)
        for k in NAMES:
            if special_map.get(k) is not None:
                texts[k] = _token_text(special_map[k], map_path, k)
    ids = {}
    for k in NAMES:
        i = token_id(texts[k]) if texts[k] is not None else -1
        if texts[k] is not None and not 0 <= i < vocab_size:
            raise DataError(f"{k} {texts[k]!r} is not a token of the vocabulary",
                            str(config_path))
        ids[k.replace("_token", "_id")] = i
    eos_ids = [ids["eos_id"]] if ids["eos_id"] >= 0 else []
    for i in _generation_eos(directory):
        if not 0 <= i < vocab_size:
            raise DataError(f"eos_token_id {i} lies outside the vocabulary [0, {vocab_size})",
                            str(directory / GENERATION_FILE))
        if i not in eos_ids:
            eos_ids.append(i)
    if ids["eos_id"] < 0 and eos_ids:
        ids["eos_id"] = eos_ids[0]
    if ids["pad_id"] < 0:  # transformers' habit for models without one: pad with EOS
        ids["pad_id"] = ids["eos_id"]
    if probe is not None:
        probed = probe()
        add_bos = ids["bos_id"] >= 0 and bool(probed) and probed[0] == ids["bos_id"]
        add_eos = ids["eos_id"] >= 0 and bool(probed) and probed[-1] == ids["eos_id"]
    else:
        add_bos = bool(config.get("add_bos_token", True)) and ids["bos_id"] >= 0
        add_eos = bool(config.get("add_eos_token", False)) and ids["eos_id"] >= 0
    template, source = _template(directory, config)
    tokens = {k: v for k, v in texts.items() if v is not None}
    return SpecialTokens(tokens, ids, tuple(eos_ids), add_bos, add_eos, template, source)
