"""Every benchmark script in one table of specs, and the summary table they fill.

Each `Spec` names a `scripts/bench_*.py` run (full and `--quick` arguments) and a row
extractor that turns the JSON object the script prints last into summary rows. A *record*
is one run's result with where it came from: `{"result", "date", "machine", "command",
"quick", "source"}`. `docs/benchmarks.json` holds the latest record of every benchmark;
`render_summary` turns records into the Markdown table between the summary markers at the
top of `docs/benchmarks.md`.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from collections.abc import Callable, Mapping
from typing import Any

START, END = "<!-- summary:start -->", "<!-- summary:end -->"

Row = tuple[str, str, str, str]  # what, ours, the peer in the same run, ratio


@dataclasses.dataclass(frozen=True)
class Spec:
    """One benchmark: its script, full and quick arguments, and its summary rows."""

    name: str
    script: str
    full: tuple[str, ...]
    quick: tuple[str, ...]
    rows: Callable[[Mapping[str, Any]], list[Row]]


def _n(x: float, digits: int = 1) -> str:
    """A number with thousands separators and `digits` decimals."""
    return f"{x:,.{digits}f}"


def _x(ratio: float | None) -> str:
    return "" if ratio is None else f"{ratio:.2f}×"


def train_rows(r: Mapping[str, Any]) -> list[Row]:
    """Train step tokens/s and MFU against the faster torch peer."""
    peers = [k.removesuffix("_tokens_per_s") for k in r
             if k.endswith("_tokens_per_s") and k != "ours_tokens_per_s"]
    ours = f"{_n(r['ours_tokens_per_s'], 0)} tok/s ({r['ours_mfu']:.1%} MFU)"
    if not peers:
        return [(f"train step, `{r['model']}` {r['dtype']}", ours, "", "")]
    best = max(peers, key=lambda p: r[f"{p}_tokens_per_s"])
    peer = f"{_n(r[f'{best}_tokens_per_s'], 0)} tok/s (transformers {best.removeprefix('hf_')})"
    return [(f"train step, `{r['model']}` {r['dtype']}, batch {r['batch']}×{r['seq']}", ours,
             peer, _x(r.get("ratio_vs_best_peer")))]


def data_rows(r: Mapping[str, Any]) -> list[Row]:
    """Near-dedup docs/s against datasketch; tokenizer and pipeline rates (no peer)."""
    rows = [(f"near-dedup, {r['num_docs']:,} docs",
             f"{_n(r['ours_docs_per_s'], 0)} docs/s (recall {r['ours_recall']:.3f})",
             f"{_n(r['datasketch_docs_per_s'], 0)} docs/s datasketch "
             f"(recall {r['datasketch_recall']:.3f})", _x(r["speedup_vs_datasketch"])),
            ("tokenisation (sentencepiece, 4k BPE)", f"{r['tokenize_mb_per_s']:.1f} MB/s", "", "")]
    if "pipeline_docs_per_s" in r:
        rows.append((f"whole `prepare()`, {r['num_docs']:,} docs",
                     f"{_n(r['pipeline_docs_per_s'], 0)} docs/s", "", ""))
    return rows


def filters_rows(r: Mapping[str, Any]) -> list[Row]:
    """`:web` quality filters against datatrove's; the `:web` pipeline rate."""
    return [("quality filters `:web`", f"{_n(r['ours_filter_docs_per_s'])} docs/s",
             f"{_n(r['datatrove_filter_docs_per_s'])} docs/s datatrove",
             _x(r["filter_speedup"])),
            (f"whole `prepare()` `:web`, {r['num_docs']:,} docs",
             f"{_n(r['pipeline_web_docs_per_s'])} docs/s", "", "")]


def hf_rows(r: Mapping[str, Any]) -> list[Row]:
    """HF import seconds and transient memory against transformers' from_pretrained."""
    ours, peer = r["ours_bfloat16"], r.get("transformers_bfloat16")
    what = f"HF import, `{r['model']}` bfloat16"
    if peer is None:
        return [(what, f"{ours['seconds']:.2f} s", "", "")]
    return [(f"{what} (time; lower is better)", f"{ours['seconds']:.2f} s",
             f"{peer['seconds']:.2f} s transformers", _x(r["time_ratio_ours_over_peer"])),
            (f"{what}, transient memory / largest tensor (lower is better)",
             f"{ours['transient_over_largest']:.2f}",
             f"{peer['transient_over_largest']:.2f} transformers",
             _x(ours["transient_over_largest"] / peer["transient_over_largest"]))]


def finetune_rows(r: Mapping[str, Any]) -> list[Row]:
    """PEFT step speed over full fine-tuning; QLoRA bytes per quantised weight (no peer)."""
    speed = r["speedup_vs_full"]
    return [(f"PEFT step, `{r['model']}`: step speed over full fine-tuning",
             ", ".join(f"{m} {speed[m]:.2f}×" for m in ("lora", "qlora", "prefix")
                       if m in speed), "", ""),
            ("QLoRA NF4 bytes per quantised weight", f"{r['bytes_per_quantised_param_nf4']:.3f}",
             "", "")]


def sample_rows(r: Mapping[str, Any]) -> list[Row]:
    """Decode tokens/s per batch size against HF generate; batch-1 bandwidth fraction."""
    rows = []
    for batch in sorted(int(k.removeprefix("ours_tok_s_b")) for k in r
                        if k.startswith("ours_tok_s_b")):
        ours = f"{_n(r[f'ours_tok_s_b{batch}'])} tok/s"
        if batch == 1 and "b1_weight_bandwidth_fraction" in r:
            ours += f" ({r['b1_weight_bandwidth_fraction']:.0%} of memory bandwidth)"
        peer = (f"{_n(r[f'peer_tok_s_b{batch}'])} tok/s HF generate"
                if f"peer_tok_s_b{batch}" in r else "")
        rows.append((f"decode, `{r['size']}` {r.get('dtype', 'float32')}, batch {batch}, "
                     f"{r['new_tokens']} new tokens", ours, peer, _x(r.get(f"ratio_b{batch}"))))
    return rows


def dpo_rows(r: Mapping[str, Any]) -> list[Row]:
    """DPO step time over an SFT step on the same tokens (lower is better); tokens/s against
    TRL's DPOTrainer, beside our plain step against transformers', when the peer ran."""
    s = r["step_s"]
    what = f"DPO step over SFT step, `{r['model']}` {r['pairs']} pairs × {r['seq']}"
    rows = [(f"{what} (lower is better)", f"{s['dpo']:.3f} s", f"{s['sft']:.3f} s SFT",
             _x(r["dpo_over_sft"])),
            (f"{what}, reference log-probs given (lower is better)",
             f"{s['dpo_given_reference']:.3f} s", f"{s['sft']:.3f} s SFT",
             _x(r["dpo_given_reference_over_sft"]))]
    if "trl_tokens_per_s" in r:
        rows.append((f"DPO tokens/s, `{r['model']}` {r['pairs']} pairs × {r['seq']}",
                     f"{_n(r['ours_tokens_per_s'])} tokens/s",
                     f"{_n(r['trl_tokens_per_s'])} tokens/s TRL DPOTrainer",
                     _x(r["ratio_vs_trl"])))
        rows.append(("plain train step, same tokens, beside it", f"{s['sft']:.3f} s",
                     f"{r['peer_step_s']['hf_plain']:.3f} s transformers",
                     _x(r["plain_step_ratio_vs_hf"])))
    mixed = r.get("mixed")
    if mixed:
        what = (f"DPO non-padding tokens/s, mixed-length pairs, `{r['model']}` {r['pairs']} "
                f"pairs, {mixed['batches']} batches")
        rows.append((f"{what}: length buckets vs padded to {r['seq']}",
                     f"{_n(mixed['ours_tokens_per_s'])} tokens/s",
                     f"{_n(mixed['ours_padded_tokens_per_s'])} tokens/s padded",
                     _x(mixed["bucket_speedup"])))
        if "trl_tokens_per_s" in mixed:
            rows.append((f"{what}: against TRL (pads to each batch's longest)",
                         f"{_n(mixed['ours_tokens_per_s'])} tokens/s",
                         f"{_n(mixed['trl_tokens_per_s'])} tokens/s TRL DPOTrainer",
                         _x(mixed["ratio_vs_trl"])))
    return rows


def rl_rows(r: Mapping[str, Any]) -> list[Row]:
    """GRPO samples/s against TRL; the step over its parts alone."""
    what = f"GRPO step, `{r['size']}` {r['prompts']}×G{r['generations']}, {r['new_tokens']} new"
    peer = f"{_n(r['trl_samples_per_s'], 2)} samples/s TRL" if "trl_samples_per_s" in r else ""
    return [(what, f"{_n(r['ours_samples_per_s'], 2)} samples/s", peer,
             _x(r.get("ratio_vs_trl"))),
            ("GRPO step / (sampler alone + train step alone) (lower is better)",
             f"{r['overhead_ratio']:.3f}", "", "")]


def ppo_rows(r: Mapping[str, Any]) -> list[Row]:
    """PPO completions/s and the share of the step each part takes (no peer)."""
    parts = ("rollout", "reward", "reference", "value", "update")
    step = r["ours_step_s"]
    split = ", ".join(f"{p} {r[f'ours_{p}_s'] / step:.0%}" for p in parts)
    return [(f"PPO step, `{r['size']}` {r['completions']} completions × {r['new_tokens']}",
             f"{_n(r['ours_samples_per_s'], 2)} completions/s ({split})", "", "")]


def eval_rows(r: Mapping[str, Any]) -> list[Row]:
    """Multiple-choice log-likelihood requests/s against lm-eval's HF backend."""
    peer = f"{_n(r['peer_req_per_s'])} req/s lm-eval HF"
    what = f"eval log-likelihood, `{r['model']}` {r['requests']} requests"
    return [(f"{what}, warm", f"{_n(r['ours_req_per_s'])} req/s", peer, _x(r["ratio"])),
            (f"{what}, compile included", f"{_n(r['ours_cold_req_per_s'])} req/s", peer,
             _x(r["ratio_cold"]))]


def checkpoint_rows(r: Mapping[str, Any]) -> list[Row]:
    """Save and restore wall seconds with the checksum manifest over plain orbax."""
    return [(f"checkpoint {kind} with checksums, `{r['model']}` {r['state_mb']} MB "
             "(lower is better)", f"{r['ours_s'][kind]:.3f} s",
             f"{r['plain_s'][kind]:.3f} s plain orbax", _x(r["ratio"][kind]))
            for kind in ("save", "restore")]


_TINY_RL = ("--size=tiny", "--prompts=2", "--generations=2", "--new_tokens=4",
            "--prompt_len=4", "--steps=1")

# {scratch}: a per-benchmark scratch folder (removed after, unless --workdir names it).
# Quick runs skip the torch peers that tests/test_bench_scripts.py already runs (train's
# torch.compile, sample's HF generate): CI time is the budget.
SPECS: tuple[Spec, ...] = (
    Spec("train", "bench_train.py",
         ("--model=small", "--batch=16", "--seq=256", "--steps=5", "--peer=hf"),
         ("--model=tiny", "--batch=2", "--seq=16", "--steps=1", "--rounds=1", "--peer=none"),
         train_rows),
    Spec("data", "bench_data.py", ("--num_docs=50000",),
         ("--num_docs=200", "--words=60", "--nopipeline"), data_rows),
    Spec("filters", "bench_filters.py", ("--num_docs=5000", "--peer_docs=1000"),
         ("--num_docs=60", "--peer_docs=20", "--workers=0"), filters_rows),
    Spec("hf", "bench_hf.py", (),
         ("--model=tiny", "--dtypes=bfloat16", "--dir={scratch}"), hf_rows),
    Spec("finetune", "bench_finetune.py", ("--model=small", "--steps=5"),
         ("--model=tiny", "--batch=2", "--seq=16", "--steps=1"), finetune_rows),
    Spec("sample", "bench_sample.py", ("--peer=hf",),
         ("--size=tiny", "--peer=none", "--batch_sizes=1", "--new_tokens=4", "--prompt_len=4",
          "--repeats=1", "--rounds=1"), sample_rows),
    Spec("dpo", "bench_dpo.py",
         ("--model=small", "--pairs=8", "--seq=256", "--steps=5", "--peer=trl",
          "--mixed_batches=8"),
         ("--model=tiny", "--pairs=2", "--seq=16", "--steps=1", "--peer=trl",
          "--mixed_batches=2"), dpo_rows),
    Spec("grpo", "bench_rl.py",
         ("--size=small", "--prompts=8", "--generations=8", "--new_tokens=64",
          "--prompt_len=16", "--steps=2", "--peer=trl"), (*_TINY_RL, "--peer=none"), rl_rows),
    Spec("ppo", "bench_rl.py", ("--algo=ppo", "--size=small", "--steps=2"),
         ("--algo=ppo", *_TINY_RL), ppo_rows),
    Spec("eval", "bench_eval.py", (), ("--model=tiny", "--questions=4", "--batch_size=4"),
         eval_rows),
    Spec("checkpoint", "bench_checkpoint.py", ("--model=small", "--rounds=9", "--dir={scratch}"),
         ("--model=tiny", "--rounds=2", "--dir={scratch}"), checkpoint_rows),
)
BY_NAME = {spec.name: spec for spec in SPECS}


def select(only: list[str]) -> list[Spec]:
    """The specs named in `only` (all when empty), in the table's order."""
    unknown = sorted(set(only) - set(BY_NAME))
    if unknown:
        raise ValueError(f"--only: unknown benchmark(s) {', '.join(unknown)}; "
                         f"expected some of {', '.join(BY_NAME)}")
    return [spec for spec in SPECS if not only or spec.name in only]


def command(spec: Spec, quick: bool) -> str:
    """The shell command a record of this spec reports (scratch directories elided)."""
    args = [a for a in (spec.quick if quick else spec.full) if "{scratch}" not in a]
    return " ".join(["python", f"scripts/{spec.script}", *args])


def last_json(stdout: str, name: str) -> dict[str, Any]:
    """The JSON object on the last non-empty line of a benchmark's stdout."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    try:
        result = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError) as error:
        last = lines[-1][:200] if lines else ""
        raise ValueError(f"{name}: the last stdout line is not a JSON object "
                         f"({type(error).__name__}): {last!r}") from None
    if not isinstance(result, dict):
        raise ValueError(f"{name}: the last stdout line is JSON but not an object")
    return result


def load_records(path: pathlib.Path) -> dict[str, dict[str, Any]]:
    """Records by benchmark name from a results file; errors name the file and the key."""
    try:
        records = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such results file") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not JSON (line {error.lineno}: {error.msg})") from None
    if not isinstance(records, dict):
        raise ValueError(f"{path}: expected an object of records by benchmark name")
    for name, record in records.items():
        if name not in BY_NAME:
            raise ValueError(f"{path}: key {name!r} is not a benchmark "
                             f"(expected some of {', '.join(BY_NAME)})")
        missing = {"result", "date", "machine", "command", "source"} - set(record)
        if missing:
            raise ValueError(f"{path}: record {name!r} lacks {', '.join(sorted(missing))}")
    return records


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_summary(records: Mapping[str, Mapping[str, Any]]) -> str:
    """The summary section (markers included): one row per figure, sources numbered below."""
    lines = [START, "## Summary", "",
             "The latest figure of every benchmark, each against the peer timed in the same "
             "run. Ratio is ours over the peer (rates) or ours over the peer's time where the "
             "row says lower is better. Regenerate with `python scripts/bench_all.py` "
             "(`--only=NAME,...`, `--quick`, `--results=FILE`, `--from_results=FILE`); the "
             "records behind it are in `docs/benchmarks.json`, the dated history below.", "",
             "| what | ours | peer (same run) | ratio | machine | date | command |",
             "|---|---|---|---|---|---|---|"]
    sources = []
    for spec in SPECS:
        record = records.get(spec.name)
        if record is None:
            lines.append(f"| `{spec.name}`: no record yet | | | | | | |")
            continue
        sources.append(f"{len(sources) + 1}. `{spec.name}`: {record['source']}")
        mark = f" [{len(sources)}]"
        for what, ours, peer, ratio in spec.rows(record["result"]):
            cells = [what + mark, ours, peer, ratio, record["machine"], record["date"],
                     f"`{record['command']}`"]
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    lines += ["", "Where each figure comes from:", "", *sources, END]
    return "\n".join(lines)


def rewrite_doc(text: str, summary: str) -> str:
    """`text` with the summary between the markers replaced (inserted after the title)."""
    if START in text and END in text:
        pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.DOTALL)
        return pattern.sub(lambda _: summary, text, count=1)
    title, _, rest = text.partition("\n")
    return f"{title}\n\n{summary}\n{rest}"
