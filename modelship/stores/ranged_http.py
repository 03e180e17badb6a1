"""Streamed, resumable ranged GETs of one stored object into a `VerifyingWriter`.

The object is split into one contiguous range per stream. Each stream writes its bytes
at their offsets as they arrive, in blocks, so receiving, writing and hashing overlap
instead of waiting for whole chunks to be buffered (what the Azure SDK's downloader
does, which measured 0.8x a plain curl even before any hashing). A stream whose
connection breaks resumes from the first byte it does not have, with backoff, a
bounded number of times (a loop of our own: neither the SDK's retry policy nor urllib3's
`Retry` can resume a body part-way); every stream after the first asks `If-Match` the first
response's ETag, so a model replaced mid-download can never be stitched together from
two versions. This module must never put the URL (which may carry a SAS token) or a
header into an exception message.
"""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass

import requests
import urllib3

BLOCK = 256 * 1024
# Below this a range is not worth its own connection.
MIN_RANGE = 8 * 1024 * 1024
ATTEMPTS_PER_STREAM = 4
BACKOFF_SECONDS = 0.5  # then 1 s, 2 s
TIMEOUT = (5, 60)  # connect, read (seconds)

_NETWORK_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    ConnectionError,
    TimeoutError,
)
_RETRYABLE_STATUSES = {408, 429, 500, 502, 503, 504}


class DownloadError(Exception):
    """Why a download stopped; never carries the URL or a header."""


class StatusError(DownloadError):
    def __init__(self, status: int, error_code: str):
        super().__init__(f"HTTP {status} {error_code}".strip())
        self.status = status
        self.error_code = error_code


class ConnectionLost(DownloadError):
    pass


class Unreachable(DownloadError):
    """No attempt got as far as a response: nothing listens there, or the name is wrong."""


class ObjectChanged(DownloadError):
    pass


class _BusyServer(DownloadError):
    """A status worth retrying (throttled, or a server error); counted like a broken link."""


@dataclass(frozen=True)
class Range:
    start: int
    end: int  # exclusive


def split(size: int, streams: int) -> list[Range]:
    """Contiguous ranges covering [0, size), at most `streams`, none under MIN_RANGE."""
    count = max(1, min(streams, size // MIN_RANGE))
    bounds = [size * index // count for index in range(count + 1)]
    return [Range(start, end) for start, end in zip(bounds, bounds[1:])]


def download(session: requests.Session, url: str, headers: dict, sink, *,
             streams: int = 1, attempts: int = ATTEMPTS_PER_STREAM,
             backoff: float = BACKOFF_SECONDS) -> str:
    """Fetch the object at `url` into `sink` (sink.size bytes); return its ETag."""
    job = _Job(session, url, headers, sink, attempts, backoff)
    if sink.size == 0:
        job.fetch_empty()
        return job.etag
    first, *others = split(sink.size, streams)
    # The other ranges start once the first response has named the ETag they must match.
    helpers = [threading.Thread(target=job.run_range, args=(part, True), daemon=True)
               for part in others]
    for helper in helpers:
        helper.start()
    job.run_range(first, False)
    for helper in helpers:
        helper.join()
    if job.failure is not None:
        raise job.failure
    return job.etag


class _Job:
    def __init__(self, session, url, headers, sink, attempts, backoff):
        self.session, self.url, self.headers, self.sink = session, url, headers, sink
        self.attempts, self.backoff = attempts, backoff
        self.etag = ""
        self.failure: BaseException | None = None
        self._stop = threading.Event()
        self._etag_known = threading.Event()
        self._answered = False  # some request got a response: the server is there
        self._failure_lock = threading.Lock()

    def run_range(self, part: Range, after_first: bool) -> None:
        """Receive `part` into the sink, resuming after broken connections; never raises."""
        try:
            if after_first:
                while not self._etag_known.wait(0.05):
                    if self._stop.is_set():
                        return
            self._receive(part)
        except BaseException as error:  # handed to the caller of download()
            with self._failure_lock:
                if self.failure is None:
                    self.failure = error
            self._stop.set()  # the other streams stop at their next block

    def _receive(self, part: Range) -> None:
        position, failures, response = part.start, 0, None
        while position < part.end and not self._stop.is_set():
            try:
                response = self._open(position, part.end)
                while position < part.end and not self._stop.is_set():
                    block = response.raw.read(min(BLOCK, part.end - position))
                    if not block:
                        raise ConnectionLost("the response ended early")
                    # Outside the handler's reach: a full disk is not retried.
                    self.sink.write_at(position, block)
                    position += len(block)
            except (ConnectionLost, _BusyServer, *_NETWORK_ERRORS) as error:
                failures += 1
                if failures >= self.attempts:
                    raise self._gave_up(error, failures, position - part.start, part) from None
                time.sleep(self.backoff * 2 ** (failures - 1))
            finally:
                if response is not None:
                    response.close()
                    response = None

    def _gave_up(self, error, failures: int, received: int, part: Range) -> DownloadError:
        if isinstance(error, _BusyServer):
            return StatusError(*error.args)
        if not self._answered:
            return Unreachable(f"no connection could be made in {failures} attempts")
        return ConnectionLost(
            f"the connection broke {failures} times; got {received} of "
            f"{part.end - part.start} bytes of one range"
        )

    def _open(self, start: int, end: int):
        """The response for bytes [start, end) of the object."""
        headers = {**self.headers, "Range": f"bytes={start}-{end - 1}",
                   "Accept-Encoding": "identity"}
        if self.etag:
            headers["If-Match"] = f'"{self.etag}"'
        response = self.session.get(self.url, headers=headers, stream=True, timeout=TIMEOUT)
        self._answered = True
        status = response.status_code
        whole_object = status == 200 and start == 0 and end == self.sink.size
        if status != 206 and not whole_object:
            error_code = response.headers.get("x-ms-error-code", "")
            response.close()
            if status == 412:
                raise ObjectChanged("the stored model changed while it was being downloaded")
            if status in _RETRYABLE_STATUSES:
                raise _BusyServer(status, error_code)
            raise StatusError(status, error_code)
        if not self._etag_known.is_set():
            self.etag = response.headers.get("ETag", "").strip('"')
            self._etag_known.set()
        # The stored bytes as they are: no transparent decompression.
        response.raw.decode_content = False
        return response

    def fetch_empty(self) -> None:
        try:
            response = self.session.get(self.url, headers=self.headers, timeout=TIMEOUT)
        except _NETWORK_ERRORS:
            raise Unreachable("no connection could be made") from None
        if response.status_code != 200:
            raise StatusError(response.status_code, response.headers.get("x-ms-error-code", ""))
        if response.content:
            raise ObjectChanged("the stored model is not empty, but its metadata says it is")
        self.etag = response.headers.get("ETag", "").strip('"')
