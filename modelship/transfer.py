"""The receiving end of a model download: a verifying file sink and progress reporting.

Downloads arrive as one or more streams, each writing its bytes at their offsets.
`VerifyingWriter` puts them into the temporary file and feeds the sha256 in file order
while the download runs, so verifying costs no second pass in the normal case. Bytes
that arrive in order are hashed from memory by the thread that received them, outside
the lock, so other streams keep writing meanwhile; ranges that arrive early are hashed
from the page cache once the gap before them closes. It must never claim a digest for
bytes it did not see in order: rewrites and gaps make it hash the file again from disk.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
from typing import Callable, TextIO

READ_BACK_CHUNK = 8 * 1024 * 1024

ProgressFactory = Callable[[str, int], "Progress"]


class VerifyingWriter:
    """A seekable, write-only file object over `fd` that hashes what it receives.

    `write_at` is safe from several threads at once; `seek` + `write` (for SDKs that
    write through a file object) is for one writer at a time, as with any file.
    """

    def __init__(self, fd: int, size: int, progress: "Progress | None" = None):
        self._fd = fd
        self._size = size
        self._progress = progress
        self._lock = threading.Lock()
        self._position = 0
        self._digest = hashlib.sha256()
        self._hashed_up_to = 0
        self._hashing = False  # one thread at a time feeds the digest, without the lock
        self._waiting: dict[int, int] = {}  # written but not yet hashed: start -> end
        self._bytes_written = 0

    @property
    def size(self) -> int:
        return self._size

    # The parts of the io.RawIOBase protocol the SDKs use.
    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_CUR:
            offset += self._position
        elif whence == os.SEEK_END:
            offset += self._size
        self._position = offset
        return offset

    def flush(self) -> None:
        pass

    def write(self, data) -> int:
        length = self.write_at(self._position, data)
        self._position += length
        return length

    def write_at(self, offset: int, data) -> int:
        """Write `data` at `offset` of the file and account for it in the digest."""
        view = memoryview(data).cast("B")
        length = len(view)
        written = 0
        while written < length:
            written += os.pwrite(self._fd, view[written:], offset + written)
        with self._lock:
            self._bytes_written += length
            hash_now = not self._hashing and offset == self._hashed_up_to
            if hash_now:
                self._hashing = True
            else:
                self._waiting[offset] = max(self._waiting.get(offset, 0), offset + length)
        if hash_now:
            self._digest.update(view)
            self._hashed_through(offset + length)
        if self._progress is not None:
            self._progress.advance(length)
        return length

    def _hashed_through(self, end: int) -> None:
        # Called by the thread holding the hashing role: take in the ranges that were
        # waiting for this gap to close, then give the role up.
        while True:
            with self._lock:
                self._hashed_up_to = end
                waiting_end = self._waiting.pop(end, None)
                if waiting_end is None:
                    self._hashing = False
                    return
            self._hash_from_file(end, waiting_end)
            end = waiting_end

    def _hash_from_file(self, start: int, end: int, digest=None) -> None:
        digest = digest or self._digest
        offset = start
        while offset < end:
            block = os.pread(self._fd, min(READ_BACK_CHUNK, end - offset), offset)
            if not block:
                break
            digest.update(block)
            offset += len(block)

    @property
    def bytes_written(self) -> int:
        return self._bytes_written

    def hexdigest(self) -> str:
        """The sha256 of the file as it now is on disk."""
        if self._hashed_up_to == self._size and self._bytes_written == self._size:
            return self._digest.hexdigest()
        # A retried range was written twice, or a range is missing: trust only the disk.
        digest = hashlib.sha256()
        self._hash_from_file(0, os.fstat(self._fd).st_size, digest)
        return digest.hexdigest()


class Progress:
    """Download progress: a redrawn bar on a terminal, a few plain lines in CI logs."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None,
                 interactive: bool | None = None):
        self.label = label
        self.total = max(total, 1)
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self._done = 0
        self._next_line_percent = 25
        self._last_draw = 0.0
        self._started = time.monotonic()
        self._lock = threading.Lock()

    def advance(self, amount: int) -> None:
        with self._lock:
            self._done = min(self._done + amount, self.total)
            percent = self._done * 100 // self.total
            if self.interactive:
                now = time.monotonic()
                if now - self._last_draw >= 0.1 or self._done == self.total:
                    self._last_draw = now
                    self._draw(percent)
            elif percent >= self._next_line_percent:
                self._next_line_percent = (percent // 25 + 1) * 25
                self.stream.write(f"{self.label}: {percent}% ({self._megabytes()})\n")
                self.stream.flush()

    def _megabytes(self) -> str:
        elapsed = max(time.monotonic() - self._started, 1e-6)
        return (f"{self._done / 1e6:.0f} of {self.total / 1e6:.0f} MB, "
                f"{self._done / 1e6 / elapsed:.0f} MB/s")

    def _draw(self, percent: int) -> None:
        filled = percent * 30 // 100
        bar = "#" * filled + "-" * (30 - filled)
        self.stream.write(f"\r{self.label} [{bar}] {percent:3d}% {self._megabytes()}  ")
        self.stream.flush()

    def close(self) -> None:
        if self.interactive:
            self.stream.write("\n")
            self.stream.flush()


def console_progress(label: str, total: int) -> Progress:
    return Progress(label, total)
