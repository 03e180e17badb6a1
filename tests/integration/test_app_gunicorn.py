"""The serving app under its production gunicorn configuration, several workers, on 127.0.0.1."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings

from modelship.sample_model import train_digits_model

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
WORKERS = 3
API_KEY = "integration-key"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """gunicorn with the sample model; yields (base_url, metrics_dir, process, log_path)."""
    scratch = tmp_path_factory.mktemp("served")
    model_dir = train_digits_model(scratch / "model", version="9.9.9")
    metrics_dir = scratch / "metrics"
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("API_KEY_FILE", "METRICS_DIR")},
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "MODEL_DIR": str(model_dir),
        "WEB_CONCURRENCY": str(WORKERS),
        "METRICS_DIR": str(metrics_dir),
        "API_KEY": API_KEY,
        "GIT_REVISION": "abc1234",
    }
    log_path = scratch / "gunicorn.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "app/gunicorn_conf.py", "app:create_app()"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{base_url}/readyz", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert process.poll() is None, log_path.read_text()
            time.sleep(0.05)
        else:
            pytest.fail(f"not ready in 30 s: {log_path.read_text()}")
        yield base_url, metrics_dir, process, log_path
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


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

    with ThreadPoolExecutor(max_workers=16) as pool:
        assert all(pool.map(probe, range(300)))

    assert len(list(metrics_dir.glob("worker-*.metrics"))) >= 2
    # Whichever worker answers the scrape, it must count the requests of all of them.
    for _ in range(10):
        text = requests.get(f"{base_url}/metrics", headers={"Connection": "close"}).text
        assert series_value(text, healthz) == before + 300


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


def test_zz_sigterm_stops_every_worker_cleanly(served):
    """Runs last in this module: it stops the shared server."""
    _, _, process, log_path = served
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    log = log_path.read_text()
    assert "SIGABRT" not in log and "terminate called" not in log
    assert log.count("no API key") == 0
