"""The v2 API under the production server (app.serve, Granian), driven by clients nobody here
wrote: Triton's `tritonclient[http]` (JSON tensors, binary_data=False) and the kserve
package's REST client (in its own virtualenv, tests/support/kserve_v2_client.py).

For a classifier and a regressor: server and model metadata, liveness and readiness, and
infer answers equal to /score's for the same rows. Also the protocol's REST description
(docs/open-inference-v2.yaml) replayed against the running server by schemathesis.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import schemathesis
import tritonclient.http as triton
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance
from tritonclient.utils import InferenceServerException

from modelship.sample_model import describe_model, train_digits_model

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
KSERVE_PYTHON = REPO / ".local" / "tools" / "kserve" / "bin" / "python"
KSERVE_CLIENT = REPO / "tests" / "support" / "kserve_v2_client.py"
PROTOCOL_DESCRIPTION = REPO / "docs" / "open-inference-v2.yaml"
API_KEY = "v2-clients-key"
KEY_HEADERS = {"Authorization": f"Bearer {API_KEY}"}


def train_regressor(folder: Path) -> Path:
    """A 4-feature linear regressor named "ridge", with golden samples of its own."""
    import onnxruntime
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import Ridge

    features = np.random.default_rng(7).normal(size=(40, 4)).astype(np.float32)
    targets = features @ np.array([1.5, -2.0, 0.25, 3.0]) + 0.5
    onnx_model = convert_sklearn(Ridge(alpha=0.1).fit(features, targets),
                                 initial_types=[("features", FloatTensorType([None, 4]))])
    model_path = folder / "model.onnx"
    model_path.write_bytes(onnx_model.SerializeToString())
    session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    predicted = session.run(None, {"features": features[:5]})[0][:, 0]
    golden = [{"instance": row.tolist(), "label": float(value)}
              for row, value in zip(features[:5], predicted)]
    metadata = describe_model(model_path, "ridge", "2.0.1", golden, task="regression")
    (folder / "metadata.json").write_text(json.dumps(metadata))
    return folder


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Served:
    """app.serve on 127.0.0.1 serving one model directory; stopped by stop()."""

    def __init__(self, model_dir: Path, log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.metadata = json.loads((model_dir / "metadata.json").read_text())
        env = {**{k: v for k, v in os.environ.items() if k not in ("API_KEY_FILE", "METRICS_DIR")},
               "HOST": "127.0.0.1", "PORT": str(self.port), "MODEL_DIR": str(model_dir),
               "WEB_CONCURRENCY": "2", "API_KEY": API_KEY, "SHUTDOWN_DRAIN_SECONDS": "0"}
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen([sys.executable, "-m", "app.serve"], cwd=REPO, env=env,
                                        stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, log_path.read_text()[-2000:]
            try:
                if requests.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"not ready within 60 s: {log_path.read_text()[-2000:]}")

    @property
    def rows(self) -> list:
        return [sample["instance"] for sample in self.metadata["golden"][:5]]

    def score(self) -> dict:
        response = requests.post(f"{self.url}/score", json={"instances": self.rows},
                                 headers=KEY_HEADERS, timeout=10)
        assert response.status_code == 200, response.text
        return response.json()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            self.process.send_signal(signal.SIGINT)  # the second skips the drain
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


MODELS = {
    "classifier": lambda folder: train_digits_model(folder, version="3.1.4"),
    "regressor": train_regressor,
}
EXPECTED_METADATA = {
    "classifier": {
        "name": "digits", "versions": ["3.1.4"], "platform": "onnxruntime_onnx",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]},
                    {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
    },
    "regressor": {
        "name": "ridge", "versions": ["2.0.1"], "platform": "onnxruntime_onnx",
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "variable", "datatype": "FP32", "shape": [-1, 1]}],
    },
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def served(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    server = Served(MODELS[request.param](folder), folder / "server.log")
    yield request.param, server
    server.stop()


def expected_outputs(kind: str, score: dict) -> dict:
    """/score's answer as the v2 outputs it must equal, in the outputs' datatypes."""
    if kind == "classifier":
        return {"label": np.asarray(score["predictions"], dtype=np.int64),
                "probabilities": np.asarray(score["probabilities"], dtype=np.float32)}
    return {"variable": np.asarray(score["predictions"], dtype=np.float32).reshape(-1, 1)}


def test_tritonclient_reads_health_and_metadata(served):
    kind, server = served
    client = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    try:
        assert client.is_server_live() and client.is_server_ready()
        name, version = server.metadata["name"], server.metadata["version"]
        assert client.is_model_ready(name) and client.is_model_ready(name, version)
        assert not client.is_model_ready("no-such-model")
        assert client.get_server_metadata()["name"] == "modelship"
        assert client.get_model_metadata(name) == EXPECTED_METADATA[kind]
        assert client.get_model_metadata(name, version) == EXPECTED_METADATA[kind]
        with pytest.raises(InferenceServerException) as unknown:
            client.get_model_metadata(name, "0.0.0")
        assert unknown.value.status() == "404"
    finally:
        client.close()


@pytest.mark.parametrize("ask_for_outputs", [True, False])
def test_tritonclient_infer_equals_score(served, ask_for_outputs):
    kind, server = served
    metadata = EXPECTED_METADATA[kind]
    rows = np.asarray(server.rows, dtype=np.float32)
    tensor = triton.InferInput(metadata["inputs"][0]["name"], list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows, binary_data=False)
    names = [output["name"] for output in metadata["outputs"]]
    # Without named outputs tritonclient asks for binary ones; it reads JSON all the same.
    outputs = ([triton.InferRequestedOutput(name, binary_data=False) for name in names]
               if ask_for_outputs else None)
    client = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    try:
        result = client.infer(metadata["name"], [tensor], model_version=metadata["versions"][0],
                              outputs=outputs, request_id="triton-1", headers=KEY_HEADERS)
        with pytest.raises(InferenceServerException) as keyless:
            client.infer(metadata["name"], [tensor], outputs=outputs)
        assert keyless.value.status() == "401"
    finally:
        client.close()

    answer = result.get_response()
    assert (answer["model_name"], answer["model_version"], answer["id"]) == (
        metadata["name"], metadata["versions"][0], "triton-1")
    for name, expected in expected_outputs(kind, server.score()).items():
        got = result.as_numpy(name)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert np.array_equal(got, expected), name


@pytest.mark.skipif(not KSERVE_PYTHON.exists(),
                    reason="kserve's virtualenv is missing: run bash scripts/setup.sh")
def test_kserve_rest_client_reads_readiness_and_infers_as_score(served):
    kind, server = served
    metadata = EXPECTED_METADATA[kind]
    request = {"base_url": server.url, "model": metadata["name"],
               "input": metadata["inputs"][0]["name"], "rows": server.rows, "api_key": API_KEY}
    run = subprocess.run([str(KSERVE_PYTHON), str(KSERVE_CLIENT)], input=json.dumps(request),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)

    assert (report["live"], report["ready"], report["model_ready"]) == (True, True, True)
    assert report["unknown_model_ready"] is False and report["keyless_infer"] == 401
    # (kserve's REST client drops model_version when it reads an answer: tritonclient's
    # test checks it.)
    assert (report["model_name"], report["id"]) == (metadata["name"], "kserve-1")
    expected = expected_outputs(kind, server.score())
    assert set(report["outputs"]) == set(expected)
    for name, wanted in expected.items():
        output = report["outputs"][name]
        got = np.asarray(output["data"], dtype=wanted.dtype)
        assert output["datatype"] == ("INT64" if wanted.dtype == np.int64 else "FP32")
        assert output["shape"] == list(wanted.shape)
        assert np.array_equal(got, wanted), name


def test_limits_hold_on_the_running_server_in_the_protocols_shape(served):
    _, server = served
    url = f"{server.url}/v2/models/{server.metadata['name']}/infer"
    too_large = requests.post(url, data=b"[" * (1024 * 1024 + 1), headers=KEY_HEADERS,
                              timeout=30)
    assert too_large.status_code == 413
    assert "limit of 1048576 bytes" in too_large.json()["error"]
    not_json = requests.post(url, data=b"{", headers=KEY_HEADERS, timeout=10)
    assert not_json.status_code == 400 and isinstance(not_json.json()["error"], str)
    assert requests.get(url, timeout=10).status_code == 405


def test_the_running_server_conforms_to_the_protocols_description(served):
    _, server = served
    # Every character, in the URL too: the bridge hands WSGI its path as Latin-1.
    schema = schemathesis.openapi.from_path(PROTOCOL_DESCRIPTION)
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def conforms(case):
            if case.path_parameters:
                case.path_parameters["model_name"] = server.metadata["name"]
            case.call_and_validate(base_url=server.url, headers=KEY_HEADERS,
                                   excluded_checks=[positive_data_acceptance])

        conforms()
