"""Keep freed memory in the process, for the next tensor of the same size (glibc's malloc, Linux).

PyTorch's CPU tensors come from malloc. glibc serves every block of 128 KiB or more (a threshold that
rises to at most 32 MiB as such blocks are freed) with a fresh `mmap` and unmaps it on `free`, and it
returns the top of the heap to the kernel once more than twice that threshold is free there. A
training step or a beam-search step allocates the same large tensors again and again (logits, their
gradient, the attention cache re-indexed by the beams' parents), so each of them starts on fresh pages,
and the first write to every 4 KiB page is a page fault the kernel answers with a zero-filled page —
slow on any machine and slower in a virtual machine.

`keep_freed_memory` tells malloc to serve every block from the heap (`M_MMAP_MAX` = 0) and never to
trim it (`M_TRIM_THRESHOLD` = 2³¹ − 1): freed blocks are reused in place, with no page faults after the
first few steps. The price: the process keeps its peak memory, and the heap may grow to a few times the
largest tensor before its freed blocks line up for reuse. Measured on this project's 2-core AMD EPYC,
runs before and after (bench/results/train_cpu_epyc*.md, bench/results/translate.md): the small model's
bf16 training step 11,911 → 14,672 tokens/s; base beam 5 batch 32 translation, fp32 19.8 → 29.0 and int8
37.3 → 47.0 sentences/s.

`zhen.device.configure` calls it for the CPU (training and translation); set ZHEN_KEEP_FREED_MEMORY=0
in the environment to keep glibc's defaults. Elsewhere (macOS, Windows, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform

ENVIRONMENT_SWITCH = "ZHEN_KEEP_FREED_MEMORY"  # "0": leave malloc as it is
M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's <malloc.h>
M_MMAP_MAX = -4
NEVER_TRIM = 2**31 - 1  # the largest value mallopt takes (an int)


@functools.cache  # platform.libc_ver reads the interpreter's binary: once per process is enough
def glibc() -> ctypes.CDLL | None:
    """The C library of this process, if it is glibc (which has `mallopt`)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def keep_freed_memory(libc: ctypes.CDLL | None = None) -> bool:
    """Make malloc reuse freed blocks instead of unmapping them; True if it is now so. Idempotent.
    `libc`: the C library to configure (default: this process's glibc, if any)."""
    if os.environ.get(ENVIRONMENT_SWITCH, "1") == "0":
        return False
    libc = libc if libc is not None else glibc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))
