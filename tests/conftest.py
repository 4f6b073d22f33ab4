"""Every test process sees 8 CPU devices so each sharding path runs in CI.

Compiled programs go to a persistent cache shared by the test workers and the training
subprocesses the resume tests start: identical steps compile once per CI run.
"""

import os
import pathlib
import tempfile

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      str(pathlib.Path(tempfile.gettempdir()) / "llm-test-jax-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


@pytest.fixture(scope="session")
def sft_arithmetic(tmp_path_factory):
    """The demo's tiny SFT arithmetic model (tests/arithmetic_start.py), built once a run.

    Under pytest-xdist the workers share one build: the first takes a lock and builds, the
    others wait and reuse it (the demo's stages rerun as no-ops on finished work).
    """
    import fcntl

    import arithmetic_start

    if "PYTEST_XDIST_WORKER" not in os.environ:
        return arithmetic_start.build(tmp_path_factory.mktemp("sft_arithmetic"))
    shared = tmp_path_factory.getbasetemp().parent  # one folder for every worker of a run
    with open(shared / "sft_arithmetic.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return arithmetic_start.build(shared / "sft_arithmetic")


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory):
    """SmolLM2-135M-Instruct as a Hugging Face directory (llm/demo/smollm2/model.py), built
    once a run and shared by the xdist workers."""
    from llm.demo.smollm2 import model

    return model.build(tmp_path_factory.getbasetemp().parent / "smollm2-hf")
