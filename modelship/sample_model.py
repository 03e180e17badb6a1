"""Train and export the sample model the pipeline ships: a digits classifier in ONNX.

This is the data scientists' side of the hand-over. It produces a model directory
(`model.onnx` + `metadata.json`) in exactly the shape the serving app and the model
store expect, so the rest of the pipeline can be exercised end to end without a real
model. It needs scikit-learn and skl2onnx, which the serving image does not have: the
serving app must never import this module, and this module must never reach the
network (the digits data set ships inside scikit-learn).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .model_store import sha256_of

MODEL_FILENAME = "model.onnx"
METADATA_FILENAME = "metadata.json"
INPUT_NAME = "input"
GOLDEN_SAMPLE_COUNT = 5
RANDOM_STATE = 0

def describe_model(
    model_path: Path,
    name: str,
    version: str,
    golden: list[dict] | None = None,
    *,
    labels: list | None = None,
    metrics: dict | None = None,
    task: str = "classification",
    created: datetime | None = None,
) -> dict:
    """Build the metadata.json content for an ONNX file that already exists.

    The hash, size and input signature are read from the file itself, so the
    metadata cannot disagree with the model it describes.
    """
    model_path = Path(model_path)
    created = created or datetime.now(timezone.utc)
    metadata = {
        "name": name,
        "version": version,
        "sha256": sha256_of(model_path),
        "size": model_path.stat().st_size,
        "created": created.astimezone(timezone.utc).isoformat(),
        "framework": "onnx",
        "task": task,
        "input": read_input_signature(model_path),
    }
    if labels is not None:
        metadata["labels"] = list(labels)
    if golden is not None:
        metadata["golden"] = golden
    if metrics is not None:
        metadata["metrics"] = metrics
    return metadata


def read_input_signature(model_path: Path) -> dict:
    """Name, shape (None for symbolic dimensions) and dtype of the model's only input."""
    import onnx
    from onnx import helper

    graph = onnx.load(str(model_path), load_external_data=False).graph
    initializer_names = {tensor.name for tensor in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializer_names]
    if len(inputs) != 1:
        raise ValueError(f"{model_path}: expected exactly one input, found {len(inputs)}")
    tensor_type = inputs[0].type.tensor_type
    shape = [dim.dim_value if dim.HasField("dim_value") else None for dim in tensor_type.shape.dim]
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)).name
    return {"name": inputs[0].name, "shape": shape, "dtype": dtype}


def train_digits_model(output_dir: Path, name: str = "digits", *, version: str) -> Path:
    """Train the digits classifier, export it to ONNX and write its metadata.

    Returns `output_dir`, which then holds `model.onnx` and `metadata.json`.
    Training is deterministic: the same version gives the same predictions.
    """
    import onnxruntime
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    digits = load_digits()
    features = digits.data.astype(np.float32)
    train_x, test_x, train_y, test_y = train_test_split(
        features, digits.target, test_size=0.25, random_state=RANDOM_STATE, stratify=digits.target
    )
    classifier = LogisticRegression(max_iter=500)
    pipeline = make_pipeline(StandardScaler(), classifier).fit(train_x, train_y)

    # zipmap off: the serving app expects plain tensors (labels, probabilities),
    # not a list of {class: probability} maps.
    onnx_model = convert_sklearn(
        pipeline,
        name=name,
        initial_types=[(INPUT_NAME, FloatTensorType([None, features.shape[1]]))],
        options={id(classifier): {"zipmap": False}},
    )
    model_path = output_dir / MODEL_FILENAME
    model_path.write_bytes(onnx_model.SerializeToString())

    # The golden samples and the accuracy come from the exported model, not the
    # scikit-learn one: they are what the serving app will be checked against.
    session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    onnx_predictions = session.run(None, {INPUT_NAME: test_x})[0]
    golden = _pick_golden_samples(test_x, test_y, onnx_predictions)

    metadata = describe_model(
        model_path,
        name,
        version,
        golden,
        labels=[int(label) for label in classifier.classes_],
        metrics={"accuracy": round(float(np.mean(onnx_predictions == test_y)), 4)},
    )
    (output_dir / METADATA_FILENAME).write_text(json.dumps(metadata, indent=2) + "\n")
    return output_dir


def _pick_golden_samples(features, true_labels, predictions) -> list[dict]:
    """Correctly predicted held-out rows, one per class, so a check covers several classes."""
    golden, seen_labels = [], set()
    for row in np.flatnonzero(predictions == true_labels):
        label = int(predictions[row])
        if label in seen_labels:
            continue
        seen_labels.add(label)
        golden.append({"instance": features[row].tolist(), "label": label})
        if len(golden) == GOLDEN_SAMPLE_COUNT:
            break
    return golden
