"""Training keeps the memory it frees: a second step's buffers reuse the first step's pages
instead of faulting fresh ones in (device.keep_freed_memory)."""

import subprocess
import sys

import pytest

PROBE = """
import resource, sys, torch
from char_rnn.device import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def step():
    buffers = [torch.empty(16 * 2**20 // 4).fill_(1.0) for _ in range(4)]  # 4 x 16 MiB
    del buffers
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults_of_a_repeated_step(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_a_repeated_step_reuses_pages_once_freed_memory_is_kept():
    fresh = page_faults_of_a_repeated_step("default")
    kept = page_faults_of_a_repeated_step("keep")
    assert fresh > 10_000  # 64 MiB in 4 KiB pages, faulted in again
    # Most of the step's pages are reused (a small allocation between the buffers can keep
    # one of them from fitting where it was).
    assert kept < fresh / 2
