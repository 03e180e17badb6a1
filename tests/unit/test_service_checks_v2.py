"""The golden samples through v2 infer (modelship.service_checks.check_golden_v2, which the
contract and smoke tests run), against the app answering real HTTP on 127.0.0.1."""

import json
import threading

import pytest
import requests
from werkzeug.serving import make_server

from app import create_app
from modelship.errors import PipelineError
from modelship.service_checks import check_golden, check_golden_v2

KEY = "checks-key"


@pytest.fixture
def serve(clean_environ):
    servers = []

    def start(model_dir) -> str:
        app = create_app({"MODEL_DIR": str(model_dir), "API_KEY": KEY})
        server = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    yield start
    for server in servers:
        server.shutdown()


def metadata_of(model_dir) -> dict:
    return json.loads((model_dir / "metadata.json").read_text())


@pytest.mark.parametrize("model", ["sample_model_dir", "regressor_model_dir"])
def test_the_golden_samples_pass_through_v2_as_through_score(serve, request, model):
    model_dir = request.getfixturevalue(model)
    base_url = serve(model_dir)
    metadata = metadata_of(model_dir)
    count = len(metadata["golden"])
    assert check_golden(base_url, metadata, api_key=KEY) == count
    assert check_golden_v2(base_url, metadata, api_key=KEY) == count
    assert check_golden_v2(base_url, metadata, limit=1, api_key=KEY) == 1


def test_labels_and_probabilities_are_judged_through_v2(serve, sample_model_dir):
    base_url = serve(sample_model_dir)
    metadata = metadata_of(sample_model_dir)
    wrong_label = json.loads(json.dumps(metadata))
    wrong_label["golden"][1]["label"] = (wrong_label["golden"][1]["label"] + 1) % 10
    with pytest.raises(PipelineError, match="v2 infer disagrees.*golden sample 1"):
        check_golden_v2(base_url, wrong_label, api_key=KEY)
    with_probabilities = json.loads(json.dumps(metadata))
    rows = [sample["instance"] for sample in metadata["golden"]]
    scored = requests.post(f"{base_url}/score", json={"instances": rows},
                           headers={"X-API-Key": KEY}).json()
    for sample, probabilities in zip(with_probabilities["golden"], scored["probabilities"]):
        sample["probabilities"] = probabilities
    assert check_golden_v2(base_url, with_probabilities, api_key=KEY) == len(rows)
    wrong_probabilities = json.loads(json.dumps(metadata))
    sample = wrong_probabilities["golden"][0]
    sample["probabilities"] = [0.0] * 10  # no class at all: the model gives one some
    with pytest.raises(PipelineError, match="expected probabilities"):
        check_golden_v2(base_url, wrong_probabilities, api_key=KEY)


def test_another_version_or_no_key_is_said_plainly(serve, sample_model_dir):
    base_url = serve(sample_model_dir)
    metadata = metadata_of(sample_model_dir)
    with pytest.raises(PipelineError, match="v2 model metadata answered 404"):
        check_golden_v2(base_url, dict(metadata, version="0.0.0"), api_key=KEY)
    with pytest.raises(PipelineError, match="401") as keyless:
        check_golden_v2(base_url, metadata, key_fix="Give the key.")
    assert keyless.value.fix == "Give the key."
