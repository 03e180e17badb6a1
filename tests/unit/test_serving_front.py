"""The image's front for a project's own app: probes it lacks, golden replay, pass-through."""

from __future__ import annotations

from flask import Flask, jsonify, request

from modelship_serving import drain
from modelship_serving.contract import AppContract
from modelship_serving.front import ContractFront
from modelship_serving.serve import load_wsgi

METADATA = {"name": "shop", "version": "2", "sha256": "ab" * 32,
            "golden": [{"instance": [1, 2], "label": 3}, {"instance": [0, 0], "label": 0}]}
CONTRACT = AppContract(score_path="/predict", request_key="rows", predictions_key="labels",
                       health_path="", readiness_path="")


def shop_app(offset: int = 0) -> Flask:
    app = Flask(__name__)

    @app.post("/predict")
    def predict():
        return jsonify(labels=[int(sum(row)) + offset for row in request.get_json()["rows"]])

    @app.get("/healthz")
    def own_health():
        return "the app's own"

    return app


def client_of(front: ContractFront):
    wrapper = Flask("wrapper")
    wrapper.wsgi_app = front
    return wrapper.test_client()


def test_the_front_answers_the_probes_the_app_lacks_and_passes_the_rest_through():
    client = client_of(ContractFront(shop_app(), CONTRACT, METADATA))
    assert client.get("/healthz").get_json() == {"status": "ok"}
    assert client.get("/readyz").get_json() == {"status": "ready"}
    assert client.get("/version").get_json()["model"]["version"] == "2"
    assert client.post("/predict", json={"rows": [[2, 2]]}).get_json() == {"labels": [4]}
    assert 'modelship_requests_total{path="/predict",status="200"} 1' in client.get(
        "/metrics").get_data(as_text=True)


def test_a_route_the_contract_names_stays_the_apps():
    contract = AppContract(score_path="/predict", request_key="rows", predictions_key="labels",
                           health_path="/healthz", readiness_path="")
    client = client_of(ContractFront(shop_app(), contract, METADATA))
    assert client.get("/healthz").get_data(as_text=True) == "the app's own"


def test_an_app_that_answers_the_golden_samples_wrongly_is_never_ready():
    client = client_of(ContractFront(shop_app(offset=1), CONTRACT, METADATA))
    answer = client.get("/readyz")
    assert answer.status_code == 503
    assert "golden sample 0: expected 3" in answer.get_json()["problem"]


def test_wsgi_targets_name_an_attribute_or_call_a_factory(tmp_path, monkeypatch):
    (tmp_path / "webshop.py").write_text("app = 'the app'\ndef make():\n    return 'made'\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_wsgi("webshop:app") == "the app"
    assert load_wsgi("webshop:make()") == "made"


def test_after_the_prestop_hook_the_front_is_unready_but_still_serves(tmp_path):
    environ = {"METRICS_DIR": str(tmp_path)}
    client = client_of(ContractFront(shop_app(), CONTRACT, METADATA, environ=environ))
    assert client.get("/readyz").status_code == 200

    assert drain.main(environ, sleep=lambda seconds: None) == 0

    answer = client.get("/readyz")
    assert answer.status_code == 503 and answer.get_json()["problem"] == "shutting down"
    assert client.post("/predict", json={"rows": [[1, 1]]}).get_json() == {"labels": [2]}
