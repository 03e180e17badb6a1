"""Bring your own model, end to end: a scikit-learn regressor and a classifier (trained
here, 4 and 7 features) go through `invoke model.publish --model … --samples …` and
`invoke deploy --env=local`, and the running service scores their samples within tolerance.

Each model gets its own store prefix, app name, image repository and port (an `-f` runtime
file), so this never touches the project's own digits deployment.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
import requests

from modelship_serving.golden import Tolerance, first_mismatch
from modelship.settings import PROJECT_ROOT

pytestmark = pytest.mark.integration

APP_NAME = "byom-api"
PORT = 18190


def train_regressor(folder):
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(11)
    x = rng.normal(size=(200, 4)) * 10
    model = Ridge().fit(x, x @ [1.5, -2.25, 0.125, 3.0] + 0.3 + rng.normal(size=200))
    onnx = convert_sklearn(model, initial_types=[("features", FloatTensorType([None, 4]))])
    return x[:6], model.predict(x[:6]).tolist(), onnx


def train_classifier(folder):
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.tree import DecisionTreeClassifier

    rng = np.random.default_rng(12)
    x = rng.normal(size=(300, 7)).astype(np.float32)
    labels = (x[:, 0] > 0).astype(int) + (x[:, 3] > 0.5).astype(int)
    model = DecisionTreeClassifier(max_depth=4, random_state=0).fit(x, labels)
    onnx = convert_sklearn(model, initial_types=[("features", FloatTensorType([None, 7]))],
                           options={id(model): {"zipmap": False}})
    return x[:6], model.predict(x[:6]).tolist(), onnx


def invoke(runtime_file, *arguments):
    result = subprocess.run(
        [sys.executable, "-m", "invoke", "-f", str(runtime_file), *arguments],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900, check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.fixture
def remove_container(docker_client, tmp_path):
    yield
    # Only what this test's deploys created: its container and the edge in front of it.
    from modelship import local_runtime
    from modelship.settings import load_settings

    config = project_config_with(tmp_path / "byom.yaml")
    local_runtime.remove(docker_client, load_settings(config, "local"))


def project_config_with(runtime_file):
    from invoke import Config

    config = Config(project_location=str(PROJECT_ROOT), runtime_path=str(runtime_file))
    config.load_project()
    config.load_runtime()
    return config


@pytest.mark.parametrize("kind, train", [("ridge", train_regressor), ("tree", train_classifier)])
def test_own_model_is_published_deployed_and_served_within_tolerance(
        local_stack, remove_container, tmp_path, kind, train):
    if not (PROJECT_ROOT / ".local" / "registry" / "credentials.json").is_file():
        pytest.skip("no registry credentials in .local/registry (see docs/local.md)")
    instances, expected, onnx = train(tmp_path)
    (tmp_path / "model.onnx").write_bytes(onnx.SerializeToString())
    (tmp_path / "samples.json").write_text(json.dumps(
        {"instances": instances.tolist(), "expected": expected}))
    runtime_file = tmp_path / "byom.yaml"
    runtime_file.write_text(json.dumps({"modelship": {
        "app_name": APP_NAME, "model_name": kind,
        "environments": {"local": {
            # A prefix per run: every run publishes a fresh store, never the digits one.
            "model_store": {"uri": f"az://models/byom-{kind}-{time.time_ns()}"},
            "image": {"repository": APP_NAME},
            "deployment": {"port": PORT},
        }},
    }}))

    published = invoke(runtime_file, "model.publish", "--env=local", "--model",
                       str(tmp_path / "model.onnx"), "--samples", str(tmp_path / "samples.json"))
    assert "6 golden samples verified" in published
    deployed = invoke(runtime_file, "deploy", "--env=local")
    assert "deploy --env=local: done" in deployed

    version = requests.get(f"http://127.0.0.1:{PORT}/version", timeout=10).json()
    assert version["model"]["name"] == kind
    answer = requests.post(f"http://127.0.0.1:{PORT}/score",
                           json={"instances": instances.tolist()}, timeout=10).json()
    golden = [{"instance": row, "label": want} for row, want in zip(instances.tolist(), expected)]
    assert first_mismatch(golden, answer, Tolerance()) is None
    if kind == "ridge":
        assert answer["predictions"] != expected  # float32 served, float64 expected: not exact
