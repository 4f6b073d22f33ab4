"""`retain_freed_memory`: a freed large block is reused without page faults."""

import platform
import subprocess
import sys

import pytest

# Allocate, fill and free 256 MB twice with plain malloc (numpy would ask for huge pages);
# print the minor page faults of the second fill.
_PROBE = """
import ctypes, resource, sys
from llm.host_memory import retain_freed_memory
applied = retain_freed_memory() if sys.argv[1] == "retain" else False
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def touch():
    block = libc.malloc(2**28)
    ctypes.memset(block, 1, 2**28)
    libc.free(block)
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True,
                         text=True, check=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc malloc only")
def test_freed_block_is_reused_without_page_faults():
    applied, retained = _faults("retain")
    _, default = _faults("default")
    assert applied == "True"
    assert default > 30_000  # 65,536 pages of 4 KiB: glibc unmapped and refaulted them
    assert retained < 1_000

