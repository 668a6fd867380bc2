"""Lines in, lines out, without losing anything a user has.

- Input is checked before any output is touched: a missing file is an error before the output exists,
  and an output that is the input file itself is refused.
- Output files (and directories) are written under a temporary name beside the target and renamed into place only when
  everything went well, so a failed or interrupted run leaves the old file (or none), never half a file.
- Every line is decoded as UTF-8 on its own; a line that is not UTF-8 is an error naming its line.
- Lines from a pipe or a terminal come in batches of what has arrived: a program that writes one line
  and waits for its translation gets it at once. Files and redirected files come in large batches.
- Progress bars go to standard error, and only when it is a terminal.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from tqdm import tqdm

from zhen.errors import ZhenError

FILE_BATCH = 256  # lines per batch from a file: large enough for length-sorted batching
READ_SIZE = 1 << 16


class InputError(ZhenError, ValueError):
    """Input that cannot be read as UTF-8 lines, or an output that would destroy the input."""


def decode_line(raw: bytes, number: int, where: str) -> str:
    """One line's bytes → text without its line end; not UTF-8 is an error naming the line."""
    try:
        return raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as error:
        raise InputError(f"{where}, line {number}: not valid UTF-8 ({error.reason}); "
                         "convert it first, e.g. iconv -f GBK -t UTF-8") from None


def check_input(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {path}")


def check_not_same(source: Path, output: Path) -> None:
    """Refuse to write over the input: opening the output would empty the file being read."""
    if output.exists() and source.exists() and os.path.samefile(source, output):
        raise InputError(f"the output {output} is the input file; choose another output file")


def count_lines(path: Path) -> int:
    """Lines in a file (a last line without a line end counts), read in blocks: for progress totals."""
    lines, last = 0, b"\n"
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    return lines + (last != b"\n")


def file_batches(handle: IO[bytes], where: str, size: int = FILE_BATCH) -> Iterator[list[str]]:
    """Decoded lines of a binary file, `size` at a time."""
    batch: list[str] = []
    for number, raw in enumerate(handle, 1):
        batch.append(decode_line(raw, number, where))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def is_interactive(fd: int) -> bool:
    """A pipe, a terminal or a socket: lines arrive over time, and someone may wait for each answer."""
    mode = os.fstat(fd).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISSOCK(mode)


def arrived_batches(fd: int, where: str, size: int = FILE_BATCH) -> Iterator[list[str]]:
    """Decoded lines of a pipe or terminal, as they arrive: waits for one whole line, then takes every whole
    line already there too (up to `size`). Reads the descriptor itself, so no line can sit unseen in a
    buffer while `select` says nothing is ready."""
    pending, number, ended = b"", 0, False
    while True:
        lines: list[bytes] = []
        while not ended and (not lines or (len(lines) < size and select.select([fd], [], [], 0)[0])):
            chunk = os.read(fd, READ_SIZE)
            ended = not chunk
            *complete, pending = (pending + chunk).split(b"\n")
            lines += complete
        if ended and pending:  # a last line without a line end
            lines, pending = [*lines, pending], b""
        if not lines:
            return
        for start in range(0, len(lines), size):
            yield [decode_line(raw, number + i, where) for i, raw in enumerate(lines[start : start + size], 1)]
            number += len(lines[start : start + size])


def stdin_batches() -> tuple[Iterator[list[str]], bool]:
    """Standard input's lines in batches, and whether they come as they arrive (a pipe or terminal)."""
    fd = sys.stdin.fileno()
    if is_interactive(fd):
        return arrived_batches(fd, "standard input"), True
    return file_batches(os.fdopen(os.dup(fd), "rb"), "standard input"), False


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[IO[str]]:
    """A text file that appears at `path` whole when the block ends without an error, and not at all
    otherwise (an existing file there is left untouched until then)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("w", encoding="utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(path: Path, error: type[Exception] = FileExistsError) -> Iterator[Path]:
    """A new directory, filled under a temporary name beside `path` and renamed to `path` only when the block
    ends without an error (the temporary is removed otherwise). An existing `path` is refused with `error`."""
    path = Path(path)
    if path.exists():
        raise error(f"{path} already exists; refusing to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` in one rename: readers see the old or the new file, never half."""
    with atomic_output(path) as handle:
        handle.write(text)


def progress(total: int | None, desc: str, unit: str = "sent") -> tqdm:
    """A progress bar on standard error (rate and time left), silent when standard error is not a terminal."""
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not sys.stderr.isatty(),
                dynamic_ncols=True, mininterval=0.5)
