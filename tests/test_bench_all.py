"""scripts/bench_all.py: the summary's specs, its rendering, and a --quick run of every benchmark.

The --quick run also carries the checks of the per-script tests it replaced (checkpoint,
GRPO and PPO splits, the filters' peer), so CI runs each benchmark once.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from llm import benchmarks

ROOT = pathlib.Path(__file__).resolve().parents[1]
STORE = ROOT / "docs" / "benchmarks.json"


def bench_all(*flags: str, timeout: int = 60) -> subprocess.CompletedProcess:
    """Run scripts/bench_all.py with flags from the repository root."""
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_all.py"), *flags],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_the_committed_summary_is_rendered_from_the_committed_records():
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    summary = benchmarks.render_summary(benchmarks.load_records(STORE))
    assert text.startswith("# Benchmarks\n\n" + summary + "\n")
    assert set(benchmarks.load_records(STORE)) == set(benchmarks.BY_NAME)


def test_rewrite_replaces_only_between_the_markers():
    old = f"# B\n\n{benchmarks.START}\nold\n{benchmarks.END}\n## History\nkept\n"
    new = benchmarks.rewrite_doc(old, f"{benchmarks.START}\nnew\n{benchmarks.END}")
    assert new == f"# B\n\n{benchmarks.START}\nnew\n{benchmarks.END}\n## History\nkept\n"
    first = benchmarks.rewrite_doc("# B\n## History\n", "S")
    assert first == "# B\n\nS\n## History\n"


def test_from_results_rewrites_the_doc_and_merges_the_store(tmp_path):
    records = benchmarks.load_records(STORE)
    doc, store, saved = tmp_path / "b.md", tmp_path / "store.json", tmp_path / "saved.json"
    doc.write_text("# Benchmarks\n## History\nkept\n")
    store.write_text(json.dumps({"eval": records["eval"]}))
    saved.write_text(json.dumps({"train": records["train"]}))
    done = bench_all(f"--from_results={saved}", f"--doc={doc}", f"--store={store}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert set(json.loads(store.read_text())) == {"eval", "train"}
    text = doc.read_text()
    assert text.endswith("## History\nkept\n")
    merged = {"eval": records["eval"], "train": records["train"]}
    assert benchmarks.render_summary(merged) in text and "`dpo`: no record yet" in text


@pytest.mark.parametrize("flags, says", [
    (["--only=train,bogus"], "--only: unknown benchmark(s) bogus"),
    (["--from_results=/nonexistent.json"], "/nonexistent.json: no such results file")])
def test_bad_flags_are_refused_in_one_line(flags, says):
    done = bench_all(*flags)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: {says}")
    assert "Traceback" not in done.stderr


def test_a_results_file_with_an_unknown_key_names_the_file_and_key(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"trian": {}}))
    with pytest.raises(ValueError, match=f"{path}: key 'trian' is not a benchmark"):
        benchmarks.load_records(path)
    path.write_text('{"train": {"result": {}}')
    with pytest.raises(ValueError, match=f"{path}: not JSON"):
        benchmarks.load_records(path)


def test_a_last_line_that_is_not_json_names_the_benchmark():
    assert benchmarks.last_json("table\n{\"a\": 1}\n\n", "x") == {"a": 1}
    with pytest.raises(ValueError, match="train: the last stdout line is not a JSON object"):
        benchmarks.last_json("done\n", "train")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One `bench_all.py --quick` run: (process, records, scratch folder, doc, store)."""
    work = tmp_path_factory.mktemp("bench_all")
    doc, store = work / "benchmarks.md", work / "benchmarks.json"
    doc.write_text("# Benchmarks\n## History\n")
    done = bench_all("--quick", f"--results={work / 'results.json'}",
                     f"--workdir={work / 'scratch'}", f"--doc={doc}", f"--store={store}",
                     timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    records = json.loads((work / "results.json").read_text())
    return done, records, work / "scratch", doc, store


@pytest.mark.slow
def test_quick_runs_every_benchmark_to_its_json_line_and_writes_no_doc(quick):
    done, records, _, doc, store = quick
    assert list(records) == [spec.name for spec in benchmarks.SPECS]
    for spec in benchmarks.SPECS:
        record = records[spec.name]
        assert record["quick"] and record["command"] == benchmarks.command(spec, quick=True)
        assert "XLA fp32 matmul peak" in record["machine"]
        rows = spec.rows(record["result"])
        assert rows and all(what and ours for what, ours, _, _ in rows)
        assert all(f"| {what} [" in done.stdout for what, *_ in rows)
    assert doc.read_text() == "# Benchmarks\n## History\n" and not store.exists()


@pytest.mark.slow
def test_quick_checkpoint_times_both_variants_and_cleans_up(quick):
    _, records, scratch, _, _ = quick
    result = records["checkpoint"]["result"]
    for kind in ("save", "restore"):
        assert result["ours_s"][kind] > 0 and result["plain_s"][kind] > 0
        assert result["ratio"][kind] == pytest.approx(
            result["ours_s"][kind] / result["plain_s"][kind], abs=0.01)
    assert result["hash_gb_per_s"] > 0
    assert list((scratch / "checkpoint").iterdir()) == []  # every round's checkpoints removed


@pytest.mark.slow
def test_quick_grpo_split_and_overhead_check_add_up(quick):
    result = quick[1]["grpo"]["result"]
    assert result["ours_samples_per_s"] > 0
    assert result["ours_rollout_s"] + result["ours_update_s"] <= result["ours_step_s"] * 1.001
    assert result["overhead_ratio"] == pytest.approx(
        result["ours_step_s"] / (result["sampler_alone_s"] + result["train_step_alone_s"]),
        abs=2e-3)


@pytest.mark.slow
def test_quick_ppo_split_adds_up(quick):
    result = quick[1]["ppo"]["result"]
    parts = [result[f"ours_{k}_s"] for k in ("rollout", "reward", "reference", "value",
                                             "update", "other")]
    assert all(p >= 0 for p in parts) and result["ours_rollout_s"] > 0
    assert sum(parts) == pytest.approx(result["ours_step_s"], abs=1e-3)


@pytest.mark.slow
def test_quick_filters_time_both_sides_on_prose_both_keep(quick):
    result = quick[1]["filters"]["result"]
    assert result["num_docs"] == 60 and result["ours_filter_docs_per_s"] > 0
    assert result["datatrove_filter_docs_per_s"] > 0 and result["pipeline_web_docs_per_s"] > 0
    # the prose corpus is built to pass the web filters on both sides
    assert result["ours_kept_same_docs"] > 0.8 and result["datatrove_kept"] > 0.8
