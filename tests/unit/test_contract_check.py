"""The contract test's check that the image runs the production server (app.serve, Granian)."""

from types import SimpleNamespace

import pytest

from modelship import contract_check
from modelship.errors import PipelineError


def image_with_command(command):
    return SimpleNamespace(attrs={"Config": {"Cmd": command}})


@pytest.fixture
def server_header(monkeypatch):
    """Make /healthz answer with the Server header the test sets."""
    answer = {"Server": "granian"}
    monkeypatch.setattr(
        contract_check.requests, "get",
        lambda url, timeout: SimpleNamespace(headers=answer),
    )
    return answer


def test_an_image_serving_with_granian_passes(server_header):
    image = image_with_command(contract_check.SERVING_COMMAND)
    assert contract_check.check_server(image, "http://127.0.0.1:1") == "granian"


def test_an_image_started_with_gunicorn_is_refused(server_header):
    image = image_with_command(["gunicorn", "--config", "app/gunicorn_conf.py", "app:create_app()"])
    with pytest.raises(PipelineError, match="not the serving entry point"):
        contract_check.check_server(image, "http://127.0.0.1:1")


def test_another_server_answering_is_refused(server_header):
    server_header["Server"] = "gunicorn"
    image = image_with_command(contract_check.SERVING_COMMAND)
    with pytest.raises(PipelineError, match="not granian"):
        contract_check.check_server(image, "http://127.0.0.1:1")
