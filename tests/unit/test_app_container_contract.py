"""The contract test's check that the image runs the production server (app.serve, Granian)."""

from types import SimpleNamespace

import pytest

from modelship import container_test
from modelship.errors import PipelineError


def image_with_command(command):
    return SimpleNamespace(attrs={"Config": {"Cmd": command}})


@pytest.fixture
def server_header(monkeypatch):
    """Make /healthz answer with the Server header the test sets."""
    answer = {"Server": "granian"}
    monkeypatch.setattr(
        container_test.requests, "get",
        lambda url, timeout: SimpleNamespace(headers=answer),
    )
    return answer


def test_an_image_serving_with_granian_passes(server_header):
    image = image_with_command(container_test.SERVING_COMMAND)
    assert container_test.check_server(image, "http://127.0.0.1:1") == "granian"


def test_an_image_started_with_gunicorn_is_refused(server_header):
    image = image_with_command(["gunicorn", "--config", "app/gunicorn_conf.py", "app:create_app()"])
    with pytest.raises(PipelineError, match="not the serving entry point"):
        container_test.check_server(image, "http://127.0.0.1:1")


def test_another_server_answering_is_refused(server_header):
    server_header["Server"] = "gunicorn"
    image = image_with_command(container_test.SERVING_COMMAND)
    with pytest.raises(PipelineError, match="not granian"):
        container_test.check_server(image, "http://127.0.0.1:1")
