"""A team's own Flask app, end to end: a repository the toolkit has never seen (its own
`POST /predict` taking `{"rows": ...}` and answering `{"labels": ...}`, its own
requirements, no health endpoint) gets the wheel pip-installed into a fresh virtualenv,
`modelship init`, a model trained there, `invoke lock`, `invoke model.publish`, a
`--dry` deploy that changes nothing, then `invoke deploy --env=local`, and answers through
its own route.

Its own app name, ports, image repository and store prefix: it never touches the project's
digits deployment.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.support.installed import build_wheel, run, venv_with

pytestmark = pytest.mark.integration

APP_NAME = "shop-api"
PORT = 18290
SHOP_APP = textwrap.dedent('''
    """The shop's recommender: nothing here knows about modelship."""
    import os

    import numpy as np
    import onnxruntime
    from flask import Flask, jsonify, request

    session = onnxruntime.InferenceSession(os.environ.get("MODEL_PATH", "model.onnx"))
    app = Flask(__name__)


    @app.post("/predict")
    def predict():
        rows = np.asarray(request.get_json()["rows"], dtype=np.float32)
        labels = session.run(None, {session.get_inputs()[0].name: rows})[0]
        return jsonify(labels=labels.tolist())
''')


def train(folder: Path):
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.tree import DecisionTreeClassifier

    rng = np.random.default_rng(21)
    x = rng.normal(size=(300, 5)).astype(np.float32)
    labels = (x[:, 1] > 0).astype(int) + (x[:, 4] > 0.3).astype(int)
    model = DecisionTreeClassifier(max_depth=4, random_state=0).fit(x, labels)
    onnx = convert_sklearn(model, initial_types=[("features", FloatTensorType([None, 5]))],
                           options={id(model): {"zipmap": False}})
    (folder / "model.onnx").write_bytes(onnx.SerializeToString())
    rows, expected = x[:6].tolist(), model.predict(x[:6]).tolist()
    (folder / "samples.json").write_text(json.dumps({"instances": rows, "expected": expected}))
    return rows, expected


def git(*args, cwd):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def listing(folder: Path) -> dict[str, int]:
    return {str(path.relative_to(folder)): path.stat().st_mtime_ns
            for path in sorted(folder.rglob("*")) if path.is_file()} if folder.exists() else {}


@pytest.fixture
def shop(tmp_path) -> Path:
    root = tmp_path / "shop"
    root.mkdir()
    (root / "app.py").write_text(SHOP_APP)
    (root / "requirements.txt").write_text("flask>=3.0,<4\nnumpy>=2.0,<3\nonnxruntime>=1.20,<2\n")
    git("init", "-q", cwd=root)
    git("-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-q",
        "--allow-empty", "-m", "start", cwd=root)
    return root


@pytest.fixture
def remove_container(docker_client, shop):
    yield
    from invoke import Config

    from modelship import local_runtime
    from modelship.settings import load_settings

    config = Config(project_location=str(shop))
    config.load_project()
    local_runtime.remove(docker_client, load_settings(config, "local"))


def test_own_flask_app_is_initialized_published_deployed_and_answers(
        local_stack, remove_container, shop, tmp_path):
    venv = venv_with(build_wheel(tmp_path / "wheel"), tmp_path / "venv")
    python, modelship = venv / "bin/python", venv / "bin/modelship"
    rows, expected = train(tmp_path)

    run(modelship, "init", "--score-path", "/predict", "--request-key", "rows",
        "--predictions-key", "labels", "--app-name", APP_NAME, "--model-name", "shop",
        "--image-repository", APP_NAME, "--port", str(PORT),
        "--store-uri", f"az://models/shop-{time.time_ns()}", cwd=shop)
    assert 'wsgi: "app:app"' in (shop / "invoke.yaml").read_text()
    run(python, "-m", "invoke", "lock", cwd=shop)
    git("add", "-A", cwd=shop)
    git("-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-q", "-m", "ship",
        cwd=shop)

    published = run(python, "-m", "invoke", "model.publish", "--env=local",
                    "--model", tmp_path / "model.onnx", "--samples", tmp_path / "samples.json",
                    cwd=shop)
    assert "6 golden samples verified" in published

    before = listing(shop / "build")
    run(python, "-m", "invoke", "--dry", "deploy", "--env=local", cwd=shop)
    assert listing(shop / "build") == before
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{PORT}/readyz", timeout=2)

    deployed = run(python, "-m", "invoke", "deploy", "--env=local", cwd=shop)
    assert "deploy --env=local: done" in deployed

    answer = requests.post(f"http://127.0.0.1:{PORT}/predict", json={"rows": rows}, timeout=10)
    assert answer.status_code == 200 and answer.json() == {"labels": expected}
    # The probes the app lacks come from the image's server, in front of it.
    assert requests.get(f"http://127.0.0.1:{PORT}/readyz", timeout=5).json() == {
        "status": "ready"}
    assert "/predict" in requests.get(f"http://127.0.0.1:{PORT}/metrics", timeout=5).text
