"""The serving app under its production server (Granian via app.serve), three workers, on 127.0.0.1.

Besides what the app answers, these tests play hostile clients against the real server:
slow headers, slow bodies, idle connections, broken chunked framing, bodies and
headers over the limits. Every one is bounded in count and time, and none asserts a
duration: speed is the benchmark's business (benchmarks/bench_serving.py).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings

from app.metrics import _read_entries as read_entries  # one worker's file, as /metrics reads it
from modelship.sample_model import train_digits_model

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
WORKERS = 3
API_KEY = "integration-key"
BODY_LIMIT = 1024 * 1024  # the default MAX_CONTENT_LENGTH
# Short client timeouts keep the hostile-client tests short; the defaults are 10 s.
BODY_TIMEOUT_SECONDS = 2
HEADER_TIMEOUT_SECONDS = 2
ONE_ROW = json.dumps({"instances": [[0.0] * 64]}).encode()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(scratch: Path, model_dir: Path, module: str = "app.serve",
                 **extra_env) -> tuple[subprocess.Popen, int, Path]:
    """`python -m <module>` (app.serve, or a test app served by it) on a free port."""
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("API_KEY_FILE", "METRICS_DIR")},
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "MODEL_DIR": str(model_dir),
        "WEB_CONCURRENCY": str(WORKERS),
        "API_KEY": API_KEY,
        "GIT_REVISION": "abc1234",
        "BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT_SECONDS),
        "HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT_SECONDS),
        "SHUTDOWN_DRAIN_SECONDS": "1",
        **extra_env,
    }
    log_path = scratch / f"server-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", module],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    return process, port, log_path


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        process.send_signal(signal.SIGINT)  # the second one skips the drain
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return train_digits_model(tmp_path_factory.mktemp("model"), version="9.9.9")


@pytest.fixture(scope="module")
def served(tmp_path_factory, model_dir):
    """The server with the sample model; yields (base_url, metrics_dir, process, log_path)."""
    scratch = tmp_path_factory.mktemp("served")
    metrics_dir = scratch / "metrics"
    process, port, log_path = start_server(scratch, model_dir, METRICS_DIR=str(metrics_dir))
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base_url, process, log_path)
        yield base_url, metrics_dir, process, log_path
    finally:
        stop(process)


def wait_until_ready(base_url: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{base_url}/readyz", timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        assert process.poll() is None, log_path.read_text()
        time.sleep(0.05)
    pytest.fail(f"not ready in 30 s: {log_path.read_text()}")


def raw_exchange(base_url: str, request: bytes, close_write: bool = False, wait: float = 10) -> bytes:
    """Send raw bytes; everything the server answers until it closes or `wait` s pass."""
    port = int(base_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as connection:
        connection.sendall(request)
        if close_write:
            connection.shutdown(socket.SHUT_WR)
        return read_until_closed(connection)


def read_until_closed(connection: socket.socket) -> bytes:
    answer = b""
    try:
        while chunk := connection.recv(65536):
            answer += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    return answer


def read_response(connection: socket.socket) -> bytes:
    """One response, read as an HTTP client does: the head, then Content-Length bytes."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = connection.recv(65536)
        assert chunk, f"closed before the head was complete: {answer!r}"
        answer += chunk
    head, body = answer.split(b"\r\n\r\n", 1)
    length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")[1:]
                      if line.lower().startswith(b"content-length:")))
    while len(body) < length:
        chunk = connection.recv(65536)
        assert chunk, f"closed before the body was complete: {answer!r}"
        body += chunk
    return head + b"\r\n\r\n" + body


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def json_body_of(answer: bytes) -> dict:
    return json.loads(answer.split(b"\r\n\r\n", 1)[1])


def score_request(extra_headers: bytes, body: bytes) -> bytes:
    return (
        b"POST /score HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"X-API-Key: " + API_KEY.encode() + b"\r\nConnection: close\r\n" + extra_headers
        + b"\r\n" + body
    )


def series_value(text: str, series: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_every_worker_reports_the_whole_pods_counts(served):
    base_url, metrics_dir, _, _ = served
    healthz = 'http_requests_total{method="GET",route="/healthz",status="200"}'
    before = series_value(requests.get(f"{base_url}/metrics").text, healthz) or 0

    def probe(_):
        # A new connection each time, in parallel, so several workers take a share.
        return requests.get(f"{base_url}/healthz", headers={"Connection": "close"}).ok

    # Which worker accepts a connection is the kernel's choice: on a loaded machine one can
    # take every connection of a batch, so send batches until two workers have counted.
    sent = 0
    with ThreadPoolExecutor(max_workers=16) as pool:
        while sent < 3000:
            assert all(pool.map(probe, range(300)))
            sent += 300
            if len(list(metrics_dir.glob("worker-*.metrics"))) >= 2:
                break

    assert len(list(metrics_dir.glob("worker-*.metrics"))) >= 2, f"one worker took all {sent}"
    # Whichever worker answers the scrape, it must count the requests of all of them.
    for _ in range(10):
        text = requests.get(f"{base_url}/metrics", headers={"Connection": "close"}).text
        assert series_value(text, healthz) == before + sent


def test_scoring_needs_the_key_and_counts_predictions(served):
    base_url, _, _, _ = served
    rows = {"instances": [[0.0] * 64] * 4}
    assert requests.post(f"{base_url}/score", json=rows).status_code == 401
    before = series_value(requests.get(f"{base_url}/metrics").text, "model_predictions_total") or 0

    response = requests.post(f"{base_url}/score", json=rows, headers={"X-API-Key": API_KEY})

    assert response.status_code == 200 and len(response.json()["predictions"]) == 4
    assert len(response.headers["X-Request-ID"]) == 32
    after = series_value(requests.get(f"{base_url}/metrics").text, "model_predictions_total")
    assert after == before + 4


def test_version_identifies_code_and_model(served):
    base_url, _, _, _ = served
    version = requests.get(f"{base_url}/version").json()
    assert version["git_revision"] == "abc1234"
    assert version["model"]["version"] == "9.9.9" and len(version["model"]["sha256"]) == 64


def test_the_running_app_conforms_to_its_openapi_description(served):
    base_url, _, _, _ = served
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def conforms(case):
            case.call_and_validate(headers={"Authorization": f"Bearer {API_KEY}"})

        conforms()


def test_request_lines_are_json_and_carry_no_payload(served):
    base_url, _, _, log_path = served
    requests.post(
        f"{base_url}/score",
        json={"instances": [[31.4159] * 64]},
        headers={"X-API-Key": API_KEY, "X-Request-ID": "trace-me"},
    )
    time.sleep(0.2)
    lines = [line for line in log_path.read_text().splitlines() if "trace-me" in line]
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert (entry["method"], entry["route"], entry["status"]) == ("POST", "/score", 200)
    assert "31.4159" not in log_path.read_text()


def test_connections_spread_over_the_workers(served):
    base_url, metrics_dir, _, _ = served

    def worker_totals() -> dict:
        """/healthz requests answered, per worker file."""
        totals = {}
        for path in metrics_dir.glob("worker-*.metrics"):
            entries = defaultdict(float)
            read_entries(path.read_bytes(), entries)
            totals[path.name] = sum(
                value for (name, labels), value in entries.items()
                if name == "http_requests_total" and ("route", "/healthz") in labels
            )
        return totals

    before = worker_totals()
    port = int(base_url.rsplit(":", 1)[1])
    connections = [HTTPConnection("127.0.0.1", port, timeout=10) for _ in range(16)]
    try:
        for _ in range(4):  # kept alive: each connection stays with the worker it met
            for connection in connections:
                connection.request("GET", "/healthz")
                assert connection.getresponse().read() == b'{"status":"ok"}\n'
    finally:
        for connection in connections:
            connection.close()
    after = worker_totals()
    served_by = [name for name in after if after[name] > before.get(name, 0)]
    # SO_REUSEPORT hashes each connection to a worker: all 16 on one of three
    # workers would happen once in 3**15 runs.
    assert len(served_by) >= 2, (before, after)


def test_every_worker_runs_on_uvloop(served):
    base_url, metrics_dir, _, _ = served
    requests.get(f"{base_url}/healthz", headers={"Connection": "close"})
    worker_pids = [path.stem.split("-", 1)[1] for path in metrics_dir.glob("worker-*.metrics")]
    assert worker_pids
    for pid in worker_pids:
        # The loop's compiled module is mapped into a worker only if its loop is uvloop's.
        assert "/uvloop/" in Path(f"/proc/{pid}/maps").read_text(), pid


# --- hostile clients ---------------------------------------------------------------


def test_slow_and_idle_clients_do_not_hold_the_workers(served):
    base_url, _, _, _ = served
    port = int(base_url.rsplit(":", 1)[1])
    slow_headers, slow_bodies, idle = [], [], []
    try:
        for _ in range(8):  # more than the workers: each would have taken one whole worker
            connection = socket.create_connection(("127.0.0.1", port), timeout=10)
            connection.sendall(b"POST /score HTTP/1.1\r\nHost: test\r\n")  # and no more
            slow_headers.append(connection)
            connection = socket.create_connection(("127.0.0.1", port), timeout=10)
            connection.sendall(score_request(b"Content-Length: %d\r\n" % len(ONE_ROW), ONE_ROW[:5]))
            slow_bodies.append(connection)
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=10))

        with requests.Session() as session:
            for _ in range(20):
                assert session.get(f"{base_url}/healthz", timeout=5).status_code == 200
                scored = session.post(f"{base_url}/score", data=ONE_ROW, timeout=5,
                                      headers={"X-API-Key": API_KEY,
                                               "Content-Type": "application/json"})
                assert scored.status_code == 200

        # Then the server gives up on each of them by itself.
        for connection in slow_bodies:
            answer = read_until_closed(connection)
            assert status_of(answer) == 408
            assert json_body_of(answer)["error"]["code"] == "request_timeout"
        for connection in slow_headers + idle:
            answer = read_until_closed(connection)
            assert answer == b"" or status_of(answer) == 408, answer
    finally:
        for connection in slow_headers + slow_bodies + idle:
            connection.close()


def test_a_kept_alive_connection_left_idle_is_closed(served):
    base_url, _, _, _ = served
    port = int(base_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        first = connection.recv(65536)
        assert status_of(first) == 200
        assert read_until_closed(connection) == b""  # closed by the server, not timed out


MALFORMED_CHUNKED = {
    "chunk size not hex": b"zz\r\nab\r\n0\r\n\r\n",
    "negative chunk size": b"-2\r\nab\r\n0\r\n\r\n",
    "bad chunk extension": b"2;\x01\r\nab\r\n0\r\n\r\n",
    "missing terminator": b"%x\r\n%s\r\n" % (len(ONE_ROW), ONE_ROW),
    "bad trailer": b"%x\r\n%s\r\n0\r\nno colon here\r\n\r\n" % (len(ONE_ROW), ONE_ROW),
    "valid row, then garbage": b"%x\r\n%s\r\nzz\r\n\r\n" % (len(ONE_ROW), ONE_ROW),
}


@pytest.mark.parametrize("framing", MALFORMED_CHUNKED.values(), ids=MALFORMED_CHUNKED.keys())
def test_malformed_chunked_bodies_are_a_client_error(served, framing):
    base_url, _, _, log_path = served
    answer = raw_exchange(
        base_url, score_request(b"Transfer-Encoding: chunked\r\n", framing), close_write=True
    )
    # Never scored, never a 5xx. Granian's parser (hyper) drops the connection without
    # an answer on some framing errors (an invalid chunk extension byte), before the
    # bridge can say 400; every other case gets the API's JSON error.
    if answer:
        assert 400 <= status_of(answer) < 500, answer
        assert "error" in json_body_of(answer)
    log = log_path.read_text()
    assert "Traceback" not in log and '"level": "ERROR"' not in log


def test_a_well_formed_chunked_body_is_scored(served):
    base_url, _, _, _ = served
    body = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (ONE_ROW[:7], ONE_ROW[7:]))
    answer = raw_exchange(base_url, score_request(b"Transfer-Encoding: chunked\r\n",
                                                  body + b"0\r\n\r\n"))
    assert status_of(answer) == 200 and len(json_body_of(answer)["predictions"]) == 1


def test_a_chunked_body_over_the_limit_is_413(served):
    base_url, _, _, _ = served
    piece = b" " * 65536
    pieces = BODY_LIMIT // len(piece) + 2
    body = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(pieces)) + b"0\r\n\r\n"
    answer = raw_exchange(base_url, score_request(b"Transfer-Encoding: chunked\r\n", body))
    assert status_of(answer) == 413
    assert json_body_of(answer)["error"]["code"] == "payload_too_large"


def test_a_declared_body_over_the_limit_is_413_without_being_read(served):
    base_url, _, _, _ = served
    answer = raw_exchange(base_url, score_request(b"Content-Length: 999999999\r\n", b"{"))
    assert status_of(answer) == 413


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /healthz?" + b"q" * 70_000 + b" HTTP/1.1\r\nHost: test\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: test\r\n"
        + b"".join(b"X-Field-%d: 1\r\n" % number for number in range(200)) + b"\r\n",
    ],
    ids=["request line too long", "header too large", "too many headers"],
)
def test_oversized_request_heads_are_a_client_error(served, request_bytes):
    base_url, _, _, log_path = served
    answer = raw_exchange(base_url, request_bytes)
    assert 400 <= status_of(answer) < 500, answer[:100]
    assert "Traceback" not in log_path.read_text()


# A request's log lines stay short whatever the client sends: a 60 KB method or a
# traceback per request would let any client fill the log.
LONGEST_LOG_LINE = 512


def log_lines_of(log_path: Path, request_id: str) -> list[str]:
    time.sleep(0.2)  # the worker writes its line after the answer went out
    return [line for line in log_path.read_text().splitlines() if request_id in line]


def request_with_id(request_id: str, request_line: bytes, headers: bytes = b"",
                    body: bytes = b"") -> bytes:
    return (request_line + b"\r\nHost: test\r\nConnection: close\r\nX-Request-ID: "
            + request_id.encode() + b"\r\n" + headers + b"\r\n" + body)


def assert_answered_briefly(answer: bytes, log_path: Path, request_id: str, status: int,
                            code: str) -> None:
    """A JSON error with the request's id, one short log line, no traceback."""
    assert status_of(answer) == status, answer[:300]
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    assert b"x-request-id: " + request_id.encode().lower() in head, head
    assert json_body_of(answer)["error"]["code"] == code
    lines = log_lines_of(log_path, request_id)
    assert lines and all(len(line) <= LONGEST_LOG_LINE for line in lines), lines
    assert sum('"message": "request"' in line for line in lines) == 1, lines
    assert "Traceback" not in log_path.read_text()


@pytest.mark.parametrize("path", [b"/%FF", b"/%E2%82%AC", b"/%C3%A9", b"/score%FF"],
                         ids=["invalid utf-8", "euro sign", "e acute", "after a route"])
def test_a_path_beyond_latin_1_is_a_json_404(served, path):
    base_url, _, _, log_path = served
    errors_before = series_value(requests.get(f"{base_url}/metrics").text,
                                 'http_requests_total{method="GET",route="unmatched",'
                                 'status="500"}') or 0
    request_id = "odd-path-" + path.hex()
    answer = raw_exchange(base_url, request_with_id(request_id, b"GET " + path + b" HTTP/1.1"))
    assert_answered_briefly(answer, log_path, request_id, 404, "not_found")
    errors_after = series_value(requests.get(f"{base_url}/metrics").text,
                                'http_requests_total{method="GET",route="unmatched",'
                                'status="500"}') or 0
    assert errors_after == errors_before


@pytest.mark.parametrize("path,status", [(b"/score", 405), (b"/nowhere", 404)])
def test_a_huge_method_is_cut_short_in_the_answer_and_the_log(served, path, status):
    base_url, _, _, log_path = served
    method = b"X" * 60_000
    request_id = f"huge-method-{status}"
    answer = raw_exchange(base_url, request_with_id(request_id, method + b" " + path
                                                    + b" HTTP/1.1"))
    code = "method_not_allowed" if status == 405 else "not_found"
    assert_answered_briefly(answer, log_path, request_id, status, code)
    assert len(answer) < 1024
    (line,) = log_lines_of(log_path, request_id)
    assert json.loads(line)["method"] == "X" * 24 + "..."
    if status == 405:
        assert json_body_of(answer)["error"]["message"].startswith("X" * 24 + "... is not")


def test_a_key_sent_under_an_underscore_name_does_not_authenticate(served):
    base_url, _, _, log_path = served
    spellings = [
        b"X_API_Key: " + API_KEY.encode() + b"\r\n",
        b"X-API-Key: wrong\r\nX_API_KEY: " + API_KEY.encode() + b"\r\n",
        b"Authorization_: Bearer " + API_KEY.encode() + b"\r\n",
    ]
    for number, headers in enumerate(spellings):
        request_id = f"underscore-key-{number}"
        answer = raw_exchange(base_url, request_with_id(
            request_id, b"POST /score HTTP/1.1",
            headers + b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(ONE_ROW),
            ONE_ROW))
        assert status_of(answer) == 401, (headers, answer[:300])
        assert "predictions" not in json_body_of(answer)
        assert_answered_briefly(answer, log_path, request_id, 401,
                                "invalid_api_key" if b"wrong" in headers else "missing_api_key")
    # The dashed spelling still works.
    answer = raw_exchange(base_url, score_request(b"Content-Length: %d\r\n" % len(ONE_ROW),
                                                  ONE_ROW))
    assert status_of(answer) == 200


def test_a_request_id_sent_under_an_underscore_name_is_ignored(served):
    base_url, _, _, log_path = served
    answer = raw_exchange(base_url, b"GET /healthz HTTP/1.1\r\nHost: test\r\n"
                                    b"Connection: close\r\nX_Request_ID: chosen-by-alias\r\n\r\n")
    assert status_of(answer) == 200
    assert b"chosen-by-alias" not in answer
    assert log_lines_of(log_path, "chosen-by-alias") == []


TRANSFER_CODINGS = {
    "gzip, chunked": (b"Transfer-Encoding: gzip, chunked\r\n", 501,
                      "unsupported_transfer_encoding"),
    "identity, chunked": (b"Transfer-Encoding: identity, chunked\r\n", 501,
                          "unsupported_transfer_encoding"),
    "chunked, chunked": (b"Transfer-Encoding: chunked, chunked\r\n", 400, "bad_request"),
    "chunked in two headers": (b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                               400, "bad_request"),
}


@pytest.mark.parametrize("headers,status,code", TRANSFER_CODINGS.values(),
                         ids=TRANSFER_CODINGS.keys())
def test_a_transfer_coding_other_than_chunked_alone_is_refused(served, headers, status, code):
    base_url, _, _, log_path = served
    predictions = 'model_predictions_total'
    before = series_value(requests.get(f"{base_url}/metrics").text, predictions) or 0
    body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(ONE_ROW), ONE_ROW)
    request_id = "coding-" + code + "-" + str(len(headers))
    answer = raw_exchange(base_url, request_with_id(
        request_id, b"POST /score HTTP/1.1",
        headers + b"Content-Type: application/json\r\nX-API-Key: " + API_KEY.encode() + b"\r\n",
        body))
    assert_answered_briefly(answer, log_path, request_id, status, code)
    assert b"connection: close" in answer.split(b"\r\n\r\n", 1)[0].lower()
    assert series_value(requests.get(f"{base_url}/metrics").text, predictions) == before


def test_chunked_is_accepted_in_any_letter_case(served):
    base_url, _, _, _ = served
    body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(ONE_ROW), ONE_ROW)
    answer = raw_exchange(base_url, score_request(b"Transfer-Encoding: Chunked\r\n", body))
    assert status_of(answer) == 200 and len(json_body_of(answer)["predictions"]) == 1


@pytest.mark.parametrize("hosts", [b"", b"Host: test\r\nHost: other\r\n"], ids=["none", "two"])
def test_an_http_1_1_request_needs_exactly_one_host(served, hosts):
    base_url, _, _, log_path = served
    request_id = f"hosts-{hosts.count(b'Host')}"
    answer = raw_exchange(base_url, b"POST /score HTTP/1.1\r\n" + hosts
                          + b"Connection: close\r\nX-Request-ID: " + request_id.encode()
                          + b"\r\nX-API-Key: " + API_KEY.encode()
                          + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                          % len(ONE_ROW) + ONE_ROW)
    assert_answered_briefly(answer, log_path, request_id, 400, "bad_request")
    assert "Host" in json_body_of(answer)["error"]["message"]


def test_an_http_1_0_request_may_leave_out_host(served):
    base_url, _, _, _ = served
    answer = raw_exchange(base_url, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert status_of(answer) == 200


def test_no_log_line_is_long_whatever_the_clients_sent(served):
    _, _, _, log_path = served
    longest = max(log_path.read_text().splitlines(), key=len)
    assert len(longest) <= LONGEST_LOG_LINE, longest[:300]


def test_zz_sigterm_drains_then_stops_every_worker_cleanly(served):
    """Runs last in this module: it stops the shared server."""
    base_url, _, process, log_path = served
    process.send_signal(signal.SIGTERM)

    # Draining: still alive and serving, but no longer ready.
    assert requests.get(f"{base_url}/readyz", timeout=5).status_code == 503
    assert requests.get(f"{base_url}/healthz", timeout=5).status_code == 200
    assert process.wait(timeout=30) == 0
    log = log_path.read_text()
    assert "SIGABRT" not in log and "terminate called" not in log
    assert "Killing worker" not in log  # every worker stopped by itself
    assert log.count("no API key") == 0


def test_sigterm_while_workers_are_still_starting_stops_the_server(tmp_path, model_dir):
    process, _, log_path = start_server(tmp_path, model_dir, SHUTDOWN_DRAIN_SECONDS="0")
    try:
        deadline = time.monotonic() + 30
        while "Spawning worker-%d" % WORKERS not in log_path.read_text():
            assert time.monotonic() < deadline and process.poll() is None, log_path.read_text()
            time.sleep(0.005)
        process.send_signal(signal.SIGTERM)  # before any worker could have loaded the app

        assert process.wait(timeout=30) == 0
        log = log_path.read_text()
        assert "Killing worker" not in log, log  # they stopped; none had to be killed
        assert "model loaded" not in log  # the signal did arrive during the start
    finally:
        stop(process)


def test_sigterm_in_the_last_moment_of_a_workers_start_still_stops_it(tmp_path, model_dir):
    """The worker has its stop handlers but its event loop does not run yet."""
    held = tmp_path / "held"
    held.mkdir()
    process, _, log_path = start_server(tmp_path, model_dir, module="tests.support.held_start_app",
                                        SHUTDOWN_DRAIN_SECONDS="0",
                                        WORKERS_KILL_TIMEOUT_SECONDS="10",
                                        HELD_WORKERS_DIR=str(held))
    try:
        deadline = time.monotonic() + 60
        while len(list(held.iterdir())) < WORKERS:
            assert time.monotonic() < deadline and process.poll() is None, log_path.read_text()
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)  # the server passes it on to every held worker
        time.sleep(1)
        (held / "release").touch()

        assert process.wait(timeout=30) == 0
        log = log_path.read_text()
        assert "Killing worker" not in log, log  # each stopped by itself, none was killed
    finally:
        stop(process)


def test_the_prestop_hook_drains_then_sigterm_finishes_the_request_in_flight(tmp_path,
                                                                            model_dir):
    """The pod's stop sequence: preStop (modelship_serving.drain), then SIGTERM, then in-flight finishes."""
    run_directory = tmp_path / "run"
    # A drain the server would take on its own would outlast this test's bounds: the
    # server must notice the hook already drained.
    process, port, log_path = start_server(tmp_path, model_dir,
                                           METRICS_DIR=str(run_directory),
                                           SHUTDOWN_DRAIN_SECONDS="120")
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base_url, process, log_path)
        hook_env = {**os.environ, "METRICS_DIR": str(run_directory),
                    "SHUTDOWN_DRAIN_SECONDS": "1"}
        hook = subprocess.run([sys.executable, "-m", "modelship_serving.drain"], cwd=REPO, env=hook_env,
                              capture_output=True, text=True, timeout=30)
        assert hook.returncode == 0, hook.stderr
        assert requests.get(f"{base_url}/readyz", timeout=5).status_code == 503
        scored = requests.post(f"{base_url}/score", data=ONE_ROW, timeout=5,
                               headers={"Content-Type": "application/json",
                                        "X-API-Key": API_KEY})
        assert scored.status_code == 200  # still serving while out of the endpoints

        # A request in flight when SIGTERM comes: head and half its body sent.
        in_flight = socket.create_connection(("127.0.0.1", port), timeout=20)
        in_flight.sendall(b"POST /score HTTP/1.1\r\nHost: t\r\n"
                          b"Content-Type: application/json\r\nX-API-Key: " + API_KEY.encode()
                          + b"\r\nContent-Length: %d\r\n\r\n" % len(ONE_ROW)
                          + ONE_ROW[:10])
        time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        in_flight.sendall(ONE_ROW[10:])
        answer = read_response(in_flight)
        assert status_of(answer) == 200, answer[:200]
        # Told to go: a kept-alive client closes and does not wait on a stopping worker.
        # (Waiting for the server to close instead is not what a client does, and hyper
        # does not always close its end at once after such an answer: under load the
        # worker then waited on the socket until it was killed, a flaky test in CI.)
        assert b"\r\nconnection: close\r\n" in answer.split(b"\r\n\r\n", 1)[0].lower()
        in_flight.close()
        assert process.wait(timeout=30) == 0
        log = log_path.read_text()
        assert "drained by the preStop hook" in log
        assert "Killing worker" not in log
    finally:
        stop(process)


# --- failures the app's own error handling does not catch ---------------------------


@pytest.fixture(scope="module")
def failing_served(tmp_path_factory, model_dir):
    """tests.support.failing_app under the real server; yields (base_url, log_path)."""
    scratch = tmp_path_factory.mktemp("failing")
    process, port, log_path = start_server(scratch, model_dir, module="tests.support.failing_app",
                                           METRICS_DIR=str(scratch / "metrics"))
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base_url, process, log_path)
        yield base_url, log_path
    finally:
        stop(process)


@pytest.mark.parametrize("path", ["/test-only/fail-in-app", "/test-only/fail-in-body",
                                  "/test-only/bad-status", "/test-only/bad-header"])
def test_a_failure_outside_the_apps_error_handling_is_a_json_500_with_the_request_id(
        failing_served, path):
    base_url, log_path = failing_served
    series = 'http_requests_total{method="GET",route="unmatched",status="500"}'
    before = series_value(requests.get(f"{base_url}/metrics").text, series) or 0
    request_id = "failing-" + path.rsplit("/", 1)[1]
    answer = raw_exchange(base_url, request_with_id(request_id, f"GET {path} HTTP/1.1".encode()))

    assert_answered_briefly(answer, log_path, request_id, 500, "internal")
    assert b"secret-detail" not in answer
    errors = [json.loads(line) for line in log_lines_of(log_path, request_id)
              if '"level": "ERROR"' in line]
    assert len(errors) == 1, errors
    assert errors[0]["logger"] == "app.rsgi_bridge" and errors[0]["where"]
    assert "secret-detail" not in log_path.read_text()
    assert series_value(requests.get(f"{base_url}/metrics").text, series) == before + 1
    # The worker goes on serving.
    assert requests.get(f"{base_url}/healthz", timeout=5).status_code == 200
