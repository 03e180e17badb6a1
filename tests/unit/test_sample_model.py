import hashlib
from datetime import datetime

import numpy as np
import onnxruntime
import pytest

from modelship.sample_model import describe_model, train_digits_model


def run_onnx(model_dir, instances):
    session = onnxruntime.InferenceSession(
        str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    labels, probabilities = session.run(None, {"input": np.asarray(instances, dtype=np.float32)})
    return labels, probabilities


def test_model_directory_holds_the_model_and_its_metadata(
    sample_model_dir, sample_metadata, sample_model_version
):
    files = sorted(path.name for path in sample_model_dir.iterdir())
    assert files == ["metadata.json", "model.onnx"]
    assert sample_metadata["name"] == "digits"
    assert sample_metadata["version"] == sample_model_version
    assert sample_metadata["framework"] == "onnx"
    assert sample_metadata["task"] == "classification"
    assert sample_metadata["input"] == {"name": "input", "shape": [None, 64], "dtype": "float32"}
    assert sample_metadata["labels"] == list(range(10))
    assert datetime.fromisoformat(sample_metadata["created"]).utcoffset().total_seconds() == 0
    assert 0.9 <= sample_metadata["metrics"]["accuracy"] <= 1.0


def test_metadata_hash_and_size_match_the_model_file(sample_model_dir, sample_metadata):
    model_bytes = (sample_model_dir / "model.onnx").read_bytes()
    assert sample_metadata["sha256"] == hashlib.sha256(model_bytes).hexdigest()
    assert sample_metadata["size"] == len(model_bytes)


def test_golden_samples_are_reproduced_by_onnxruntime(sample_model_dir, sample_metadata):
    golden = sample_metadata["golden"]
    assert len(golden) == 5
    assert all(len(sample["instance"]) == 64 for sample in golden)
    assert len({sample["label"] for sample in golden}) == 5, "golden samples should span classes"

    labels, probabilities = run_onnx(sample_model_dir, [sample["instance"] for sample in golden])

    assert labels.tolist() == [sample["label"] for sample in golden]
    assert probabilities.shape == (5, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_training_is_deterministic(tmp_path, sample_model_dir, sample_metadata):
    retrained = train_digits_model(tmp_path, version="another")
    instances = [sample["instance"] for sample in sample_metadata["golden"]]

    first_labels, first_probabilities = run_onnx(sample_model_dir, instances)
    second_labels, second_probabilities = run_onnx(retrained, instances)

    assert first_labels.tolist() == second_labels.tolist()
    np.testing.assert_allclose(first_probabilities, second_probabilities, rtol=1e-6)


def test_describe_model_reads_hash_and_input_from_any_onnx_file(sample_model_dir):
    model_path = sample_model_dir / "model.onnx"

    metadata = describe_model(model_path, "renamed", "9.9.9", golden=None)

    assert metadata["name"] == "renamed"
    assert metadata["version"] == "9.9.9"
    assert metadata["sha256"] == hashlib.sha256(model_path.read_bytes()).hexdigest()
    assert metadata["input"]["shape"] == [None, 64]
    assert "golden" not in metadata and "labels" not in metadata


def test_describe_model_rejects_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        describe_model(tmp_path / "model.onnx", "x", "1")
