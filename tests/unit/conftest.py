import json

import pytest

from app import DEFAULTS, create_app
from modelship.sample_model import train_digits_model

@pytest.fixture(scope="session")
def sample_model_version():
    return "1.2.3"


@pytest.fixture(scope="session")
def sample_model_dir(tmp_path_factory, sample_model_version):
    """The digits model, trained once per test run; treat it as read-only."""
    return train_digits_model(tmp_path_factory.mktemp("sample-model"), version=sample_model_version)


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
