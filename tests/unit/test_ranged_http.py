"""The streamed ranged downloader against a real HTTP server on 127.0.0.1."""

import hashlib
import http.server
import os
import socket
import threading

import pytest
import requests

from modelship import transfer
from modelship.stores import ranged_http

PAYLOAD = os.urandom(3 * 1024 * 1024 + 123)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep pytest's output clean
        pass

    def do_GET(self):
        server = self.server
        with server.lock:
            server.requests.append(dict(self.headers))
            status = server.statuses.pop(0) if server.statuses else None
            cut = server.cuts.pop(0) if server.cuts else None
        if status is not None:
            self.send_response(status)
            self.send_header("x-ms-error-code", "BlobNotFound" if status == 404 else "Busy")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if_match = self.headers.get("If-Match")
        if if_match is not None and if_match != f'"{server.etag}"':
            self.send_response(412)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start, end = 0, len(server.payload) - 1
        ranged = self.headers.get("Range")
        if ranged:
            first, last = ranged.removeprefix("bytes=").split("-")
            start, end = int(first), int(last)
        body = server.payload[start:end + 1]
        self.send_response(206 if ranged else 200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", f'"{server.etag}"')
        self.end_headers()
        if cut is not None:  # promise the whole range, send part, hang up
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.payload, httpd.etag = PAYLOAD, "0x8D1"
    httpd.lock, httpd.requests, httpd.statuses, httpd.cuts = threading.Lock(), [], [], []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/models/m/1/model.onnx"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def sink(tmp_path):
    fd = os.open(tmp_path / "model.partial", os.O_RDWR | os.O_CREAT)
    yield transfer.VerifyingWriter(fd, len(PAYLOAD))
    os.close(fd)


def fetch(server, sink, **options):
    options.setdefault("backoff", 0.01)
    with requests.Session() as session:
        return ranged_http.download(session, server.url, {"x-ms-version": "test"}, sink,
                                    **options)


def test_one_stream_gets_every_byte_and_the_etag(server, sink):
    etag = fetch(server, sink)

    assert etag == "0x8D1"
    assert sink.hexdigest() == hashlib.sha256(PAYLOAD).hexdigest()
    assert len(server.requests) == 1
    assert server.requests[0]["x-ms-version"] == "test"


def test_several_streams_split_the_object_and_hold_it_to_one_etag(server, sink, monkeypatch):
    monkeypatch.setattr(ranged_http, "MIN_RANGE", 1024 * 1024)

    fetch(server, sink, streams=3)

    assert sink.hexdigest() == hashlib.sha256(PAYLOAD).hexdigest()
    ranges = sorted(request["Range"] for request in server.requests)
    assert len(ranges) == 3
    if_matches = [request.get("If-Match") for request in server.requests]
    assert if_matches.count('"0x8D1"') == 2 and if_matches.count(None) == 1


def test_a_cut_connection_resumes_from_the_first_missing_byte(server, sink):
    server.cuts = [1_000_000, 500_000]

    fetch(server, sink)

    assert sink.hexdigest() == hashlib.sha256(PAYLOAD).hexdigest()
    assert [request["Range"] for request in server.requests] == [
        f"bytes=0-{len(PAYLOAD) - 1}",
        f"bytes=1000000-{len(PAYLOAD) - 1}",
        f"bytes=1500000-{len(PAYLOAD) - 1}",
    ]
    # The resumed requests insist on the object the first one started.
    assert all(request["If-Match"] == '"0x8D1"' for request in server.requests[1:])


def test_a_connection_that_keeps_breaking_gives_up_after_the_attempts(server, sink):
    server.cuts = [1000] * 10

    with pytest.raises(ranged_http.ConnectionLost, match="broke 4 times"):
        fetch(server, sink)

    assert len(server.requests) == 4


def test_a_busy_server_is_retried_and_a_missing_object_is_not(server, sink):
    server.statuses = [503, 500]
    fetch(server, sink)
    assert sink.hexdigest() == hashlib.sha256(PAYLOAD).hexdigest()

    server.requests.clear()
    server.statuses = [404]
    with pytest.raises(ranged_http.StatusError) as raised:
        fetch(server, sink)
    assert (raised.value.status, raised.value.error_code) == (404, "BlobNotFound")
    assert len(server.requests) == 1


def test_an_object_replaced_mid_download_is_refused(server, sink, monkeypatch):
    monkeypatch.setattr(ranged_http, "MIN_RANGE", 1024 * 1024)
    server.cuts = [100_000]  # the first range breaks ...
    original_write = sink.write_at

    def write_then_republish(offset, data):
        server.etag = "0x8D2"  # ... and by its resume the blob is another one
        return original_write(offset, data)

    sink.write_at = write_then_republish

    with pytest.raises(ranged_http.ObjectChanged):
        fetch(server, sink)


def test_nobody_listening_is_unreachable_not_a_broken_transfer(sink):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with requests.Session() as session, pytest.raises(ranged_http.Unreachable):
        ranged_http.download(session, f"http://127.0.0.1:{port}/m", {}, sink, backoff=0.01)


def test_ranges_cover_the_object_once_and_are_never_tiny():
    size = 100 * ranged_http.MIN_RANGE + 5
    parts = ranged_http.split(size, 4)
    assert [(a.end, b.start) for a, b in zip(parts, parts[1:])] == [
        (a.end, a.end) for a in parts[:-1]
    ]
    assert parts[0].start == 0 and parts[-1].end == size and len(parts) == 4
    assert len(ranged_http.split(ranged_http.MIN_RANGE * 2 - 1, 4)) == 1


def test_verifying_writer_streams_from_several_threads_at_once(tmp_path):
    data = os.urandom(4 * 1024 * 1024)
    fd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT)
    writer = transfer.VerifyingWriter(fd, len(data))
    quarter = len(data) // 4

    def stream(start):
        for offset in range(start, start + quarter, 64 * 1024):
            writer.write_at(offset, data[offset:offset + 64 * 1024])

    threads = [threading.Thread(target=stream, args=(index * quarter,)) for index in (3, 1, 2, 0)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert writer.hexdigest() == hashlib.sha256(data).hexdigest()
    os.close(fd)
    assert (tmp_path / "out").read_bytes() == data
