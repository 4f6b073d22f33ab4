"""A workdir belongs to one run: creating it, comparing a rerun's config with the saved one,
writing the run's config atomically, and keeping `workdir/tokenizer` the data's."""

from __future__ import annotations

import json
import pathlib
import shutil

import ml_collections

from llm import config as config_lib


class TrainingError(RuntimeError):
    """The run cannot continue (non-finite loss, changed config on resume, ...)."""


def make_workdir(config: ml_collections.ConfigDict) -> pathlib.Path:
    """The absolute workdir, created; refused when it is a file or another tool's folder
    (e.g. a Hugging Face model whose config.json a run would overwrite)."""
    if not config.workdir:
        raise config_lib.ConfigError("--config.workdir: required (where checkpoints go)")
    workdir = pathlib.Path(config.workdir).absolute()
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise config_lib.ConfigError(f"--config.workdir={config.workdir}: cannot create it "
                                     f"({error.strerror})") from None
    saved = workdir / "config.json"
    if saved.exists() and not isinstance(read_run_config(saved), dict):
        raise config_lib.ConfigError(
            f"--config.workdir={config.workdir}: holds a config.json that is not a training "
            "run's (a model folder?); a run would overwrite it. Use a new workdir.")
    return workdir


def read_run_config(path: pathlib.Path) -> dict | None:
    """A saved run config (it has a 'task'), or None for any other JSON or text."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) and "task" in saved else None


def check_same_run(workdir: pathlib.Path, run_config: dict, checkpointer) -> None:
    """Refuse a workdir that holds a run with a different config (checkpoints or not).

    The workdir's config.json is the record; when it is gone, the newest checkpoint's own
    copy is (a different model would otherwise fail to restore and be set aside as corrupt).
    """
    steps = checkpointer.steps()
    saved_file = workdir / "config.json"
    if not saved_file.exists() and steps:
        saved_file = checkpointer.directory / str(steps[-1]) / "config" / "metadata"
    saved = read_run_config(saved_file) if saved_file.exists() else None
    if saved is None:
        return
    changed = config_lib.changed_keys(saved, run_config)
    if changed:
        raise TrainingError(
            f"{workdir} holds a run with a different config; changed keys: "
            f"{', '.join(changed)}. Use a new workdir, or revert these keys.")


def write_run_config(workdir: pathlib.Path, run_config: dict) -> None:
    """Write config.json atomically: a torn one would make the workdir look foreign."""
    tmp = workdir / "config.json.tmp"
    tmp.write_text(json.dumps(run_config, indent=2, sort_keys=True))
    tmp.replace(workdir / "config.json")


def copy_tokenizer(tokenizer_dir, workdir: pathlib.Path, has_checkpoints: bool) -> None:
    """Keep `workdir/tokenizer` equal to the data's tokenizer: copy it, replace a stale one
    (e.g. left by a failed earlier attempt), or refuse when checkpoints were trained on a
    different one."""
    if tokenizer_dir is None:
        return
    target = workdir / "tokenizer"
    if pathlib.Path(tokenizer_dir).resolve() == target.resolve():
        return
    if target.exists() and not same_files(pathlib.Path(tokenizer_dir), target):
        if has_checkpoints:
            raise TrainingError(f"{target}: differs from the data's tokenizer {tokenizer_dir}, "
                                "and this workdir's checkpoints were trained with it. Use a "
                                "new workdir, or the data prepared with that tokenizer.")
        shutil.rmtree(target)
    if not target.exists():
        shutil.copytree(tokenizer_dir, target)


def same_files(a: pathlib.Path, b: pathlib.Path) -> bool:
    """True when two folders hold the same file names with the same bytes."""
    names = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    if names != sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()):
        return False
    return all((a / n).read_bytes() == (b / n).read_bytes() for n in names)
