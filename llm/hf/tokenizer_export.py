"""Hugging Face tokenizer files for a sentencepiece model trained here (`train_tokenizer`).

`write_hf_tokenizer` rebuilds the model as a `tokenizers` pipeline, from the model file's
pieces, scores and types, that encodes like `SentencePieceProcessor.encode` for models with
identity normalisation, no dummy prefix and no extra-whitespace removal (ours):

- normalizer: ' ' -> '▁' only (sentencepiece's whitespace escaping);
- no pre-tokenizer: sentencepiece segments the whole text, not word by word (unigram has
  one cut, where the text spells a byte piece's name; see `_backend`);
- model: BPE whose merges rank by the merged piece's score (sentencepiece merges the
  best-scoring piece first; byte and control pieces are never merged), or Unigram with the
  model's scores; byte fallback where the model has byte pieces;
- control, unknown and user-defined pieces (`<s>`, `</s>`, `<pad>`, `<unk>`, the chat role
  tokens) are special added tokens: matched whole in raw text before the model, as
  sentencepiece matches user-defined pieces, and what apply_chat_template's rendered text
  needs for `<s>`/`</s>`.

`add_special_tokens=True` (transformers' default) prepends BOS and appends nothing, Llama's
convention: every pretraining document starts with BOS, so a prompt encoded the default way
starts as the model saw text start, while an EOS would tell it the text is over. Pretraining
rows add BOS and EOS themselves; `add_special_tokens=False` gives exactly `sp.encode`.

Where it is not exact:
- the literal text `<s>`, `</s>`, `<pad>` or `<unk>` encodes as that special id, where
  sentencepiece spells it out (as for every HF tokenizer; the chat template needs it);
- unigram only: two segmentations of equal score (the same pieces in another order, e.g. a
  run of spaces as '▁▁▁▁'+'▁' or '▁'+'▁▁▁▁') are told apart by sentencepiece's float32
  rounding of the path scores; `tokenizers` adds in float64, so it can pick the other order
  (same length and pieces; 0.2-0.4% of lines of Python source at vocab 600-2000);
- decoding bytes that are not valid UTF-8 (a cut-off character): both give U+FFFD, but
  `tokenizers` replaces the whole run of byte pieces, sentencepiece only the bad bytes.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tokenizers

# llm/data/chat.py render_messages as text; the role tokens are added tokens of the export, so
# HF's apply_chat_template (render, then encode without special tokens) gives the same ids.
ROLE_TOKENS_TEMPLATE = r"""
{%- set role_tokens = {'system': '<|system|>', 'user': '<|user|>', 'assistant': '<|assistant|>'} -%}
{{- bos_token -}}
{%- for message in messages -%}
    {%- if message['role'] not in role_tokens -%}
        {{- raise_exception('unknown chat role ' ~ message['role'] ~ ' in message ' ~ loop.index0
                            ~ '; expected system, user or assistant') -}}
    {%- endif -%}
    {{- role_tokens[message['role']] + message['content'] + '<|end|>' -}}
    {%- if not loop.last %}{{ '\n' }}{% endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {%- if messages %}{{ '\n' }}{% endif -%}
    {{- '<|assistant|>' -}}
{%- elif messages and messages[-1]['role'] == 'assistant' -%}
    {{- eos_token -}}
{%- endif -%}
""".lstrip()

# Numbers from sentencepiece_model.proto: piece types, model types.
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
_UNIGRAM, _BPE = 1, 2
_ADDED = (_CONTROL, _UNKNOWN, _USER_DEFINED)


@dataclasses.dataclass
class _Model:
    """What the export needs of a sentencepiece ModelProto (proto2 defaults filled in)."""

    pieces: list[tuple[str, float, int]] = dataclasses.field(default_factory=list)
    model_type: int = _UNIGRAM
    treat_whitespace_as_suffix: bool = False
    normalizer: str = ""
    precompiled_charsmap: bytes = b""
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True
    escape_whitespaces: bool = True


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def _fields(buf: bytes):
    """(field number, value) of one protobuf message: an int, or the field's raw bytes."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        wire = key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire in (1, 2, 5):
            n, i = (8, i) if wire == 1 else (4, i) if wire == 5 else _varint(buf, i)
            value, i = buf[i:i + n], i + n
        else:
            raise ValueError(f"not a sentencepiece model (protobuf wire type {wire})")
        yield key >> 3, value


def _read_model(data: bytes) -> _Model:
    """Parse a sentencepiece model file by hand, so that export needs no protobuf package."""
    model = _Model()
    for field, value in _fields(data):
        if field == 1:  # SentencePiece: piece, score, type
            piece = dict(_fields(value))
            model.pieces.append((piece.get(1, b"").decode("utf-8"),
                                 struct.unpack("<f", piece.get(2, bytes(4)))[0],
                                 piece.get(3, _NORMAL)))
        elif field == 2:  # TrainerSpec
            spec = dict(_fields(value))
            model.model_type = spec.get(3, _UNIGRAM)
            model.treat_whitespace_as_suffix = bool(spec.get(24, False))
        elif field == 3:  # NormalizerSpec
            spec = dict(_fields(value))
            model.normalizer = spec.get(1, b"").decode("utf-8")
            model.precompiled_charsmap = spec.get(2, b"")
            model.add_dummy_prefix = bool(spec.get(3, True))
            model.remove_extra_whitespaces = bool(spec.get(4, True))
            model.escape_whitespaces = bool(spec.get(5, True))
    return model


def _check_supported(model: _Model, path: pathlib.Path) -> None:
    """Raise ValueError naming the settings the exported pipeline would not reproduce."""
    wrong = []
    if model.model_type not in (_UNIGRAM, _BPE):
        wrong.append(f"model_type {model.model_type} (only unigram and bpe)")
    if model.precompiled_charsmap or model.normalizer not in ("", "identity"):
        wrong.append(f"normalization {model.normalizer!r} (only identity)")
    for key, want in (("add_dummy_prefix", False), ("remove_extra_whitespaces", False),
                      ("escape_whitespaces", True), ("treat_whitespace_as_suffix", False)):
        if getattr(model, key) != want:
            wrong.append(f"{key}={getattr(model, key)}")
    if any(kind == _UNUSED for _, _, kind in model.pieces):
        wrong.append("unused pieces")
    if sum(kind == _UNKNOWN for _, _, kind in model.pieces) != 1:
        wrong.append("not exactly one unknown piece")
    if wrong:
        raise ValueError(f"{path}: cannot export this sentencepiece model exactly: "
                         + ", ".join(wrong))


def _bpe_merges(model: _Model) -> list[tuple[str, str]]:
    """Every split of a normal piece into two normal pieces, best-scoring piece first:
    sentencepiece merges whichever adjacent pair makes the best-scoring piece."""
    normal = {piece for piece, _, kind in model.pieces if kind == _NORMAL}
    ranked = []
    for i, (piece, score, kind) in enumerate(model.pieces):
        if kind == _NORMAL:
            ranked += [(-score, i, piece[:k], piece[k:]) for k in range(1, len(piece))
                       if piece[:k] in normal and piece[k:] in normal]
    return [(left, right) for *_, left, right in sorted(ranked)]


def _backend(model: _Model, bos: str | None, bos_id: int) -> tokenizers.Tokenizer:
    """The `tokenizers` pipeline that encodes and decodes like the sentencepiece model."""
    # Imported here: tokenizers is optional (the `hf` extra), and convert.py imports us.
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )

    unk_id = next(i for i, (_, _, kind) in enumerate(model.pieces) if kind == _UNKNOWN)
    byte_fallback = any(kind == _BYTE for _, _, kind in model.pieces)
    if model.model_type == _BPE:
        vocab = {piece: i for i, (piece, _, _) in enumerate(model.pieces)}
        tok = Tokenizer(models.BPE(vocab, _bpe_merges(model), unk_token=model.pieces[unk_id][0],
                                   fuse_unk=True, byte_fallback=byte_fallback))
    else:
        tok = Tokenizer(models.Unigram([(piece, score) for piece, score, _ in model.pieces],
                                       unk_id=unk_id, byte_fallback=byte_fallback))
        # Unigram matches any vocabulary string in text, so the text '<0x41>' would become
        # that byte piece; sentencepiece never matches byte pieces. Cutting the text around
        # the '0' keeps it out, and changes nothing else: split_digits (train_tokenizer)
        # keeps digits out of every other piece.
        tok.pre_tokenizer = pre_tokenizers.Split(Regex("0(?=x[0-9A-F]{2}>)"), "isolated")
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                     decoders.Fuse()])
    tok.add_special_tokens([AddedToken(piece, special=True, normalized=False)
                            for piece, _, kind in model.pieces if kind in _ADDED])
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
            special_tokens=[(bos, bos_id)])
    return tok


def write_hf_tokenizer(spm_model: pathlib.Path, out_dir: pathlib.Path, *, bos_id: int,
                       eos_id: int, pad_id: int, unk_id: int, chat_template: str) -> None:
    """Write tokenizer.json, tokenizer_config.json and chat_template.jinja into `out_dir`."""
    spm_model, out_dir = pathlib.Path(spm_model), pathlib.Path(out_dir)
    model = _read_model(spm_model.read_bytes())
    _check_supported(model, spm_model)

    def special(name: str, i: int) -> str | None:  # a negative id: the model has none
        if i < 0:
            return None
        if i >= len(model.pieces) or model.pieces[i][2] not in _ADDED:
            raise ValueError(f"{spm_model}: {name}={i} is not a control, unknown or "
                             "user-defined piece")
        return model.pieces[i][0]

    tokens = {f"{name}_token": special(f"{name}_id", i) for name, i in (
        ("bos", bos_id), ("eos", eos_id), ("pad", pad_id), ("unk", unk_id))}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast", **tokens,
        "additional_special_tokens": [piece for piece, _, kind in model.pieces
                                      if kind == _USER_DEFINED],
        "add_bos_token": tokens["bos_token"] is not None, "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "chat_template": chat_template,  # older transformers read it only from here
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    _backend(model, tokens["bos_token"], bos_id).save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out_dir / "chat_template.jinja").write_text(chat_template)
