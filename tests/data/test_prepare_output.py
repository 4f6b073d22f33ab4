"""prepare()'s output folder: never lose what the user had; resume or replace unfinished work."""

import json
import shutil

import pytest
from test_prepare import _config, _doc

from llm.data import DataError
from llm.data import prepare as prepare_lib
from llm.data.prepare import is_prepared, prepare


def _train_docs(out):
    return json.loads((out / "meta.json").read_text())["splits"]["train"]["text"]["documents"]


def test_overwrite_checks_settings_first_and_keeps_user_files(raw, tmp_path):
    out = prepare(_config(raw, tmp_path / "out"))
    (out / "NOTES.txt").write_text("mine")
    with pytest.raises(DataError, match="decontaminate.action"):
        prepare(_config(raw, out, overwrite=True, **{"decontaminate.action": "dorp"}))
    assert is_prepared(out) and (out / "NOTES.txt").read_text() == "mine"
    prepare(_config(raw, out, overwrite=True, **{"dedup.threshold": 0.7}))
    assert is_prepared(out) and (out / "NOTES.txt").read_text() == "mine"


def test_output_dir_that_is_a_file(raw, tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("mine")
    with pytest.raises(DataError, match="data.output_dir.*not a directory"):
        prepare(_config(raw, target))
    assert target.read_text() == "mine"


def test_output_dir_inside_an_input_dir_is_refused(raw):
    with pytest.raises(DataError, match="data.output_dir.*inside the input directory"):
        prepare(_config(raw, raw / "prepared"))
    assert not (raw / "prepared").exists()


@pytest.mark.parametrize("before,after", [(2, 1), (2, 3)])
def test_changed_shard_count_after_interruption_redoes_sharded_stages(
        raw, tmp_path, monkeypatch, before, after):
    # Workers run inline so the test is fast; the shard count still follows num_workers.
    inline = prepare_lib.Executor
    monkeypatch.setattr(prepare_lib, "Executor", lambda kind, n: inline(kind, 0))

    def interrupted(*args):
        raise KeyboardInterrupt

    out = tmp_path / "out"
    with monkeypatch.context() as m:
        m.setattr(prepare_lib.stages, "find_duplicates", interrupted)
        with pytest.raises(KeyboardInterrupt):
            prepare(_config(raw, out, num_workers=before))
    assert (out / "_work" / "scan.json").exists() and not is_prepared(out)
    prepare(_config(raw, out, num_workers=after))
    assert _train_docs(out) == 6


def test_edited_eval_file_is_not_reported_prepared(raw, tmp_path):
    evals = tmp_path / "eval.jsonl"
    evals.write_text(json.dumps({"text": "unrelated words"}) + "\n")
    out = prepare(_config(raw, tmp_path / "out", **{"decontaminate.eval_files": str(evals)}))
    assert _train_docs(out) == 6
    evals.write_text(json.dumps({"text": _doc(3)}) + "\n")
    with pytest.raises(DataError, match="overwrite"):
        prepare(_config(raw, out, **{"decontaminate.eval_files": str(evals)}))
    prepare(_config(raw, out, overwrite=True, **{"decontaminate.eval_files": str(evals)}))
    assert _train_docs(out) == 5


def test_edited_tokenizer_path_is_not_reported_prepared(raw, tmp_path):
    tok = tmp_path / "tok"
    shutil.copytree(prepare(_config(raw, tmp_path / "first")) / "tokenizer", tok)
    out = prepare(_config(raw, tmp_path / "out", **{"tokenizer.path": str(tok)}))
    config = json.loads((tok / "llm_tokenizer.json").read_text())
    config["chat_template"] = {"format": "role_tokens", "separator": "\n\n"}
    (tok / "llm_tokenizer.json").write_text(json.dumps(config))
    with pytest.raises(DataError, match="overwrite"):
        prepare(_config(raw, out, **{"tokenizer.path": str(tok)}))


def test_folder_of_a_failed_run_is_replaced_by_the_fixed_rerun(raw, tmp_path):
    bad = raw / "rows.jsonl"
    bad.write_text(json.dumps({"text": _doc(7)}) + "\n{broken\n")
    out = tmp_path / "out"
    with pytest.raises(DataError, match="rows.jsonl:2"):
        prepare(_config(raw, out))
    bad.write_text(json.dumps({"text": _doc(7)}) + "\n")
    prepare(_config(raw, out))
    assert _train_docs(out) == 7
