"""The one ONNX model this process serves: loaded once, checked, then shared by requests.

`init_app` loads the model from `MODEL_DIR` (`model.onnx` + `metadata.json`) when the
app is created, warms it up and replays the golden samples the metadata carries; only
then is the process ready. Requests reach the model through `get_model()` and nothing
else. The input signature comes from the ONNX session itself, so this module knows
nothing about any particular model, and it must never load a model per request or
serve a model whose bytes do not match the sha256 its metadata declares.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime
from flask import Flask, current_app

from app.errors import ApiError

logger = logging.getLogger(__name__)

MODEL_FILENAME = "model.onnx"
METADATA_FILENAME = "metadata.json"
_EXTENSION_KEY = "modelship.model"
_HASH_CHUNK_BYTES = 1024 * 1024

_NUMPY_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


class ModelLoadError(Exception):
    """The model directory cannot be served as it is; the message says why."""


@dataclass(frozen=True)
class InputSpec:
    """What one request row must look like: `feature_count` numbers of type `dtype`."""

    name: str
    feature_count: int
    dtype: np.dtype


class OnnxModel:
    """An ONNX model taking a [batch, features] tensor, with the metadata it shipped with."""

    def __init__(self, model_dir: str | Path):
        model_dir = Path(model_dir)
        self.metadata = _read_metadata(model_dir / METADATA_FILENAME)
        model_path = model_dir / MODEL_FILENAME
        if not model_path.is_file():
            raise ModelLoadError(f"{model_path} not found")
        self.sha256 = _file_sha256(model_path)
        declared_sha256 = self.metadata.get("sha256")
        if declared_sha256 and declared_sha256 != self.sha256:
            raise ModelLoadError(
                f"{model_path} has sha256 {self.sha256} but {METADATA_FILENAME} declares "
                f"{declared_sha256}; the model directory is corrupt or mixed up"
            )

        options = onnxruntime.SessionOptions()
        # One thread per inference: gunicorn workers already use every CPU the pod has,
        # and onnxruntime's default pool per worker would oversubscribe them.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input = self._read_input_spec()

        outputs = self._session.get_outputs()
        self._prediction_output = outputs[0].name
        # Classifiers exported without zipmap emit labels, then a [batch, classes] tensor.
        has_probabilities = len(outputs) > 1 and len(outputs[1].shape or []) == 2
        self._probability_output = outputs[1].name if has_probabilities else None

    @property
    def name(self) -> str:
        return self.metadata["name"]

    @property
    def version(self) -> str:
        return self.metadata["version"]

    def predict(self, instances: np.ndarray) -> dict:
        """Predictions (and class probabilities for classifiers) as plain Python lists."""
        output_names = [self._prediction_output]
        if self._probability_output:
            output_names.append(self._probability_output)
        outputs = self._session.run(output_names, {self.input.name: instances})
        predictions = outputs[0]
        if predictions.ndim == 2 and predictions.shape[1] == 1:
            predictions = predictions[:, 0]  # regressors emit one column per row
        result = {"predictions": predictions.tolist()}
        if self._probability_output:
            result["probabilities"] = outputs[1].tolist()
        return result

    def warm_up(self) -> None:
        """Run once before taking traffic, then replay the golden samples if there are any.

        The first run allocates onnxruntime's buffers, so a user's first request is not
        the slow one; the golden replay proves this runtime computes what the data
        scientists saw when they exported the model.
        """
        self.predict(np.zeros((1, self.input.feature_count), dtype=self.input.dtype))
        golden = self.metadata.get("golden") or []
        if not golden:
            return
        try:
            rows = [sample["instance"] for sample in golden]
            expected = [sample["label"] for sample in golden]
            instances = np.asarray(rows, dtype=self.input.dtype)
        except (KeyError, TypeError, ValueError) as error:
            raise ModelLoadError(f"{METADATA_FILENAME}: malformed golden samples ({error})")
        if instances.shape != (len(golden), self.input.feature_count):
            raise ModelLoadError(
                f"{METADATA_FILENAME}: golden instances must have "
                f"{self.input.feature_count} features each"
            )
        predicted = self.predict(instances)["predictions"]
        for index, (want, got) in enumerate(zip(expected, predicted)):
            if want != got:
                raise ModelLoadError(
                    f"golden sample {index}: expected {want!r}, the model predicted {got!r}"
                )

    def _read_input_spec(self) -> InputSpec:
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise ModelLoadError(f"expected a model with one input, this one has {len(inputs)}")
        model_input = inputs[0]
        dtype = _NUMPY_DTYPES.get(model_input.type)
        if dtype is None:
            raise ModelLoadError(f"unsupported input type {model_input.type}")
        shape = model_input.shape or []
        if len(shape) != 2:
            raise ModelLoadError(f"expected a [batch, features] input, got shape {shape}")
        feature_count = shape[1]
        if not isinstance(feature_count, int):
            # A symbolic feature dimension: the metadata is the only other place to look.
            declared_shape = (self.metadata.get("input") or {}).get("shape") or []
            feature_count = declared_shape[1] if len(declared_shape) == 2 else None
        if not isinstance(feature_count, int) or feature_count < 1:
            raise ModelLoadError(
                "cannot tell how many features a row has: neither the model's input shape "
                f"nor {METADATA_FILENAME} 'input.shape' gives it"
            )
        return InputSpec(model_input.name, feature_count, np.dtype(dtype))


@dataclass(frozen=True)
class _LoadedModel:
    model: OnnxModel | None
    problem: str | None = None


def init_app(app: Flask) -> None:
    """Load, check and warm up the model once for this process."""
    started = time.perf_counter()
    model_dir = app.config["MODEL_DIR"]
    try:
        model = OnnxModel(model_dir)
        model.warm_up()
    except Exception as error:
        # Stay up but unready rather than crash: during a rollout Kubernetes keeps the
        # old pods serving, and /readyz tells the operator what is wrong.
        logger.exception("model not loaded", extra={"fields": {"model_dir": str(model_dir)}})
        problem = str(error)
        if not isinstance(error, ModelLoadError):
            problem = f"{type(error).__name__}: {problem}"
        app.extensions[_EXTENSION_KEY] = _LoadedModel(None, problem)
        return
    app.extensions[_EXTENSION_KEY] = _LoadedModel(model)
    logger.info(
        "model loaded",
        extra={
            "fields": {
                "model_name": model.name,
                "model_version": model.version,
                "sha256": model.sha256,
                "load_ms": round((time.perf_counter() - started) * 1000, 1),
            }
        },
    )


def model_problem() -> str | None:
    """Why the model cannot serve, or None when it is loaded and warmed up."""
    return current_app.extensions[_EXTENSION_KEY].problem


def get_model() -> OnnxModel:
    """The process's model; a 503 for the client when it did not load."""
    loaded = current_app.extensions[_EXTENSION_KEY]
    if loaded.model is None:
        raise ApiError(503, "model_not_ready", "the model is not loaded; see /readyz")
    return loaded.model


def _read_metadata(path: Path) -> dict:
    try:
        metadata = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"{path} not found") from None
    except ValueError as error:
        raise ModelLoadError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(metadata, dict):
        raise ModelLoadError(f"{path} must hold a JSON object")
    missing = [field for field in ("name", "version") if not metadata.get(field)]
    if missing:
        raise ModelLoadError(f"{path} lacks {', '.join(missing)}")
    return metadata


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(_HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()
