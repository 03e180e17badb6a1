import json
import os

import pytest

from app import DEFAULTS, create_app
from modelship.sample_model import describe_model, train_digits_model

# No test may reach an instance-metadata address: boto3 probes one when it finds no
# credentials, so that source is off for every test.
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"


@pytest.fixture(scope="session")
def tasks_namespace():
    """tasks.py's task collection, loaded the way the `invoke` command loads it."""
    from invoke import Collection
    from invoke.loader import FilesystemLoader

    from modelship.settings import PROJECT_ROOT

    module, _ = FilesystemLoader(start=str(PROJECT_ROOT)).load("tasks")
    return Collection.from_module(module)


@pytest.fixture(scope="session")
def sample_model_version():
    return "1.2.3"


@pytest.fixture(scope="session")
def sample_model_dir(tmp_path_factory, sample_model_version):
    """The digits model, trained once per test run; treat it as read-only."""
    return train_digits_model(tmp_path_factory.mktemp("sample-model"), version=sample_model_version)


@pytest.fixture(scope="session")
def regressor_model_dir(tmp_path_factory):
    """A 3-feature linear regressor named "line": proves the app is not digits-specific."""
    import numpy as np
    import onnxruntime
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LinearRegression

    model_dir = tmp_path_factory.mktemp("regressor")
    features = np.array([[0, 0, 1], [1, 2, 0], [3, 1, 1], [2, 2, 2]], dtype=np.float32)
    regressor = LinearRegression().fit(features, [1.0, 4.5, 7.25, 6.0])
    onnx_model = convert_sklearn(regressor, initial_types=[("x", FloatTensorType([None, 3]))])
    model_path = model_dir / "model.onnx"
    model_path.write_bytes(onnx_model.SerializeToString())
    session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    predicted = session.run(None, {"x": features})[0][:, 0]
    golden = [
        {"instance": row.tolist(), "label": float(value)} for row, value in zip(features, predicted)
    ]
    metadata = describe_model(model_path, "line", "0.1", golden, task="regression")
    (model_dir / "metadata.json").write_text(json.dumps(metadata))
    return model_dir


@pytest.fixture
def sample_metadata(sample_model_dir):
    return json.loads((sample_model_dir / "metadata.json").read_text())


@pytest.fixture
def clean_environ(monkeypatch):
    """No setting the app reads leaks in from the shell running the tests."""
    for key in DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


@pytest.fixture
def make_app(clean_environ, sample_model_dir):
    """create_app with the sample model unless the test config says otherwise."""

    def make(**config):
        return create_app({"TESTING": True, "MODEL_DIR": str(sample_model_dir), **config})

    return make


@pytest.fixture
def client(make_app):
    return make_app().test_client()
