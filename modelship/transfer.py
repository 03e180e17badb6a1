"""The receiving end of a model download: a verifying file sink that reports progress.

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
import threading
from typing import Callable, Protocol

READ_BACK_CHUNK = 8 * 1024 * 1024

ProgressFactory = Callable[[str, int], "Progress"]


class Progress(Protocol):
    def advance(self, amount: int) -> None: ...

    def close(self) -> None: ...


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


def console_progress(label: str, total: int):
    """A progress display for a download, as the console for this run draws it."""
    from .console import current

    return current().progress(label, total)
