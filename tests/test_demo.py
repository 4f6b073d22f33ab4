"""The README's first command: every demo stage runs end to end (shortened)."""

import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_runs_every_stage(tmp_path):
    env = dict(os.environ, XLA_FLAGS="")
    proc = subprocess.run(
        [sys.executable, "scripts/demo.py", f"--workdir={tmp_path}", "--steps=20",
         "--sft_steps=20", "--files=150"], capture_output=True, text=True, env=env,
        timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = proc.stdout[proc.stdout.index("| stage |"):]
    for stage in ("data", "pretrain", "sample", "sft", "label"):
        assert f"| {stage} |" in table
    assert "answer accuracy" in table and (tmp_path / "curves.png").exists()
