"""zhen.allocator: freed tensors are reused without page faults once malloc keeps freed memory.

The setting is process-wide, so each case runs in a fresh Python process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from zhen import allocator

PROBE = """
import json, resource, sys
import torch
from zhen import allocator
kept = allocator.keep_freed_memory() if sys.argv[1] == "keep" else False
def faults_of_one_tensor():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(16 << 20).fill_(1.0)  # 64 MiB written, then freed
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults = [faults_of_one_tensor() for _ in range(16)]  # the heap grows for the first few, then is reused
print(json.dumps({"kept": kept, "faults": min(faults[-4:])}))
"""


def probe(mode: str, **env: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                          env={**os.environ, **env}, timeout=120)
    return json.loads(done.stdout)


@pytest.mark.skipif(allocator.glibc() is None, reason="glibc only")
def test_freed_tensors_are_reused_without_page_faults():
    default, kept = probe("default"), probe("keep")
    pages = (64 << 20) // 4096
    # above 32 MiB glibc always maps and unmaps: every page faults again
    assert not default["kept"] and default["faults"] > pages // 2
    assert kept["kept"] and kept["faults"] < pages // 50


@pytest.mark.skipif(allocator.glibc() is None, reason="glibc only")
def test_environment_switch_leaves_malloc_alone():
    result = probe("keep", **{allocator.ENVIRONMENT_SWITCH: "0"})
    assert not result["kept"] and result["faults"] > (64 << 20) // 4096 // 2


class FakeLibc:
    def __init__(self, answer: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self.answer = answer

    def mallopt(self, parameter: int, value: int) -> int:
        self.calls.append((parameter, value))
        return self.answer


def test_sets_mmap_max_and_trim_threshold(monkeypatch):
    monkeypatch.delenv(allocator.ENVIRONMENT_SWITCH, raising=False)
    libc = FakeLibc()
    assert allocator.keep_freed_memory(libc)
    assert libc.calls == [(allocator.M_MMAP_MAX, 0), (allocator.M_TRIM_THRESHOLD, allocator.NEVER_TRIM)]


def test_refused_setting_is_reported(monkeypatch):
    monkeypatch.delenv(allocator.ENVIRONMENT_SWITCH, raising=False)
    assert not allocator.keep_freed_memory(FakeLibc(answer=0))
    assert not allocator.keep_freed_memory(object())  # a C library without mallopt
