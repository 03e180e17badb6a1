"""The WSGI front: POST /score answered without Flask must answer exactly as Flask would."""

import io
import json
import logging
from datetime import datetime, timezone

import pytest

from app.request_log import _iso_time

FEATURES = 64
API_KEY = "front-test-key"


@pytest.fixture
def front_and_flask(make_app):
    """Two clients on one configuration: through the front, and straight to Flask."""
    fronted = make_app(API_KEY=API_KEY, MAX_CONTENT_LENGTH=4000)
    bare = make_app(API_KEY=API_KEY, MAX_CONTENT_LENGTH=4000)
    bare.wsgi_app = bare.wsgi_app.flask_wsgi_app
    return fronted.test_client(), bare.test_client()


GOOD_HEADERS = {"Authorization": f"Bearer {API_KEY}"}
REQUESTS = [
    ("one row", {"json": {"instances": [[0.0] * FEATURES]}, "headers": GOOD_HEADERS}),
    ("no key", {"json": {"instances": [[0.0] * FEATURES]}}),
    ("wrong key", {"json": {"instances": [[0.0] * FEATURES]}, "headers": {"X-API-Key": "no"}}),
    ("bad row", {"json": {"instances": [[True] * FEATURES]}, "headers": GOOD_HEADERS}),
    ("empty batch", {"json": {"instances": []}, "headers": GOOD_HEADERS}),
    ("not json", {"data": "{", "content_type": "application/json", "headers": GOOD_HEADERS}),
    ("plain text", {"data": "{}", "content_type": "text/plain", "headers": GOOD_HEADERS}),
    ("too large", {"json": {"instances": [[1.0] * FEATURES] * 20}, "headers": GOOD_HEADERS}),
    (
        "+json type",
        {
            "data": json.dumps({"instances": [[0.0] * FEATURES]}),
            "content_type": "application/vnd.example+json; charset=utf-8",
            "headers": GOOD_HEADERS,
        },
    ),
]


@pytest.mark.parametrize("name, request_kwargs", REQUESTS, ids=[name for name, _ in REQUESTS])
def test_the_front_answers_scoring_as_flask_does(front_and_flask, name, request_kwargs):
    fronted, bare = front_and_flask

    via_front = fronted.post("/score", **request_kwargs)
    via_flask = bare.post("/score", **request_kwargs)

    assert via_front.status_code == via_flask.status_code
    assert via_front.get_json() == via_flask.get_json()
    assert via_front.headers["Content-Type"] == via_flask.headers["Content-Type"]
    assert via_front.headers.get("WWW-Authenticate") == via_flask.headers.get("WWW-Authenticate")
    assert len(via_front.headers["X-Request-ID"]) == 32


def chunked(client, body: bytes, **kwargs):
    # No Content-Length: the server ends the stream, as gunicorn does for chunked bodies.
    return client.post(
        "/score",
        input_stream=io.BytesIO(body),
        headers={"Transfer-Encoding": "chunked", **GOOD_HEADERS},
        content_type="application/json",
        environ_overrides={"wsgi.input_terminated": True},
        **kwargs,
    )


def test_a_chunked_body_is_scored_and_a_long_one_is_a_413(front_and_flask):
    fronted, _ = front_and_flask
    short = json.dumps({"instances": [[0.0] * FEATURES]}).encode()
    long = json.dumps({"instances": [[1.0] * FEATURES] * 20}).encode()

    assert chunked(fronted, short).status_code == 200
    response = chunked(fronted, long)

    assert response.status_code == 413
    assert "4000 bytes" in response.get_json()["error"]["message"]


def test_a_failure_on_a_flask_route_is_a_500_with_the_request_id_logged(
    make_app, monkeypatch, caplog
):
    import app.routes

    def broken(*args, **kwargs):
        raise RuntimeError("internal detail")

    monkeypatch.setattr(app.routes, "build_spec", broken)
    client = make_app().test_client()

    response = client.get("/openapi.json", headers={"X-Request-ID": "trace-500"})

    assert response.status_code == 500
    assert response.headers["X-Request-ID"] == "trace-500"
    assert "internal detail" not in response.get_data(as_text=True)
    (failure,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert failure.fields["request_id"] == "trace-500"


def test_flask_routes_get_one_log_line_with_their_route_pattern(client, caplog):
    caplog.set_level(logging.INFO)

    client.get("/readyz")

    (record,) = [r for r in caplog.records if r.name == "app.request_log"]
    assert (record.fields["method"], record.fields["route"], record.fields["status"]) == (
        "GET",
        "/readyz",
        200,
    )


def test_log_times_read_as_iso_8601_utc_with_microseconds():
    # Consecutive seconds, and back again: the per-second cache must follow the clock.
    for created in (1_795_000_000.123456, 1_795_000_001.5, 0.0, 1_000_000_000.999999, 1.5):
        text = _iso_time(created)

        parsed = datetime.fromisoformat(text)
        assert parsed.tzinfo == timezone.utc
        assert abs(parsed.timestamp() - created) < 2e-6, (created, text)
        assert len(text) == len("2026-11-21T06:35:52.418962+00:00")
