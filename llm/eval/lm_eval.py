"""lm-evaluation-harness adapter: any lm-eval task on a project checkpoint.

    python -m llm.eval.lm_eval --model llm --model_args init_from=DIR \\
        --tasks my_task --include_path tasks/ [any other lm-eval flag]

lm-eval's CLI finds only the models it ships, so this entry point registers `LLMLM` under
the name `llm` and then hands the command line, unchanged, to lm-eval's own CLI. It runs
offline: the Hugging Face hub and datasets are set to offline mode first, and a task whose
data would have to be downloaded is one error line naming it, not retries.

model_args: `init_from` (a workdir, `checkpoints/<step>` or `hf:DIR`), `batch_size`,
`max_length` (default: the model's max_seq_len), `add_bos_token` (unset: BOS where the model's
tokenizer adds it to text, i.e. always for the project's tokenizers and as its tokenizer files
say for an imported one; true or false: always or never, as for lm-eval's HF backend), `mesh`
(e.g. `data:4/tensor:2`; default every device on `data`).
Requests are scored as lm-eval's Hugging Face backend scores them (the same context /
continuation split, BOS handling, left truncation and rolling windows), through the
project's shared-context scorer.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from llm.eval import loglik

try:
    from lm_eval.api.model import TemplateLM
except ImportError as missing:  # an optional extra
    raise ImportError("llm.eval.lm_eval needs lm-evaluation-harness: "
                      "pip install 'lm-eval==0.4.*'") from missing

OFFLINE_ENV = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in ("true", "false", "1", "0"):
        raise ValueError(f"model_args: expected true or false, got {value!r}")
    return text in ("true", "1")


def encode_text(tokenizer: Any, text: str, add_bos_token: bool | None,
                add_special_tokens: bool | None = None) -> list[int]:
    """Ids of `text` with BOS where lm-eval's HF backend puts it. Its tokenizer adds BOS when
    `add_bos_token` says so, unset: when the model's tokenizer adds it to text (transformers'
    `add_bos_token`, which e.g. SmolLM2's does not); and only under `add_special_tokens`
    (unset: true, unless the text already starts with the BOS piece)."""
    bos = tokenizer.bos_id
    adds = tokenizer.add_bos_token if add_bos_token is None else add_bos_token
    special = True if add_special_tokens is None else add_special_tokens
    if add_special_tokens is None and bos >= 0 and text.startswith(tokenizer.id_to_piece(bos)):
        special = False
    ids = tokenizer.encode(text)
    return [bos, *ids] if special and adds and bos >= 0 else ids


def _mesh_shape(spec: str) -> dict[str, int]:
    """'data:4/tensor:2' → {'data': 4, 'tensor': 2} (lm-eval splits model_args at commas)."""
    shape = {}
    for part in filter(None, spec.split("/")):
        name, _, size = part.partition(":")
        if name not in ("data", "fsdp", "tensor") or not size.lstrip("-").isdigit():
            raise ValueError(f"model_args mesh={spec!r}: expected axis:size pairs joined by "
                             "'/' over data, fsdp, tensor (e.g. data:4/tensor:2)")
        shape[name] = int(size)
    return shape


class LLMLM(TemplateLM):
    """lm-eval's `LM` on a project model: loglikelihood, loglikelihood_rolling and
    generate_until."""

    def __init__(self, init_from: str = "", batch_size: int | str = 32,
                 max_length: int | None = None, add_bos_token: Any = None, mesh: str = "",
                 max_batch_size: Any = None, device: Any = None, **unknown: Any):
        super().__init__()
        if unknown:
            raise ValueError(f"model_args: unknown {', '.join(sorted(unknown))}; expected "
                             "init_from, batch_size, max_length, add_bos_token, mesh")
        if not init_from:
            raise ValueError("model_args: init_from=DIR is required (a workdir, "
                             "checkpoints/<step> or hf:DIR)")
        if str(batch_size).startswith("auto"):
            batch_size = 32  # a fixed batch: padded shapes compile once
        from llm.eval.runner import EvalModel, make_mesh

        self.add_bos_token = None if add_bos_token is None else _flag(add_bos_token)
        mesh_obj = make_mesh(_mesh_shape(mesh) if mesh else {"data": -1})
        self.model = EvalModel.load(init_from, mesh_obj, batch_size=int(batch_size),
                                    max_len=int(max_length) if max_length else None,
                                    add_bos=self.add_bos_token is not False)
        self.tokenizer = self.model.tokenizer

    # ----- tokens ---------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        """End of text: the tokenizer's EOS."""
        return self.tokenizer.eos_id

    @property
    def prefix_token_id(self) -> int:
        """What an empty context is scored after: BOS (else EOS), as lm-eval's HF backend."""
        return self.tokenizer.bos_id if self.tokenizer.bos_id >= 0 else self.eot_token_id

    @property
    def max_length(self) -> int:
        """Tokens one scored window may hold."""
        return self.model.scorer.max_len

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any
                   ) -> list[int]:
        """Ids of `string`, BOS as lm-eval's HF backend adds it (`encode_text`)."""
        return encode_text(self.tokenizer, string, self.add_bos_token, add_special_tokens)

    def tok_decode(self, ids: list[int]) -> str:
        """Text of ids."""
        return self.tokenizer.decode(ids)

    # ----- requests -------------------------------------------------------------------------
    def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False, **kwargs: Any
                              ) -> list[tuple[float, bool]]:
        pairs = [(list(context), list(continuation)) for _, context, continuation in requests]
        results = self.model.scorer.loglikelihood(pairs, None if disable_tqdm else
                                                  self._progress("loglikelihood", len(pairs)))
        for (key, _, _), result in zip(requests, results, strict=True):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, result)
        return results

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False
                              ) -> list[float]:
        """Log-likelihood of whole texts over disjoint windows of `max_length` tokens."""
        windows, owner = [], []
        for r, request in enumerate(requests):
            tokens = self.tok_encode(request.args[0])
            for pair in loglik.rolling_windows(tokens, self.prefix_token_id, self.max_length):
                windows.append(pair)
                owner.append(r)
        scored = self.model.scorer.loglikelihood(
            windows, None if disable_tqdm else self._progress("rolling", len(windows)))
        totals = [0.0] * len(requests)
        for r, (ll, _) in zip(owner, scored, strict=True):
            totals[r] += ll
        for request, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, when gen_kwargs say so) completions cut at `until`."""
        from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs

        from llm.sampling.sampler import Sampler

        model = self.model
        sampler = Sampler(model.graphdef, model.params, self.tokenizer, mesh=model.mesh,
                          add_bos=False)  # the ids below carry their BOS already
        out = []
        progress = None if disable_tqdm else self._progress("generate_until", len(requests))
        for request in requests:  # one by one: each may have its own stops and lengths
            context, gen_kwargs = request.args
            kwargs = normalize_gen_kwargs(dict(gen_kwargs), 256)
            until = handle_stop_sequences(kwargs.pop("until", None),
                                          eos=self.tok_decode([self.eot_token_id]) or None)
            max_new = int(kwargs.pop("max_gen_toks"))
            if max_new >= self.max_length:
                raise ValueError(f"generate_until: max_gen_toks={max_new} leaves no room for "
                                 f"a context in max_length={self.max_length}")
            ids = self.tok_encode(context)[-(self.max_length - max_new):]
            temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") \
                else 0.0
            done = sampler.complete([ids], stop=[s for s in until if s],
                                    temperature=temperature, top_p=1.0,
                                    max_new_tokens=max_new, seed=0)[0]
            out.append(done.text)
            self.cache_hook.add_partial("generate_until", request.args, done.text)
            if progress is not None:
                progress(1)
        return out

    def _progress(self, label: str, total: int):
        from llm.eval.runner import Progress

        return Progress(label, total)


def register() -> type[LLMLM]:
    """Register `LLMLM` with lm-eval as model `llm` (after lm-eval's own lazy models, which
    it loads only while its registry is empty)."""
    import lm_eval.models  # noqa: F401 - fills the registry with lm-eval's own entries
    from lm_eval.api.registry import model_registry, register_model

    if "llm" not in model_registry:
        register_model("llm")(LLMLM)
    return LLMLM


def set_offline() -> None:
    """Hugging Face hub and datasets offline (unless the user set these variables)."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


def is_download_error(error: BaseException) -> bool:
    """Whether an exception (or its cause) is a refused or failed download."""
    seen = 0
    while error is not None and seen < 8:
        name = type(error).__name__
        text = str(error)
        if name in ("OfflineModeIsEnabled", "ConnectionError", "DatasetNotFoundError",
                    "LocalEntryNotFoundError", "HFValidationError") or \
                "offline" in text.lower() or "Couldn't reach" in text:
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


def main(argv: list[str] | None = None) -> None:
    """Register the adapter, then run lm-eval's CLI on the command line as given."""
    set_offline()
    register()
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    try:
        cli_evaluate()
    except Exception as error:  # lm-eval raises whatever its datasets call raises
        if not is_download_error(error):
            raise
        tasks = next((sys.argv[i + 1] for i, a in enumerate(sys.argv[:-1])
                      if a == "--tasks"), "?")
        print(f"error: --tasks {tasks}: the task's data must be downloaded from the Hugging "
              "Face hub, and this machine is offline (HF_DATASETS_OFFLINE=1); point the task's "
              "YAML at local files (dataset_path: json, dataset_kwargs.data_files) and pass "
              f"--include_path ({type(error).__name__}: {str(error)[:200]})", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
