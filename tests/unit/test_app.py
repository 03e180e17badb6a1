import io
import json
import logging
import shutil

import numpy as np
import pytest

from app import create_app
from app.errors import ApiError
from app.instances import parse_instances
from app.model import InputSpec, OnnxModel
from app.request_log import JsonLogFormatter, ensure_log_output

FEATURES = 64


def score(client, body, **kwargs):
    return client.post("/score", json=body, **kwargs)


def assert_error(response, status, code, *message_parts):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["code"] == code
    for part in message_parts:
        assert part in error["message"]
    return error


def golden_rows(metadata):
    return [sample["instance"] for sample in metadata["golden"]]


def copy_model_dir(source, destination, edit_metadata=None):
    shutil.copytree(source, destination)
    if edit_metadata:
        path = destination / "metadata.json"
        metadata = json.loads(path.read_text())
        edit_metadata(metadata)
        path.write_text(json.dumps(metadata))
    return destination


# --- probes and version -----------------------------------------------------------


def test_healthz_reports_ok(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_readyz_reports_ready_once_the_model_is_loaded(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ready"}


def test_missing_model_leaves_the_process_alive_but_not_ready(make_app, tmp_path):
    client = make_app(MODEL_DIR=str(tmp_path / "nowhere")).test_client()

    assert client.get("/healthz").status_code == 200
    assert_error(client.get("/readyz"), 503, "model_not_ready", "metadata.json not found")
    assert_error(score(client, {"instances": [[0.0] * FEATURES]}), 503, "model_not_ready")
    assert client.get("/version").get_json()["model"] is None


def test_model_whose_bytes_do_not_match_its_metadata_is_not_served(
    make_app, sample_model_dir, tmp_path
):
    def declare_other_hash(metadata):
        metadata["sha256"] = "0" * 64

    model_dir = copy_model_dir(sample_model_dir, tmp_path / "model", declare_other_hash)
    client = make_app(MODEL_DIR=str(model_dir)).test_client()

    assert_error(client.get("/readyz"), 503, "model_not_ready", "sha256")


def test_model_failing_its_golden_samples_is_not_served(make_app, sample_model_dir, tmp_path):
    def expect_wrong_label(metadata):
        sample = metadata["golden"][0]
        sample["label"] = (sample["label"] + 1) % 10

    model_dir = copy_model_dir(sample_model_dir, tmp_path / "model", expect_wrong_label)
    client = make_app(MODEL_DIR=str(model_dir)).test_client()

    assert_error(client.get("/readyz"), 503, "model_not_ready", "golden sample 0")


def test_model_serves_with_only_name_and_version_in_metadata(
    make_app, sample_model_dir, sample_metadata, tmp_path
):
    def strip_to_minimum(metadata):
        for key in list(metadata):
            if key not in ("name", "version"):
                del metadata[key]

    model_dir = copy_model_dir(sample_model_dir, tmp_path / "model", strip_to_minimum)
    client = make_app(MODEL_DIR=str(model_dir)).test_client()

    assert client.get("/readyz").status_code == 200
    response = score(client, {"instances": golden_rows(sample_metadata)})
    assert response.status_code == 200
    assert response.get_json()["predictions"] == [s["label"] for s in sample_metadata["golden"]]


def test_version_reports_code_and_model_identity(
    clean_environ, sample_model_dir, sample_metadata
):
    clean_environ.setenv("GIT_REVISION", "0123abc")
    clean_environ.setenv("APP_VERSION", "2.0.1")
    clean_environ.setenv("MODEL_DIR", str(sample_model_dir))
    client = create_app().test_client()

    response = client.get("/version")

    assert response.status_code == 200
    assert response.get_json() == {
        "git_revision": "0123abc",
        "app_version": "2.0.1",
        "model": {
            "name": sample_metadata["name"],
            "version": sample_metadata["version"],
            "sha256": sample_metadata["sha256"],
        },
    }


def test_settings_come_from_plain_environment_variables(clean_environ, sample_model_dir):
    clean_environ.setenv("MODEL_DIR", str(sample_model_dir))
    clean_environ.setenv("MAX_BATCH", "7")
    clean_environ.setenv("MAX_CONTENT_LENGTH", "2048")

    app = create_app()

    assert app.config["MODEL_DIR"] == str(sample_model_dir)
    assert app.config["MAX_BATCH"] == 7
    assert app.config["MAX_CONTENT_LENGTH"] == 2048


def test_defaults_apply_without_environment(clean_environ):
    app = create_app()  # /opt/model does not exist here: the app comes up unready
    assert app.config["MODEL_DIR"] == "/opt/model"
    assert app.config["MAX_BATCH"] == 1000
    assert app.config["MAX_CONTENT_LENGTH"] == 1024 * 1024
    assert app.config["GIT_REVISION"] == "unknown"


def test_a_non_numeric_limit_in_the_environment_stops_startup_with_its_name(clean_environ):
    clean_environ.setenv("MAX_BATCH", "lots")
    with pytest.raises(ValueError, match="MAX_BATCH"):
        create_app()


# --- scoring ----------------------------------------------------------------------


def test_score_one_row(client, sample_metadata):
    sample = sample_metadata["golden"][0]

    response = score(client, {"instances": [sample["instance"]]})

    assert response.status_code == 200
    body = response.get_json()
    assert body["predictions"] == [sample["label"]]
    assert len(body["probabilities"]) == 1
    assert len(body["probabilities"][0]) == len(sample_metadata["labels"])
    assert np.argmax(body["probabilities"][0]) == sample["label"]
    assert body["model"] == {"name": "digits", "version": sample_metadata["version"]}


def test_score_a_batch_keeps_row_order(client, sample_metadata):
    rows = golden_rows(sample_metadata)
    expected = [sample["label"] for sample in sample_metadata["golden"]]

    response = score(client, {"instances": rows[::-1]})

    assert response.status_code == 200
    body = response.get_json()
    assert body["predictions"] == expected[::-1]
    assert np.allclose(np.sum(body["probabilities"], axis=1), 1.0, atol=1e-4)


def test_score_accepts_integers_and_a_full_batch(make_app, sample_metadata):
    client = make_app(MAX_BATCH=3).test_client()
    rows = [[int(value) for value in row] for row in golden_rows(sample_metadata)[:3]]

    response = score(client, {"instances": rows})

    assert response.status_code == 200
    assert len(response.get_json()["predictions"]) == 3


# --- client errors ----------------------------------------------------------------


def test_malformed_json_is_a_400(client):
    response = client.post("/score", data='{"instances": [[1, 2', content_type="application/json")
    assert_error(response, 400, "malformed_json", "not valid JSON", '"instances"')


def test_absurdly_nested_json_is_a_400_not_a_crash(client):
    response = client.post("/score", data="[" * 200_000, content_type="application/json")
    assert_error(response, 400, "malformed_json", "nested too deeply")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_body_not_declared_as_json_is_a_415(client, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post("/score", data='{"instances": [[0]]}', headers=headers)
    assert_error(response, 415, "unsupported_media_type", "application/json")


def test_body_over_the_size_limit_is_a_413(make_app):
    client = make_app(MAX_CONTENT_LENGTH=1000).test_client()

    response = score(client, {"instances": [[1.0] * FEATURES] * 20})

    assert_error(response, 413, "payload_too_large", "1000 bytes")


@pytest.mark.parametrize(
    "body, code, message",
    [
        ({}, "missing_instances", '"instances"'),
        ({"rows": [[0.0] * FEATURES]}, "missing_instances", '"instances"'),
        ([[0.0] * FEATURES], "missing_instances", "JSON object"),
        ({"instances": "0,1,2"}, "instances_not_a_list", "got a string"),
        ({"instances": {"a": 1}}, "instances_not_a_list", "got an object"),
        ({"instances": []}, "empty_batch", "at least one row"),
        ({"instances": [1.0] * FEATURES}, "row_not_a_list", "row 0 is a number"),
        ({"instances": [[0.0] * 63]}, "wrong_feature_count", "has 63 values; expected 64 features"),
        (
            {"instances": [[0.0] * FEATURES, [0.0] * 65]},
            "wrong_feature_count",
            "row 1 has 65 values; expected 64 features",
        ),
        ({"instances": [[0.0] * 63 + ["7"]]}, "non_numeric_value", "row 0, column 63 is a string"),
        ({"instances": [[True] + [0.0] * 63]}, "non_numeric_value", "column 0 is a boolean"),
        ({"instances": [[None] * FEATURES]}, "non_numeric_value", "is null"),
        ({"instances": [[[1.0]] * FEATURES]}, "non_numeric_value", "is a list"),
        ({"instances": [[10**400] + [0.0] * 63]}, "non_finite_value", "row 0, column 0"),
        (
            {"instances": [[0.0, 1e39] + [0.0] * 62]},
            "non_finite_value",
            "column 1 does not fit in float32",
        ),
    ],
)
def test_invalid_instances_are_a_422_that_says_what_was_expected(client, body, code, message):
    assert_error(score(client, body), 422, code, message)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_are_a_422(client, literal):
    row = ", ".join(["0"] * 10 + [literal] + ["0"] * 53)
    response = client.post(
        "/score", data=f'{{"instances": [[{row}]]}}', content_type="application/json"
    )
    assert_error(response, 422, "non_finite_value", "row 0, column 10", "finite number")


def test_models_with_integer_inputs_get_whole_numbers_only():
    spec = InputSpec(name="counts", feature_count=2, dtype=np.dtype(np.int64))

    accepted = parse_instances({"instances": [[1, 2.0]]}, spec, max_batch=10)
    assert accepted.dtype == np.int64 and accepted.tolist() == [[1, 2]]

    with pytest.raises(ApiError) as rejected:
        parse_instances({"instances": [[1, 2.5]]}, spec, max_batch=10)
    assert (rejected.value.status, rejected.value.code) == (422, "non_integer_value")
    assert "row 0, column 1" in rejected.value.message


def test_batch_over_the_limit_is_a_422(make_app):
    client = make_app(MAX_BATCH=3).test_client()

    response = score(client, {"instances": [[0.0] * FEATURES] * 4})

    assert_error(response, 422, "batch_too_large", "4 rows", "at most 3")


def test_unknown_route_is_a_json_404(client):
    assert_error(client.get("/predict"), 404, "not_found", "/score")


def test_wrong_method_is_a_json_405_that_names_the_allowed_one(client):
    response = client.get("/score")
    assert_error(response, 405, "method_not_allowed", "POST")
    assert "POST" in response.headers["Allow"]


def test_an_unexpected_failure_is_a_json_500_and_is_logged(client, monkeypatch, caplog):
    def broken_predict(self, instances):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(OnnxModel, "predict", broken_predict)

    response = score(client, {"instances": [[0.0] * FEATURES]})

    error = assert_error(response, 500, "internal", "X-Request-ID")
    assert "secret internal detail" not in error["message"]
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failures) == 1 and "secret internal detail" in failures[0].exc_text
    assert failures[0].fields["request_id"] == response.headers["X-Request-ID"]


# --- request ids and logs ---------------------------------------------------------


def test_a_sane_request_id_is_echoed(client):
    response = client.get("/healthz", headers={"X-Request-ID": "req-42_a.B"})
    assert response.headers["X-Request-ID"] == "req-42_a.B"


@pytest.mark.parametrize("offered", [None, "", "has space", "x" * 129, "semi;colon"])
def test_a_missing_or_odd_request_id_is_replaced(client, offered):
    headers = {"X-Request-ID": offered} if offered is not None else {}

    response = client.get("/healthz", headers=headers)

    generated = response.headers["X-Request-ID"]
    assert generated != offered
    assert len(generated) == 32 and int(generated, 16) >= 0


def test_error_responses_carry_the_request_id_too(client):
    response = client.get("/nowhere", headers={"X-Request-ID": "abc"})
    assert response.status_code == 404
    assert response.headers["X-Request-ID"] == "abc"


def request_records(caplog):
    return [r for r in caplog.records if r.name == "app.request_log"]


def test_each_request_logs_one_json_line_without_the_payload(client, caplog, sample_metadata):
    caplog.set_level(logging.INFO)
    row = golden_rows(sample_metadata)[0][:-1] + [13.371337]

    response = score(client, {"instances": [row]}, headers={"X-Request-ID": "trace-1"})

    assert response.status_code == 200
    records = request_records(caplog)
    assert len(records) == 1
    line = JsonLogFormatter().format(records[0])
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["method"] == "POST"
    assert entry["route"] == "/score"
    assert entry["status"] == 200
    assert entry["request_id"] == "trace-1"
    assert entry["latency_ms"] >= 0
    assert "13.37" not in line
    assert "instances" not in line and "predictions" not in line


def test_rejected_requests_are_logged_without_their_values(client, caplog):
    caplog.set_level(logging.INFO)

    response = score(client, {"instances": [["card-4111111111111111"] * FEATURES]})

    assert response.status_code == 422
    assert "4111111111111111" not in response.get_data(as_text=True)
    lines = [JsonLogFormatter().format(record) for record in request_records(caplog)]
    assert len(lines) == 1 and json.loads(lines[0])["status"] == 422
    assert "4111111111111111" not in caplog.text


def test_unknown_paths_are_not_logged(client, caplog):
    caplog.set_level(logging.INFO)

    client.get("/users/alice@example.com")

    (record,) = request_records(caplog)
    assert record.fields["status"] == 404
    assert record.fields["route"] is None
    assert "alice" not in JsonLogFormatter().format(record)


def test_logs_go_to_the_stream_as_json_when_nothing_else_handles_them():
    logger = logging.getLogger("tests.unconfigured")
    logger.propagate = False
    stream = io.StringIO()
    try:
        ensure_log_output(logger, stream)
        ensure_log_output(logger, stream)  # a second app in the same process adds nothing
        logger.info("request", extra={"fields": {"status": 200}})
    finally:
        logger.handlers.clear()

    (line,) = stream.getvalue().splitlines()
    assert json.loads(line)["status"] == 200
