"""One `Tokenizer` interface over sentencepiece (`tokenizer.model`) and `tokenizers` (`.json`).

A tokenizer directory holds the model file plus `tokenizer_config.json` (special ids, the
chat role tokens and the chat template), so a workdir or a prepared dataset alone is enough
to encode, decode and render chats. `train_tokenizer` trains a sentencepiece model (BPE or
unigram, byte fallback) on a sample of a corpus with the project's special tokens:
`<pad>`=0, `<unk>`=1, `<s>`=2, `</s>`=3, then the chat role tokens.
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

CONFIG_FILE = "tokenizer_config.json"
SPM_FILE = "tokenizer.model"
HF_FILE = "tokenizer.json"

# Role tokens are user-defined symbols: always one id each, never split or merged.
ROLE_TOKENS = {
    "system": "<|system|>",
    "user": "<|user|>",
    "assistant": "<|assistant|>",
    "end": "<|end|>",
}
# The chat template (rendered by llm/data/chat.py): per message `{role}{content}{end}\n`.
DEFAULT_CHAT_TEMPLATE = {"format": "role_tokens", "separator": "\n"}


class Tokenizer:
    """Encode/decode text, expose special ids and chat role tokens; load/save a directory."""

    def __init__(self, backend, kind: str, config: dict, model_path: pathlib.Path):
        self._backend = backend
        self._kind = kind  # 'sentencepiece' | 'tokenizers'
        self._config = config
        self._model_path = model_path

    # ----- loading and saving -------------------------------------------------------------
    @classmethod
    def load(cls, directory: str | pathlib.Path) -> Tokenizer:
        """Load a tokenizer directory (tokenizer.model or tokenizer.json + config)."""
        directory = pathlib.Path(directory)
        if directory.is_file() and directory.name in (SPM_FILE, HF_FILE):
            directory = directory.parent
        if not directory.is_dir():
            raise DataError("tokenizer directory does not exist", str(directory))
        config: dict = {}
        config_path = directory / CONFIG_FILE
        if config_path.exists():
            try:
                config = json.loads(config_path.read_text())
            except json.JSONDecodeError as e:
                raise DataError(f"invalid JSON ({e.msg})", str(config_path), e.lineno) from e
        if (directory / SPM_FILE).exists():
            path = directory / SPM_FILE
            try:
                backend = spm.SentencePieceProcessor(model_file=str(path))
            except (RuntimeError, OSError) as e:
                raise DataError("not a readable sentencepiece model (corrupt or truncated?): "
                                f"{str(e).strip()}", str(path)) from None
            config.setdefault("pad_id", backend.pad_id())
            config.setdefault("bos_id", backend.bos_id())
            config.setdefault("eos_id", backend.eos_id())
            config.setdefault("unk_id", backend.unk_id())
            return cls(backend, "sentencepiece", _with_roles(config, backend.piece_to_id), path)
        if (directory / HF_FILE).exists():
            return cls._load_hf(directory / HF_FILE, config)
        raise DataError(f"expected {SPM_FILE} or {HF_FILE} in the directory", str(directory))

    @classmethod
    def _load_hf(cls, path: pathlib.Path, config: dict) -> Tokenizer:
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

        for key, names in (("bos_id", ("<s>", "<|begin_of_text|>", "<bos>")),
                           ("eos_id", ("</s>", "<|end_of_text|>", "<eos>", "<|endoftext|>")),
                           ("pad_id", ("<pad>", "<|pad|>")), ("unk_id", ("<unk>",))):
            if key not in config:
                config[key] = next((piece_id(n) for n in names if piece_id(n) >= 0), -1)
        if config["pad_id"] < 0:
            config["pad_id"] = max(config["eos_id"], 0)
        return cls(backend, "tokenizers", _with_roles(config, piece_id), path)

    @staticmethod
    def files(path: str | pathlib.Path) -> list[pathlib.Path]:
        """The files `load(path)` reads (config and model), e.g. to hash them."""
        directory = pathlib.Path(path)
        if directory.is_file():
            directory = directory.parent
        return [directory / n for n in (CONFIG_FILE, SPM_FILE, HF_FILE)
                if (directory / n).is_file()]

    def save(self, directory: str | pathlib.Path) -> pathlib.Path:
        """Copy the model file and write tokenizer_config.json into `directory`."""
        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / self._model_path.name
        if target.resolve() != self._model_path.resolve():
            shutil.copyfile(self._model_path, target)
        config = dict(self._config, kind=self._kind, model_file=self._model_path.name,
                      vocab_size=self.vocab_size)
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
        return directory

    # ----- special ids ---------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of ids the model can produce."""
        if self._kind == "sentencepiece":
            return self._backend.get_piece_size()
        return self._backend.get_vocab_size(with_added_tokens=True)

    @property
    def bos_id(self) -> int:
        """Beginning-of-sequence id."""
        return int(self._config["bos_id"])

    @property
    def eos_id(self) -> int:
        """End-of-sequence id."""
        return int(self._config["eos_id"])

    @property
    def eos_ids(self) -> tuple[int, ...]:
        """Every id that ends generation (EOS; `min_new_tokens` suppresses all of them)."""
        return (self.eos_id,)

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
    def chat_template(self) -> dict:
        """The chat template description stored with the tokenizer."""
        return dict(self._config["chat_template"])

    @property
    def kind(self) -> str:
        """'sentencepiece' or 'tokenizers'."""
        return self._kind

    # ----- encode / decode -----------------------------------------------------------------
    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of `text`, optionally framed by BOS/EOS."""
        if self._kind == "sentencepiece":
            ids = list(self._backend.encode(text))
        else:
            ids = list(self._backend.encode(text, add_special_tokens=False).ids)
        if add_bos:
            ids.insert(0, self.bos_id)
        if add_eos:
            ids.append(self.eos_id)
        return ids

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
    tok = Tokenizer.load(out_dir)
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
