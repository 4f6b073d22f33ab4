"""The TPU and SLURM launchers pass train.py's flags through intact (dry run)."""

import os
import pathlib
import shlex
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[1]
FLAGS = ["--config=configs/pretrain.py:model=tiny", "--config.workdir=gs://bucket/my run",
         "--config.data.path=a'b"]


def dry_run(script: str, *args: str, **env: str) -> list[str]:
    out = subprocess.run(["bash", str(ROOT / "scripts" / script), *args], check=True,
                         capture_output=True, text=True,
                         env={**os.environ, "DRY_RUN": "1", **env})
    return shlex.split(out.stdout)


def test_tpu_launcher_runs_train_on_every_worker_with_flags_intact():
    argv = dry_run("launch_tpu.sh", "my-tpu", "us-east5-a", *FLAGS, REPO_DIR="/srv/llm")
    assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu"]
    assert "--worker=all" in argv and "--zone=us-east5-a" in argv
    remote = next(a for a in argv if a.startswith("--command="))[len("--command="):]
    # The remote shell sees: cd /srv/llm && python scripts/train.py FLAGS...
    words = shlex.split(remote)
    assert words[:3] == ["cd", "/srv/llm", "&&"]
    assert words[3:5] == ["python", "scripts/train.py"] and words[5:] == FLAGS


def test_slurm_launcher_sruns_one_process_per_node():
    argv = dry_run("launch_slurm.sh", *FLAGS, REPO_DIR="/srv/llm")
    assert argv[0] == "srun" and "--ntasks-per-node=1" in argv
    assert argv[argv.index("python"):] == ["python", "/srv/llm/scripts/train.py", *FLAGS]


def test_launchers_without_arguments_print_usage():
    for script, args in (("launch_tpu.sh", ["only-name"]), ("launch_slurm.sh", [])):
        result = subprocess.run(["bash", str(ROOT / "scripts" / script), *args],
                                capture_output=True, text=True)
        assert result.returncode == 2 and "usage:" in result.stderr
