"""The accelerator figures in one prepared run, for a machine with a GPU (or TPU):

    python scripts/bench_gpu.py                 # `1b` bfloat16, within --budget_s (600 s)
    python scripts/bench_gpu.py --quick         # `tiny` float32: checks it runs (CPU too)

Three parts, each `scripts/bench_*.py` as its own subprocess with no peer (the peers are
CPU torch builds): the training step's MFU (`bench_train.py`), batch-1 decode's fraction of
memory bandwidth (`bench_sample.py`) and a GRPO iteration's time split (`bench_rl.py`: rollout
/ reward / update). Each part gets the budget left, split evenly over the parts still to run;
a part that runs past its share is stopped and reported as such. Prints one line per part and,
last, one JSON object with every part's record.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import time

from absl import app, flags

ROOT = pathlib.Path(__file__).resolve().parents[1]

_SIZE = flags.DEFINE_string("size", "1b", "configs/models.py size")
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "compute dtype")
_BUDGET = flags.DEFINE_integer("budget_s", 600, "seconds for all three parts", lower_bound=30)
_QUICK = flags.DEFINE_bool("quick", False, "tiny float32, few steps: check that it runs")


def parts(size: str, dtype: str, quick: bool) -> dict[str, list[str]]:
    """Each part's script and flags."""
    if quick:
        return {
            "train": ["bench_train.py", "--model=tiny", "--batch=2", "--seq=32", "--steps=1",
                      "--rounds=1", "--dtype=float32"],
            "decode": ["bench_sample.py", "--size=tiny", "--peer=none", "--batch_sizes=1",
                       "--new_tokens=8", "--prompt_len=4", "--repeats=1", "--rounds=1"],
            "grpo": ["bench_rl.py", "--size=tiny", "--prompts=2", "--generations=2",
                     "--new_tokens=4", "--prompt_len=4", "--steps=1", "--peer=none"]}
    return {
        "train": ["bench_train.py", f"--model={size}", "--batch=8", "--seq=2048", "--steps=10",
                  "--rounds=1", f"--dtype={dtype}"],
        "decode": ["bench_sample.py", f"--size={size}", "--peer=none", "--batch_sizes=1",
                   "--new_tokens=256", "--prompt_len=64", "--repeats=3", "--rounds=1",
                   f"--dtype={dtype}"],
        "grpo": ["bench_rl.py", f"--size={size}", "--prompts=16", "--generations=8",
                 "--new_tokens=256", "--prompt_len=128", "--steps=2", "--peer=none",
                 f"--dtype={dtype}"]}


def run_part(command: list[str], timeout_s: float) -> dict:
    """The part's JSON line, or {'error': ...} when it failed or ran out of time."""
    try:
        done = subprocess.run([sys.executable, str(ROOT / "scripts" / command[0]),
                               *command[1:]], capture_output=True, text=True,
                              timeout=timeout_s, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"stopped after its {timeout_s:.0f} s share of the budget"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"error": f"exit {done.returncode}: {(done.stderr or done.stdout)[-400:]}"}
    return json.loads(lines[-1])


def headline(name: str, record: dict) -> str:
    """The figure that matters of one part."""
    if "error" in record:
        return f"{name}: {record['error']}"
    if name == "train":
        return (f"train: {record['ours_tokens_per_s']:,.0f} tokens/s, MFU "
                f"{record['ours_mfu']:.1%} of {record['peak_flops'] / 1e12:.2f} TFLOP/s "
                f"({record['peak_source']})")
    if name == "decode":
        return (f"decode batch 1: {record['ours_tok_s_b1']:,.1f} tokens/s, "
                f"{record['b1_weight_bandwidth_fraction']:.0%} of "
                f"{record['memory_bandwidth_gb_s']:.0f} GB/s measured")
    return (f"grpo: {record['ours_step_s']:.2f} s/step (rollout {record['ours_rollout_s']:.2f}, "
            f"reward {record['ours_reward_s']:.3f}, update {record['ours_update_s']:.2f}), "
            f"{record['ours_samples_per_s']:.1f} samples/s")


def main(argv: list[str]) -> None:
    """Run the three parts within the budget; print each headline and one JSON line."""
    del argv
    import jax

    start = time.perf_counter()
    todo = parts(_SIZE.value, _DTYPE.value, _QUICK.value)
    records = {}
    for i, (name, command) in enumerate(todo.items()):
        left = _BUDGET.value - (time.perf_counter() - start)
        records[name] = run_part(command, max(left / (len(todo) - i), 1.0))
        print(headline(name, records[name]), flush=True)
    print(json.dumps({"bench": "gpu", "backend": jax.default_backend(),
                      "devices": [d.device_kind for d in jax.devices()],
                      "size": "tiny" if _QUICK.value else _SIZE.value,
                      "seconds": round(time.perf_counter() - start, 1), **records}))


if __name__ == "__main__":
    app.run(main)
