"""Bring your own model: a regressor and a classifier verified before they are published."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from modelship_serving.golden import Tolerance, first_mismatch, same_value
from modelship import model_store, stages
from modelship.errors import PipelineError
from modelship.stores import FileStore

INJECTED_NAME = "line\n---\nkind: RoleBinding\nmetadata:\n  name: pwned"


def export_onnx(estimator, feature_count, path, zipmap=True):
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    options = {id(estimator): {"zipmap": False}} if not zipmap else None
    onnx_model = convert_sklearn(estimator, initial_types=[
        ("features", FloatTensorType([None, feature_count]))], options=options)
    path.write_bytes(onnx_model.SerializeToString())
    return path


@pytest.fixture(scope="module")
def regressor(tmp_path_factory):
    """A 4-feature ridge regressor; expected values computed by scikit-learn in float64."""
    from sklearn.linear_model import Ridge

    folder = tmp_path_factory.mktemp("regressor")
    rng = np.random.default_rng(3)
    features = rng.normal(size=(60, 4)) * 10
    targets = features @ [1.5, -2.25, 0.125, 3.0] + 0.3 + rng.normal(size=60)
    model = Ridge().fit(features, targets)
    export_onnx(model, 4, folder / "ridge.onnx")
    rows = features[:6]
    (folder / "samples.json").write_text(json.dumps(
        {"instances": rows.tolist(), "expected": model.predict(rows).tolist()}))
    return folder


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A 7-feature, 3-class decision tree with zipmap off, as the app expects."""
    from sklearn.tree import DecisionTreeClassifier

    folder = tmp_path_factory.mktemp("classifier")
    rng = np.random.default_rng(5)
    features = rng.normal(size=(90, 7)).astype(np.float32)
    labels = (features[:, 0] > 0).astype(int) + (features[:, 3] > 0.5).astype(int)
    model = DecisionTreeClassifier(max_depth=4, random_state=0).fit(features, labels)
    export_onnx(model, 7, folder / "tree.onnx", zipmap=False)
    rows = features[:8]
    (folder / "samples.json").write_text(json.dumps(
        {"instances": rows.tolist(), "expected": model.predict(rows).tolist()}))
    return folder


@pytest.fixture
def settings(tmp_path, monkeypatch):
    monkeypatch.setattr("modelship.stage_files.BUILD_ROOT", tmp_path / "build")
    store_uri = f"file://{tmp_path / 'store'}"
    return SimpleNamespace(env="local", model_name="byom", model_store=SimpleNamespace(
        uri=store_uri, account_url="", endpoint_url=""))


def published(settings, **options):
    return stages.publish_model(settings, dry=False, **options)


def latest(tmp_path):
    return json.loads((tmp_path / "store" / "latest.json").read_text())["version"]


def test_float32_results_match_float64_goldens_within_tolerance_and_labels_exactly():
    assert same_value(13.370001, 13.37, Tolerance())
    assert not same_value(13.38, 13.37, Tolerance())
    assert not same_value(10001, 10000, Tolerance())  # classes are never "close"
    assert same_value("cat", "cat", Tolerance()) and not same_value("cat", "dog", Tolerance())
    golden = [{"instance": [1], "label": 2.0, "probabilities": [0.25, 0.75]}]
    assert first_mismatch(golden, {"predictions": [2.0000001],
                                   "probabilities": [[0.2500001, 0.7499999]]}, Tolerance()) is None
    assert "probabilities" in first_mismatch(
        golden, {"predictions": [2.0], "probabilities": [[0.5, 0.5]]}, Tolerance())


def test_a_scikit_learn_regressor_is_published_with_its_task_and_tolerance(
        settings, regressor, tmp_path):
    line = published(settings, model=str(regressor / "ridge.onnx"),
                     samples=str(regressor / "samples.json"), version="r1", tolerance=1e-5)
    assert "6 golden samples verified" in line and latest(tmp_path) == "r1"
    metadata = json.loads((tmp_path / "store" / "r1" / "metadata.json").read_text())
    assert metadata["task"] == "regression" and metadata["tolerance"]["rel"] == 1e-5
    assert metadata["input"] == {"name": "features", "shape": [None, 4], "dtype": "float32"}
    assert metadata["name"] == "byom"


def test_a_classifier_with_other_features_is_published(settings, classifier, tmp_path):
    published(settings, model=str(classifier / "tree.onnx"),
              samples=str(classifier / "samples.json"), version="c1", name="tree")
    metadata = json.loads((tmp_path / "store" / "c1" / "metadata.json").read_text())
    assert (metadata["task"], metadata["name"], len(metadata["golden"])) == (
        "classification", "tree", 8)


@pytest.mark.parametrize("spoil", ["regressor", "classifier"])
def test_samples_the_model_does_not_reproduce_are_refused_and_latest_stays(
        spoil, settings, regressor, classifier, tmp_path):
    published(settings, model=str(regressor / "ridge.onnx"),
              samples=str(regressor / "samples.json"), version="good")
    folder = regressor if spoil == "regressor" else classifier
    samples = json.loads((folder / "samples.json").read_text())
    samples["expected"][2] += 1  # a regressor off by one; a classifier naming another class
    (tmp_path / "bad.json").write_text(json.dumps(samples))
    with pytest.raises(PipelineError, match="golden sample 2: expected"):
        published(settings, model=str(folder / ("ridge.onnx" if spoil == "regressor"
                                                else "tree.onnx")),
                  samples=str(tmp_path / "bad.json"), version="bad")
    assert latest(tmp_path) == "good"
    assert not (tmp_path / "store" / "bad").exists()


def test_too_tight_a_tolerance_refuses_a_regressor(settings, regressor):
    with pytest.raises(PipelineError, match=r"tolerance rel 0"):
        published(settings, model=str(regressor / "ridge.onnx"),
                  samples=str(regressor / "samples.json"), version="r2", tolerance=0.0)


@pytest.mark.parametrize("samples, message", [
    ({"instances": [[1, 2, 3, 4]], "label": [1.0]}, "other keys"),
    ({"instances": [[1, 2, 3, 4]], "expected": []}, "1 instances but 0 expected"),
    ({"instances": [[1, 2, 3]], "expected": [1.0]}, "4 features"),
])
def test_malformed_samples_are_refused_with_the_reason(settings, regressor, tmp_path, samples,
                                                       message):
    (tmp_path / "samples.json").write_text(json.dumps(samples))
    with pytest.raises(PipelineError, match=message):
        published(settings, model=str(regressor / "ridge.onnx"),
                  samples=str(tmp_path / "samples.json"), version="m1")
    assert not (tmp_path / "store" / "latest.json").exists()


@pytest.mark.parametrize("field, value", [
    ("name", INJECTED_NAME), ("version", "1\n"), ("version", "x" * 64),
])
def test_names_and_versions_that_could_break_a_manifest_are_refused_at_publish(
        settings, regressor, field, value):
    options = {"name": "ok", "version": "v1", field: value}
    with pytest.raises(PipelineError, match="is not allowed"):
        published(settings, model=str(regressor / "ridge.onnx"),
                  samples=str(regressor / "samples.json"), **options)


def exported(regressor, tmp_path, **changes):
    """A --model-dir folder whose metadata was edited after it was described."""
    from modelship.publishing import export_own_model

    folder = export_own_model(regressor / "ridge.onnx", regressor / "samples.json",
                              tmp_path / "export", name="line", version="9")
    metadata = json.loads((folder / "metadata.json").read_text())
    metadata.update(changes)
    (folder / "metadata.json").write_text(json.dumps(metadata))
    return folder


@pytest.mark.parametrize("changes, message", [
    ({"name": INJECTED_NAME}, r"name: 'line\\n---\\nkind: RoleBinding"),
    ({"sha256": "0" * 64 + "\n"}, "sha256"),
    ({"size": 0}, "size"),
    ({"golden": []}, "golden"),
    ({"golden": [{"instance": [1, 2, 3, 4], "expected": 1.0}]}, "golden/0"),
])
def test_hand_edited_metadata_is_refused_at_publish(settings, regressor, tmp_path, changes,
                                                    message):
    folder = exported(regressor, tmp_path, **changes)
    with pytest.raises(PipelineError, match=message):
        published(settings, model_dir=str(folder), version="9")
    assert not (tmp_path / "store" / "latest.json").exists()


def test_a_size_that_does_not_match_the_bytes_is_refused(settings, regressor, tmp_path):
    folder = exported(regressor, tmp_path)
    size = (folder / "model.onnx").stat().st_size
    folder = exported(regressor, tmp_path, size=size + 1)
    with pytest.raises(PipelineError, match="does not match the sha256 and size"):
        published(settings, model_dir=str(folder), version="9")


def test_injected_metadata_in_the_store_is_refused_at_fetch(settings, regressor, tmp_path):
    published(settings, model=str(regressor / "ridge.onnx"),
              samples=str(regressor / "samples.json"), version="f1")
    stored = tmp_path / "store" / "f1" / "metadata.json"
    metadata = json.loads(stored.read_text())
    stored.write_text(json.dumps({**metadata, "name": INJECTED_NAME}))
    with pytest.raises(PipelineError, match="not valid model metadata: name"):
        model_store.fetch(FileStore(tmp_path / "store"), tmp_path / "fetched")
    assert not (tmp_path / "fetched" / "model.onnx").exists()


def test_the_release_record_refuses_an_injected_model_name():
    from pydantic import ValidationError

    from modelship.release_record import ModelRecord

    with pytest.raises(ValidationError, match="label-safe"):
        ModelRecord(name=INJECTED_NAME, version="1", sha256="0" * 64)
    assert ModelRecord(name="a", version="1", sha256="0" * 64).tolerance.rel == 1e-4


def test_a_hand_edited_fetched_model_is_refused_before_it_becomes_image_labels(
        settings, regressor, tmp_path):
    from modelship import image

    published(settings, model=str(regressor / "ridge.onnx"),
              samples=str(regressor / "samples.json"), version="b1")
    model_store.fetch(FileStore(tmp_path / "store"), tmp_path / "model")
    assert image.read_model_metadata(tmp_path / "model")["version"] == "b1"
    metadata = json.loads((tmp_path / "model" / "metadata.json").read_text())
    (tmp_path / "model" / "metadata.json").write_text(
        json.dumps({**metadata, "name": INJECTED_NAME}))
    with pytest.raises(PipelineError, match="not valid model metadata: name"):
        image.read_model_metadata(tmp_path / "model")
