"""Auth, metrics, OpenAPI, generic models and fork-safe loading of the serving app."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from app import create_app
from app.metrics import MetricStore, render

FEATURES = 64
REPO = Path(__file__).resolve().parents[2]


def zero_rows(count=1):
    return {"instances": [[0.0] * FEATURES] * count}


def metric_lines(client):
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    return response.get_data(as_text=True).splitlines()


def metric_value(lines, series):
    for line in lines:
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


# --- API key ----------------------------------------------------------------------


def test_without_a_key_scoring_is_open_and_one_warning_says_so(make_app, caplog):
    caplog.set_level(logging.WARNING)
    client = make_app().test_client()

    assert client.post("/score", json=zero_rows()).status_code == 200
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no API key" in warnings[0].getMessage()


@pytest.mark.parametrize(
    "headers", [{"Authorization": "Bearer s3cret"}, {"X-API-Key": "s3cret"}]
)
def test_a_configured_key_is_accepted_in_either_header(make_app, headers):
    client = make_app(API_KEY="s3cret").test_client()
    assert client.post("/score", json=zero_rows(), headers=headers).status_code == 200


@pytest.mark.parametrize(
    "headers, code",
    [
        ({}, "missing_api_key"),
        ({"Authorization": "Bearer wrong"}, "invalid_api_key"),
        ({"X-API-Key": "s3cret-but-longer"}, "invalid_api_key"),
        ({"Authorization": "Basic czNjcmV0"}, "missing_api_key"),
    ],
)
def test_score_without_the_right_key_is_a_401(make_app, headers, code):
    client = make_app(API_KEY="s3cret").test_client()

    response = client.post("/score", json=zero_rows(), headers=headers)

    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == code
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert "s3cret" not in response.get_data(as_text=True)


def test_probes_metrics_and_description_stay_open_with_a_key(make_app):
    client = make_app(API_KEY="s3cret").test_client()
    for path in ("/healthz", "/readyz", "/version", "/metrics", "/openapi.json"):
        assert client.get(path).status_code == 200, path


def test_the_key_can_come_from_a_mounted_file(make_app, tmp_path, caplog):
    key_file = tmp_path / "api-key"
    key_file.write_text("from-a-secret\n")
    caplog.set_level(logging.WARNING)
    client = make_app(API_KEY_FILE=str(key_file)).test_client()

    with_key = client.post("/score", json=zero_rows(), headers={"X-API-Key": "from-a-secret"})
    assert with_key.status_code == 200
    assert client.post("/score", json=zero_rows()).status_code == 401
    assert not [r for r in caplog.records if "no API key" in r.getMessage()]


@pytest.mark.parametrize(
    "config, message",
    [
        ({"API_KEY": "a", "API_KEY_FILE": "/x"}, "not both"),
        ({"API_KEY_FILE": "/nonexistent/key"}, "cannot be read"),
    ],
)
def test_contradictory_or_unreadable_key_settings_stop_startup(make_app, config, message):
    with pytest.raises(ValueError, match=message):
        make_app(**config)


def test_the_key_is_read_from_the_environment(clean_environ, sample_model_dir):
    clean_environ.setenv("MODEL_DIR", str(sample_model_dir))
    clean_environ.setenv("API_KEY", "env-key")
    client = create_app().test_client()
    assert client.post("/score", json=zero_rows()).status_code == 401
    with_key = client.post("/score", json=zero_rows(), headers={"X-API-Key": "env-key"})
    assert with_key.status_code == 200


# --- metrics ----------------------------------------------------------------------


def test_metrics_count_requests_by_route_and_status_and_rows_scored(client):
    client.post("/score", json=zero_rows(3))
    client.post("/score", json=zero_rows(2))
    client.post("/score", json={"instances": []})
    client.get("/no/such/page")

    lines = metric_lines(client)

    requests = "http_requests_total{method=%s,route=%s,status=%s}"
    assert metric_value(lines, requests % ('"POST"', '"/score"', '"200"')) == 2
    assert metric_value(lines, requests % ('"POST"', '"/score"', '"422"')) == 1
    assert metric_value(lines, requests % ('"GET"', '"unmatched"', '"404"')) == 1
    assert metric_value(lines, "model_predictions_total") == 5
    assert metric_value(
        lines, 'http_request_duration_seconds_count{route="/score",status="200"}'
    ) == 2
    assert metric_value(
        lines, 'http_request_duration_seconds_bucket{route="/score",status="200",le="+Inf"}'
    ) == 2
    assert any(line.startswith('model_info{name="digits"') for line in lines)
    assert "no/such/page" not in "\n".join(lines)


def test_histogram_buckets_are_cumulative():
    store = MetricStore()
    store.record_request("GET", "/x", "200", 0.0005)
    store.record_request("GET", "/x", "200", 0.003)
    store.record_request("GET", "/x", "200", 30.0)

    text = render(store.totals(), {})

    def bucket(le):
        series = f'http_request_duration_seconds_bucket{{route="/x",status="200",le="{le}"}}'
        return metric_value(text.splitlines(), series)

    assert (bucket("0.001"), bucket("0.005"), bucket("2.5"), bucket("+Inf")) == (1, 2, 2, 3)
    latency_sum = 'http_request_duration_seconds_sum{route="/x",status="200"}'
    assert metric_value(text.splitlines(), latency_sum) == pytest.approx(30.0035)


def test_odd_methods_do_not_become_new_series(client):
    client.open("/score", method="BREW")
    lines = metric_lines(client)
    series = 'http_requests_total{method="other",route="unmatched",status="405"}'
    assert metric_value(lines, series) == 1


@pytest.mark.subprocess_project_code
def test_workers_sharing_a_directory_are_summed_and_survive_their_exit(tmp_path):
    """Each process writes its own file; /metrics of any worker reports the pod's totals."""
    metrics_dir = tmp_path / "metrics"
    child_code = (
        "import sys; from app.metrics import MetricStore; "
        "s = MetricStore(sys.argv[1]); "
        "[s.record_request('POST', '/score', '200', 0.002) for _ in range(int(sys.argv[2]))]; "
        "s.add('model_predictions_total', (), 7)"
    )
    for count in ("3", "4"):  # two short-lived "workers"
        subprocess.run(
            [sys.executable, "-c", child_code, str(metrics_dir), count], cwd=REPO, check=True
        )
    here = MetricStore(str(metrics_dir))
    here.record_request("POST", "/score", "200", 0.002)

    totals = here.totals()

    labels = (("method", "POST"), ("route", "/score"), ("status", "200"))
    assert totals[("http_requests_total", labels)] == 8
    assert totals[("model_predictions_total", ())] == 14
    assert len(list(metrics_dir.iterdir())) == 3


def test_a_store_keeps_counting_past_its_first_page(tmp_path):
    store = MetricStore(str(tmp_path))
    for index in range(3000):  # well past the initial 64 KiB file
        store.add("model_predictions_total", (("shard", str(index)),), 1)
    store.add("model_predictions_total", (("shard", "0"),), 1)

    totals = MetricStore(str(tmp_path)).totals()

    assert len(totals) == 3000
    assert totals[("model_predictions_total", (("shard", "0"),))] == 2


def test_label_values_are_escaped():
    text = render({("http_requests_total", (("route", 'a"b\\c\nd'),)): 1.0}, {})
    assert 'route="a\\"b\\\\c\\nd"' in text


# --- OpenAPI ----------------------------------------------------------------------


def test_openapi_takes_the_row_shape_from_the_model(make_app):
    client = make_app(MAX_BATCH=50).test_client()

    spec = client.get("/openapi.json").get_json()

    assert spec["openapi"].startswith("3.")
    body = spec["paths"]["/score"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    instances = body["properties"]["instances"]
    assert instances["maxItems"] == 50
    assert instances["items"]["minItems"] == instances["items"]["maxItems"] == FEATURES
    assert instances["items"]["items"]["type"] == "number"
    assert instances["items"]["items"]["maximum"] == pytest.approx(3.4028234663852886e38)
    responses = spec["paths"]["/score"]["post"]["responses"]
    assert {"200", "400", "413", "415", "422"} <= set(responses)
    success = responses["200"]["content"]["application/json"]["schema"]
    assert "probabilities" in success["properties"]
    assert "security" not in spec["paths"]["/score"]["post"]


def test_openapi_declares_the_key_when_one_is_required(make_app):
    spec = make_app(API_KEY="k").test_client().get("/openapi.json").get_json()
    score = spec["paths"]["/score"]["post"]
    assert "401" in score["responses"]
    assert {"bearer", "apiKey"} == set(spec["components"]["securitySchemes"])


# --- generic models ---------------------------------------------------------------


def test_a_regressor_is_served_with_predictions_only(make_app, regressor_model_dir):
    client = make_app(MODEL_DIR=str(regressor_model_dir)).test_client()
    metadata = json.loads((regressor_model_dir / "metadata.json").read_text())
    sample = metadata["golden"][0]

    response = client.post("/score", json={"instances": [sample["instance"]]})

    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert "probabilities" not in body
    assert body["predictions"] == [pytest.approx(sample["label"], rel=1e-4)]
    assert body["model"]["name"] == "line"
    spec = client.get("/openapi.json").get_json()
    schema = spec["paths"]["/score"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert schema["properties"]["instances"]["items"]["maxItems"] == 3
    score_200 = spec["paths"]["/score"]["post"]["responses"]["200"]
    assert "probabilities" not in score_200["content"]["application/json"]["schema"]["properties"]
    wrong_shape = client.post("/score", json=zero_rows()).get_json()
    assert wrong_shape["error"]["code"] == "wrong_feature_count"


def test_app_code_does_not_know_about_digits():
    for path in (REPO / "app").glob("*.py"):
        assert "digit" not in path.read_text().lower(), path


# --- the server's settings -----------------------------------------------------------


def test_server_settings_size_workers_from_cpus_and_bound_clients(clean_environ):
    from app.serve import server_settings

    settings = server_settings({})

    assert settings["workers"] == min(len(os.sched_getaffinity(0)), 4)
    assert (settings["host"], settings["port"]) == ("0.0.0.0", 8080)
    # The drain and the kill timeout together stay under Kubernetes' 30 s grace period.
    assert 0 < settings["drain_seconds"] + settings["kill_timeout_seconds"] < 30
    assert 0 < settings["header_timeout_seconds"] <= 30


def test_server_settings_come_from_the_manifests_variables():
    from app.serve import server_settings

    settings = server_settings(
        {"HOST": "127.0.0.1", "PORT": "9000", "WEB_CONCURRENCY": "7", "SHUTDOWN_DRAIN_SECONDS": "0"}
    )

    assert (settings["host"], settings["port"], settings["workers"]) == ("127.0.0.1", 9000, 7)
    assert settings["drain_seconds"] == 0


@pytest.mark.parametrize("name, raw", [("WEB_CONCURRENCY", "two"), ("WEB_CONCURRENCY", "0"),
                                       ("PORT", "80.5")])
def test_server_settings_refuse_nonsense_with_the_variable_named(name, raw):
    from app.serve import server_settings

    with pytest.raises(SystemExit, match=name):
        server_settings({name: raw})


def test_the_server_runs_on_uvloop_where_it_is_installed(monkeypatch):
    import importlib.util

    from granian.constants import Loops

    from app.serve import event_loop

    assert event_loop() is Loops.uvloop  # the serve extra installs it here
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert event_loop() is Loops.asyncio


def test_the_run_directory_is_emptied_of_an_earlier_runs_files(tmp_path):
    from app.serve import SHUTDOWN_MARKER_NAME, prepare_run_directory

    (tmp_path / "worker-123.metrics").write_bytes(b"old")
    (tmp_path / SHUTDOWN_MARKER_NAME).touch()
    (tmp_path / "unrelated").touch()

    directory, made_here = prepare_run_directory({"METRICS_DIR": str(tmp_path)})

    assert (directory, made_here) == (tmp_path, False)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["unrelated"]


def test_readiness_is_503_while_the_server_drains(make_app, tmp_path):
    marker = tmp_path / "shutting-down"
    client = make_app(SHUTDOWN_MARKER=str(marker)).test_client()
    assert client.get("/readyz").status_code == 200

    marker.touch()

    answer = client.get("/readyz")
    assert answer.status_code == 503
    assert answer.get_json()["error"]["code"] == "shutting_down"
    assert client.get("/healthz").status_code == 200  # alive: do not restart a draining pod


def test_model_input_and_values_pass_through_unchanged(client, sample_metadata):
    rows = [sample["instance"] for sample in sample_metadata["golden"]]
    body = client.post("/score", json={"instances": rows}).get_json()
    assert np.argmax(body["probabilities"], axis=1).tolist() == body["predictions"]


def test_the_prestop_hook_marks_the_server_draining_then_waits_the_drain(tmp_path):
    from modelship_serving import drain

    waited = []
    environ = {"METRICS_DIR": str(tmp_path / "run"), "SHUTDOWN_DRAIN_SECONDS": "7"}
    assert drain.main(environ, sleep=waited.append) == 0
    assert (tmp_path / "run" / drain.SHUTDOWN_MARKER_NAME).exists()
    assert waited == [7]


@pytest.mark.parametrize("raw, seconds", [("", 5), ("nonsense", 5), ("-3", 0), ("0", 0)])
def test_the_prestop_hook_never_blocks_a_stop_on_a_bad_setting(tmp_path, raw, seconds):
    from modelship_serving import drain

    waited = []
    assert drain.main({"SHUTDOWN_DRAIN_SECONDS": raw}, sleep=waited.append) == 0
    assert waited == [seconds]
