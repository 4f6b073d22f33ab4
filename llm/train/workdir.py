"""A workdir belongs to one run: creating it, locking it for the run's life, comparing a
rerun's config with the saved one, writing the run's config atomically, keeping
`workdir/tokenizer` the data's, and the exit code of a run that stopped before its end."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import socket
import time
from typing import Any

import ml_collections

from llm import config as config_lib
from llm.data import prepare

# The exit status of a run stopped before total_steps (SIGTERM, SIGINT, a scheduler's time
# limit) with a checkpoint saved: rerunning the same command resumes it. EX_TEMPFAIL from
# sysexits.h, which SLURM requeue scripts and `llm.sweep` read as "run me again".
EXIT_UNFINISHED = 75


class TrainingError(RuntimeError):
    """The run cannot continue (non-finite loss, changed config on resume, ...)."""


def check_workdir(config: ml_collections.ConfigDict) -> pathlib.Path:
    """The absolute workdir, not yet created; refused when it is a file or another tool's
    folder (a Hugging Face model whose config.json a run would overwrite, a prepared
    dataset that would fill with run files)."""
    if not config.workdir:
        raise config_lib.ConfigError("--config.workdir: required (where checkpoints go)")
    workdir = pathlib.Path(config.workdir).absolute()
    if workdir.exists() and not workdir.is_dir():
        raise config_lib.ConfigError(f"--config.workdir={config.workdir}: is a file; expected "
                                     "a directory (or a path to create)")
    if prepare.is_prepared(workdir):
        raise config_lib.ConfigError(
            f"--config.workdir={config.workdir}: is a prepared dataset (it has meta.json and "
            "tokenizer/); use it as --config.data.path and give the run its own workdir")
    saved = workdir / "config.json"
    if saved.exists() and not isinstance(read_run_config(saved), dict):
        raise config_lib.ConfigError(
            f"--config.workdir={config.workdir}: holds a config.json that is not a training "
            "run's (a model folder?); a run would overwrite it. Use a new workdir.")
    return workdir


def make_workdir(config: ml_collections.ConfigDict) -> pathlib.Path:
    """`check_workdir`, then create it."""
    workdir = check_workdir(config)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise config_lib.ConfigError(f"--config.workdir={config.workdir}: cannot create it "
                                     f"({error.strerror})") from None
    return workdir


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid."""
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(holder: dict) -> bool:
    """Whether the lock holder's process still runs (only answerable on its own host)."""
    pid = int(holder.get("pid", -1))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    except (OverflowError, ValueError):
        return False
    started = _start_time(pid)
    return holder.get("start") is None or started is None or started == holder["start"]


class WorkdirLock:
    """`workdir/run-<process>.lock`, held for a run's life by each of its processes.

    Created exclusively (O_EXCL), so of two runs started together one wins. A lock whose
    process is gone from this host (a run killed with -9) is taken over with a note; a
    lock held by another host is refused unless `take_over_lock=True`, since from here
    nothing can tell whether that run still lives.
    """

    def __init__(self, workdir: pathlib.Path, process_index: int, take_over: bool = False):
        self.path = workdir / f"run-{process_index}.lock"
        self.take_over = take_over
        self.me = {"host": socket.gethostname(), "pid": os.getpid(),
                   "start": _start_time(os.getpid()), "since": time.strftime(
                       "%Y-%m-%d %H:%M:%S %Z")}
        self.held = False

    def acquire(self) -> None:
        """Take the lock or raise TrainingError naming its holder."""
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._clear_stale(self._holder())
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.me, f)
            self.held = True
            return
        raise TrainingError(f"{self.path}: could not take the workdir lock (another run is "
                            "starting on this workdir at the same moment)")

    def _holder(self) -> dict[str, Any]:
        for _ in range(20):  # a lock being written this instant reads empty briefly
            try:
                holder = json.loads(self.path.read_text())
                if isinstance(holder, dict):
                    return holder
            except FileNotFoundError:
                return {}
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        return {"torn": True}

    def _clear_stale(self, holder: dict[str, Any]) -> None:
        """Remove a lock whose holder is gone (or taken over on request), else refuse."""
        if not holder:
            return  # released meanwhile
        who = f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}"
        same_host = holder.get("host") == self.me["host"]
        if holder.get("torn"):
            print(f"{self.path}: unreadable lock file (left by a killed run); taking it over",
                  flush=True)
        elif same_host and not _alive(holder):
            print(f"{self.path}: the run that held this workdir ({who}) is gone; taking over",
                  flush=True)
        elif not same_host and self.take_over:
            print(f"{self.path}: taking over the lock of {who} (take_over_lock=True)",
                  flush=True)
        elif same_host:
            raise TrainingError(f"{self.path.parent}: another run is training in this "
                                f"workdir ({who}); wait for it to finish or stop it first")
        else:
            raise TrainingError(
                f"{self.path.parent}: locked by a run on another host ({who}). If that run "
                "is dead, rerun with --config.take_over_lock=True")
        self.path.unlink(missing_ok=True)

    def release(self) -> None:
        """Remove the lock if it is still ours."""
        if self.held and self._holder().get("pid") == self.me["pid"]:
            self.path.unlink(missing_ok=True)
        self.held = False


def set_aside_logs(workdir: pathlib.Path) -> None:
    """Before a run starts from step 0, move an earlier attempt's metrics.jsonl and tb/ to
    `<name>.before-<time>` so nothing logged is overwritten."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in ("metrics.jsonl", "tb"):
        path = workdir / name
        if path.exists() and (path.is_dir() or path.stat().st_size > 0):
            aside = workdir / f"{name}.before-{stamp}"
            path.rename(aside)
            print(f"kept the earlier {name} aside as {aside.name} (this run starts at step 0)",
                  flush=True)


def exit_status(result: dict) -> int:
    """The process exit status for a `train()` result: 0, or EXIT_UNFINISHED."""
    return EXIT_UNFINISHED if result.get("unfinished") else 0


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
