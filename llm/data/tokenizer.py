"""One `Tokenizer` interface over sentencepiece (`tokenizer.model`) and `tokenizers` (`.json`).

Two kinds of tokenizer directory:
- *trained here* (`train_tokenizer`): `tokenizer.model` plus `llm_tokenizer.json`, this
  project's own metadata (special ids, the chat role tokens). Special tokens: `<pad>`=0,
  `<unk>`=1, `<s>`=2, `</s>`=3, then the chat role tokens; chats use the role-token layout of
  `llm/data/chat.py`.
- *Hugging Face* (an imported model's): its files, kept byte for byte; special tokens, EOS
  list and Jinja chat template read as transformers reads them (`special_tokens.py`).
  `llm_tokenizer.json`, when present, only adds a chat template set by
  `--config.data.chat_template`.
Directories written before `llm_tokenizer.json` existed kept this project's keys in
`tokenizer_config.json`; they still load.
"""

from __future__ import annotations

import io
import json
import pathlib
import random
import shutil
from collections.abc import Iterable, Sequence

import sentencepiece as spm

from llm.data import DataError
from llm.data.special_tokens import HF_CONFIG_FILE, read_json, read_special_tokens

OUR_FILE = "llm_tokenizer.json"
SPM_FILE = "tokenizer.model"
HF_FILE = "tokenizer.json"
# A Hugging Face tokenizer directory's files, copied byte for byte wherever it travels.
HF_FILES = (SPM_FILE, HF_FILE, HF_CONFIG_FILE, "special_tokens_map.json", "added_tokens.json",
            "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
            "generation_config.json")

# Role tokens are user-defined symbols: always one id each, never split or merged.
ROLE_TOKENS = {
    "system": "<|system|>",
    "user": "<|user|>",
    "assistant": "<|assistant|>",
    "end": "<|end|>",
}
# The chat layout of tokenizers trained here (rendered by llm/data/chat.py): per message
# `{role}{content}{end}\n`.
DEFAULT_CHAT_TEMPLATE = {"format": "role_tokens", "separator": "\n"}


def _our_config(directory: pathlib.Path) -> dict | None:
    """This project's metadata: llm_tokenizer.json, or (older directories) our keys in
    tokenizer_config.json; None for a plain Hugging Face directory."""
    if (directory / OUR_FILE).is_file():
        return read_json(directory / OUR_FILE)
    legacy = directory / HF_CONFIG_FILE
    if legacy.is_file():
        config = read_json(legacy)
        if "role_ids" in config and "kind" in config:
            return config
    return None


def trained_here(directory: str | pathlib.Path) -> dict | None:
    """The metadata of a tokenizer directory trained here (its special and role ids), or
    None for a Hugging Face one."""
    config = _our_config(pathlib.Path(directory))
    return config if config is not None and "role_ids" in config else None


def template_override(directory: str | pathlib.Path) -> str | None:
    """The chat template set with data.chat_template for this directory, if any."""
    config = _our_config(pathlib.Path(directory)) or {}
    return config.get("chat_template_override")


class Tokenizer:
    """Encode/decode text, expose special ids and chat role tokens; load/save a directory."""

    def __init__(self, backend, kind: str, config: dict, model_path: pathlib.Path,
                 hf=None):
        self._backend = backend
        self._kind = kind  # 'sentencepiece' | 'tokenizers'
        self._config = config
        self._model_path = model_path
        self._hf = hf  # SpecialTokens of a Hugging Face directory, None for ours

    # ----- loading and saving -------------------------------------------------------------
    @classmethod
    def load(cls, directory: str | pathlib.Path) -> Tokenizer:
        """Load a tokenizer directory (trained here or a Hugging Face one)."""
        directory = pathlib.Path(directory)
        if directory.is_file() and directory.name in (SPM_FILE, HF_FILE):
            directory = directory.parent
        if not directory.is_dir():
            raise DataError("tokenizer directory does not exist", str(directory))
        ours = _our_config(directory)
        trained_here = ours is not None and "role_ids" in ours
        if (directory / SPM_FILE).exists() and (trained_here or not (directory / HF_FILE).exists()):
            path = directory / SPM_FILE
            try:
                backend = spm.SentencePieceProcessor(model_file=str(path))
            except (RuntimeError, OSError) as e:
                raise DataError("not a readable sentencepiece model (corrupt or truncated?): "
                                f"{str(e).strip()}", str(path)) from None
            if trained_here:
                return cls._ours(backend, path, ours)

            def spm_id(piece: str) -> int:
                i = backend.piece_to_id(piece)
                return i if backend.id_to_piece(i) == piece else -1
            hf = read_special_tokens(directory, spm_id, backend.get_piece_size(), None)
            return cls(backend, "sentencepiece", _hf_config(hf, ours), path, hf)
        if (directory / HF_FILE).exists():
            return cls._load_hf(directory / HF_FILE, ours)
        raise DataError(f"expected {SPM_FILE} or {HF_FILE} in the directory", str(directory))

    @classmethod
    def _ours(cls, backend, path: pathlib.Path, config: dict) -> Tokenizer:
        """A sentencepiece tokenizer trained here, its ids filled from the model itself."""
        config = dict(config)
        config.setdefault("pad_id", backend.pad_id())
        config.setdefault("bos_id", backend.bos_id())
        config.setdefault("eos_id", backend.eos_id())
        config.setdefault("unk_id", backend.unk_id())
        return cls(backend, "sentencepiece", _with_roles(config, backend.piece_to_id), path)

    @classmethod
    def _load_hf(cls, path: pathlib.Path, ours: dict | None) -> Tokenizer:
        try:
            import tokenizers
        except ImportError as e:  # pragma: no cover - depends on the install
            raise DataError("reading tokenizer.json needs `pip install tokenizers`", str(path))\
                from e
        try:
            backend = tokenizers.Tokenizer.from_file(str(path))
        except Exception as e:  # the Rust side raises a bare Exception
            raise DataError(f"not a readable tokenizers file: {e}", str(path)) from None

        def piece_id(piece: str) -> int:
            i = backend.token_to_id(piece)
            return -1 if i is None else i

        def probe() -> list[int]:
            return list(backend.encode("a", add_special_tokens=True).ids)

        hf = read_special_tokens(path.parent, piece_id,
                                 backend.get_vocab_size(with_added_tokens=True), probe)
        return cls(backend, "tokenizers", _hf_config(hf, ours), path, hf)

    @staticmethod
    def files(path: str | pathlib.Path) -> list[pathlib.Path]:
        """The files `load(path)` reads (metadata, model, HF files), e.g. to hash them."""
        directory = pathlib.Path(path)
        if directory.is_file():
            directory = directory.parent
        return [directory / n for n in (OUR_FILE, *HF_FILES) if (directory / n).is_file()]

    @staticmethod
    def exists(directory: str | pathlib.Path) -> bool:
        """Whether `directory` holds a saved tokenizer."""
        directory = pathlib.Path(directory)
        return (directory / SPM_FILE).is_file() or (directory / HF_FILE).is_file()

    def save(self, directory: str | pathlib.Path) -> pathlib.Path:
        """Write the tokenizer into `directory`: a Hugging Face tokenizer's files byte for
        byte, plus llm_tokenizer.json (this project's metadata, or a template override)."""
        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        source = self._model_path.parent
        names = [n for n in HF_FILES if (source / n).is_file()] if self._hf else [SPM_FILE]
        for name in names:
            target = directory / name
            if target.resolve() != (source / name).resolve():
                shutil.copyfile(source / name, target)
        if self._hf is None:
            config = dict(self._config, kind=self._kind, model_file=self._model_path.name,
                          vocab_size=self.vocab_size)
        else:
            config = {k: v for k, v in self._config.items() if k in _OVERRIDE_KEYS}
            config.update(kind=self._kind, model_file=self._model_path.name)
        (directory / OUR_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
        return directory

    def with_chat_template(self, template: str, source: str) -> Tokenizer:
        """This tokenizer with `template` (Jinja, from the file `source`) as its chat template."""
        config = dict(self._config, chat_template_override=template,
                      chat_template_source=source)
        return Tokenizer(self._backend, self._kind, config, self._model_path, self._hf)

    # ----- special ids ---------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of ids the model can produce."""
        if self._kind == "sentencepiece":
            return self._backend.get_piece_size()
        return self._backend.get_vocab_size(with_added_tokens=True)

    @property
    def bos_id(self) -> int:
        """Beginning-of-sequence id; -1 when the model has none (never emitted then)."""
        return int(self._config["bos_id"])

    @property
    def eos_id(self) -> int:
        """End-of-sequence id; -1 only for a Hugging Face tokenizer that names none."""
        return int(self._config["eos_id"])

    @property
    def eos_ids(self) -> tuple[int, ...]:
        """Every id that ends generation (EOS, and a Hugging Face model's
        `generation_config.json` list); `min_new_tokens` suppresses all of them."""
        if self._hf is not None:
            return self._hf.eos_ids
        return (self.eos_id,)

    @property
    def add_bos_token(self) -> bool:
        """Whether encoding a document adds BOS (transformers' `add_bos_token`): always for
        tokenizers trained here; a Hugging Face tokenizer's own post-processor decides."""
        return self._hf.add_bos if self._hf is not None else True

    @property
    def special_tokens(self) -> dict[str, str]:
        """`bos_token`, `eos_token`, `pad_token`, `unk_token` as text (what chat templates
        see), where the model has them."""
        if self._hf is not None:
            return dict(self._hf.tokens)
        ids = {"bos_token": self.bos_id, "eos_token": self.eos_id, "pad_token": self.pad_id,
               "unk_token": int(self._config["unk_id"])}
        return {k: self.id_to_piece(i) for k, i in ids.items() if i >= 0}

    @property
    def is_hf(self) -> bool:
        """Whether this is a Hugging Face tokenizer directory (not one trained here)."""
        return self._hf is not None

    @property
    def directory(self) -> pathlib.Path:
        """The directory the tokenizer was loaded from."""
        return self._model_path.parent

    def require(self, need: str, stage: str) -> None:
        """DataError naming the tokenizer's files when it lacks what `stage` needs
        ('eos': an end-of-sequence token; 'chat': a chat template)."""
        where = str(self.directory)
        if need == "eos" and self.eos_id < 0:
            raise DataError(f"{stage}: needs an end-of-sequence token, and this tokenizer "
                            "has none (no eos_token in tokenizer_config.json / "
                            "special_tokens_map.json, no eos_token_id in "
                            "generation_config.json)", where)
        if need == "chat" and self.chat_template is None and not self.role_ids:
            raise DataError(f"{stage}: chat needs a chat template, and this tokenizer has "
                            "none (no chat_template.jinja, no chat_template in "
                            "tokenizer_config.json): set --config.data.chat_template=FILE "
                            "to a Jinja template", where)

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """Ids that end an assistant turn: `eos_ids`, then the chat template's end-of-turn
        token where it is a token of its own."""
        end = self.role_ids.get("end")
        return self.eos_ids + ((end,) if end is not None and end not in self.eos_ids else ())

    @property
    def pad_id(self) -> int:
        """Padding id (0 for tokenizers trained here)."""
        return int(self._config["pad_id"])

    @property
    def role_ids(self) -> dict[str, int]:
        """Ids of the chat role tokens ('system', 'user', 'assistant', 'end'); may be empty."""
        return dict(self._config["role_ids"])

    @property
    def chat_template(self) -> str | None:
        """The Jinja chat template (set with --config.data.chat_template, else the model's
        own); None for a tokenizer trained here, whose chats use the role-token layout."""
        if self._config.get("chat_template_override"):
            return self._config["chat_template_override"]
        return self._hf.chat_template if self._hf is not None else None

    @property
    def chat_template_source(self) -> str:
        """The file the chat template came from (for error messages)."""
        if self._config.get("chat_template_source"):
            return self._config["chat_template_source"]
        return self._hf.chat_template_source if self._hf is not None else str(self.directory)

    @property
    def role_separator(self) -> str:
        """The text between turns in the role-token layout (tokenizers trained here)."""
        return dict(self._config.get("chat_template") or DEFAULT_CHAT_TEMPLATE)["separator"]

    @property
    def kind(self) -> str:
        """'sentencepiece' or 'tokenizers'."""
        return self._kind

    # ----- encode / decode -----------------------------------------------------------------
    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of `text`, optionally framed by BOS/EOS.

        BOS is added only where the model has one and adds it (`add_bos_token`), and never
        twice; EOS only where the model has one.
        """
        if self._kind == "sentencepiece":
            ids = list(self._backend.encode(text))
        else:
            ids = list(self._backend.encode(text, add_special_tokens=False).ids)
        if add_bos and self.add_bos_token and self.bos_id >= 0 and ids[:1] != [self.bos_id]:
            ids.insert(0, self.bos_id)
        if add_eos and self.eos_id >= 0:
            ids.append(self.eos_id)
        return ids

    def offsets(self, text: str) -> list[tuple[int, int]]:
        """[start, end) character span of each token of `encode(text)` (tokenizers only)."""
        if self._kind != "tokenizers":
            raise NotImplementedError("token offsets need a tokenizer.json tokenizer")
        return [tuple(o) for o in self._backend.encode(text, add_special_tokens=False).offsets]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text (no BOS/EOS)."""
        if self._kind == "sentencepiece":
            return [list(ids) for ids in self._backend.encode(list(texts))]
        return [list(e.ids) for e in self._backend.encode_batch(list(texts),
                                                               add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; special tokens (pad, bos, eos) are dropped."""
        ids = [int(i) for i in ids]
        if self._kind == "sentencepiece":
            return self._backend.decode(ids)
        return self._backend.decode(ids, skip_special_tokens=True)

    def id_to_piece(self, token_id: int) -> str:
        """The vocabulary piece of one id."""
        if self._kind == "sentencepiece":
            return self._backend.id_to_piece(int(token_id))
        return self._backend.id_to_token(int(token_id)) or ""

    def piece_to_id(self, piece: str) -> int:
        """The id of a vocabulary piece (-1 when absent for tokenizers; unk for sentencepiece)."""
        if self._kind == "sentencepiece":
            return self._backend.piece_to_id(piece)
        i = self._backend.token_to_id(piece)
        return -1 if i is None else i

    def token_bytes(self, token_id: int) -> bytes:
        """UTF-8 bytes one id contributes to decoded text (b'' for control tokens)."""
        token_id = int(token_id)
        if self._kind == "sentencepiece":
            sp = self._backend
            if sp.is_control(token_id) or sp.is_unknown(token_id):
                return b""
            if sp.is_byte(token_id):
                return bytes([int(sp.id_to_piece(token_id)[3:5], 16)])
            return sp.id_to_piece(token_id).replace("\u2581", " ").encode("utf-8")
        return self._backend.decode([token_id], skip_special_tokens=False).encode("utf-8")


_OVERRIDE_KEYS = ("chat_template_override", "chat_template_source")


def _hf_config(hf, ours: dict | None) -> dict:
    """The config of a Hugging Face tokenizer: its special ids, no role tokens, and the chat
    template override from llm_tokenizer.json, if any."""
    overrides = {k: v for k, v in (ours or {}).items() if k in _OVERRIDE_KEYS}
    return {**hf.ids, "role_ids": {}, **overrides}


def _with_roles(config: dict, piece_id) -> dict:
    """Fill role ids and the chat template into a tokenizer config."""
    config = dict(config)
    if "role_ids" not in config:
        roles = {role: piece_id(tok) for role, tok in ROLE_TOKENS.items()}
        unk = config.get("unk_id", -1)  # the config may come from a foreign tokenizer
        config["role_ids"] = {r: i for r, i in roles.items() if i >= 0 and i != unk}
    config.setdefault("chat_template", DEFAULT_CHAT_TEMPLATE)
    return config


MODEL_TYPES = ("bpe", "unigram")


def check_config(t) -> None:
    """Raise DataError naming a bad `tokenizer.*` setting (config.tokenizer)."""
    if t.model_type not in MODEL_TYPES:
        raise DataError(f"tokenizer.model_type must be one of {MODEL_TYPES}, got "
                        f"{t.model_type!r}")
    fixed = 4 + len(ROLE_TOKENS) + (256 if t.byte_fallback else 0)
    if t.vocab_size <= fixed:
        raise DataError(f"tokenizer.vocab_size must exceed the {fixed} special, role"
                        f"{' and byte' if t.byte_fallback else ''} pieces, got {t.vocab_size}")
    if t.max_sentences < 1:
        raise DataError(f"tokenizer.max_sentences must be >= 1, got {t.max_sentences}")


def train_tokenizer(
    texts: Iterable[str],
    out_dir: str | pathlib.Path,
    vocab_size: int,
    model_type: str = "bpe",
    byte_fallback: bool = True,
    max_sentences: int = 200_000,
    max_sentence_length: int = 4096,
    character_coverage: float = 0.9995,
    seed: int = 0,
    num_threads: int = 2,
) -> Tokenizer:
    """Train a sentencepiece model on (a reservoir sample of) `texts`; save it to `out_dir`.

    Documents are cut into lines-groups of at most `max_sentence_length` characters;
    at most `max_sentences` of them are kept by reservoir sampling, so the corpus streams.
    """
    if model_type not in MODEL_TYPES:
        raise DataError(f"tokenizer.model_type must be one of {MODEL_TYPES}, got {model_type!r}")
    rng = random.Random(seed)
    sample: list[str] = []
    seen = 0
    for text in texts:
        for chunk in _chunks(text, max_sentence_length):
            seen += 1
            if len(sample) < max_sentences:
                sample.append(chunk)
            else:
                j = rng.randrange(seen)
                if j < max_sentences:
                    sample[j] = chunk
    if not sample:
        raise DataError("cannot train a tokenizer on an empty corpus")
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sample), model_writer=model, vocab_size=vocab_size,
            model_type=model_type, byte_fallback=byte_fallback,
            pad_id=0, unk_id=1, bos_id=2, eos_id=3,
            pad_piece="<pad>", unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>",
            user_defined_symbols=list(ROLE_TOKENS.values()),
            character_coverage=character_coverage, max_sentence_length=4 * max_sentence_length,
            normalization_rule_name="identity", remove_extra_whitespaces=False,
            add_dummy_prefix=False, split_digits=True, allow_whitespace_only_pieces=True,
            hard_vocab_limit=False, num_threads=num_threads,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise DataError(f"sentencepiece training failed (tokenizer.vocab_size={vocab_size}): "
                        f"{str(e).strip()}") from None
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / SPM_FILE).write_bytes(model.getvalue())
    backend = spm.SentencePieceProcessor(model_file=str(out_dir / SPM_FILE))
    tok = Tokenizer._ours(backend, out_dir / SPM_FILE, {})
    tok.save(out_dir)
    return tok


def _chunks(text: str, limit: int) -> Iterable[str]:
    """Split text into groups of whole lines of at most `limit` characters."""
    buf: list[str] = []
    size = 0
    for line in text.splitlines(keepends=True):
        while len(line) > limit:
            if buf:
                yield "".join(buf)
                buf, size = [], 0
            yield line[:limit]
            line = line[limit:]
        if size + len(line) > limit and buf:
            yield "".join(buf)
            buf, size = [], 0
        buf.append(line)
        size += len(line)
    if buf:
        yield "".join(buf)
