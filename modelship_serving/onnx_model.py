"""One ONNX model with the metadata it shipped with: read, verified, opened, predicting.

Shared by the sample app (app.model wires it into Flask), the host side (`model.publish`
opens a model exactly as it will be served) and the image's server for a project's own app.
It knows nothing of Flask or HTTP, and must never serve a model whose bytes do not match the
sha256 its metadata declares.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelship_serving.golden import Tolerance, first_mismatch

MODEL_FILENAME = "model.onnx"
METADATA_FILENAME = "metadata.json"

_NUMPY_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint64)": np.uint64,
    "tensor(uint32)": np.uint32,
    "tensor(uint16)": np.uint16,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
    # Text features, as NumPy object arrays of str (the v2 API's BYTES, /score's strings).
    "tensor(string)": np.object_,
}


# JSON type of each prediction, for the API description.
_JSON_TYPES = {
    "tensor(string)": "string",
    "tensor(int64)": "integer",
    "tensor(int32)": "integer",
}


class ModelLoadError(Exception):
    """The model directory cannot be served as it is; the message says why."""


@dataclass(frozen=True)
class TensorSignature:
    """One input or output as the ONNX graph declares it; a dimension is a number, or a
    name or None where it varies (the batch)."""

    name: str
    onnx_type: str
    shape: tuple


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
        # The bytes stay in memory until open() builds the session from exactly what
        # was hashed.
        self._model_bytes = model_path.read_bytes()
        self.sha256 = hashlib.sha256(self._model_bytes).hexdigest()
        declared_sha256 = self.metadata.get("sha256")
        if declared_sha256 and declared_sha256 != self.sha256:
            raise ModelLoadError(
                f"{model_path} has sha256 {self.sha256} but {METADATA_FILENAME} declares "
                f"{declared_sha256}; the model directory is corrupt or mixed up"
            )
        self._session = None

    @property
    def is_open(self) -> bool:
        return self._session is not None

    def open(self) -> None:
        """Build this process's inference session, warm it up and replay the golden samples."""
        # Imported here, not at the top: importing onnxruntime starts a native thread,
        # and a process forked after that aborts at exit trying to join a thread it
        # does not have. (The server spawns its workers, but tests and tools fork.)
        import onnxruntime

        options = onnxruntime.SessionOptions()
        # One thread per inference: the server's workers already use every CPU the pod has,
        # and onnxruntime's default pool per worker would oversubscribe them.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        self._session = onnxruntime.InferenceSession(
            self._model_bytes, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input = self._read_input_spec()
        self._input_name = self.input.name

        outputs = self._session.get_outputs()
        self._prediction_output = outputs[0].name
        self.prediction_type = _JSON_TYPES.get(outputs[0].type, "number")
        # Classifiers exported without zipmap emit labels, then a [batch, classes] tensor.
        has_probabilities = (
            len(outputs) > 1
            and outputs[1].type.startswith("tensor(")
            and len(outputs[1].shape or []) == 2
        )
        self._probability_output = outputs[1].name if has_probabilities else None
        self._output_names = [self._prediction_output]
        if self._probability_output:
            self._output_names.append(self._probability_output)
        # The tensors the v2 API describes and answers; a ZipMap's sequence of maps is none.
        self.input_signature = _signature(self._session.get_inputs()[0])
        self.output_signatures = tuple(
            _signature(output) for output in outputs if output.type.startswith("tensor(")
        )
        self.warm_up()

    @property
    def is_classifier(self) -> bool:
        return self._probability_output is not None

    @property
    def prediction_output(self) -> str:
        """The name of the output that holds the predictions (labels or values)."""
        return self._prediction_output

    @property
    def name(self) -> str:
        return self.metadata["name"]

    @property
    def version(self) -> str:
        return self.metadata["version"]

    def predict(self, instances: np.ndarray) -> dict:
        """Predictions (and class probabilities for classifiers) as plain Python lists."""
        # Only the outputs the answer uses, by names worked out once in open().
        outputs = self._session.run(self._output_names, {self._input_name: instances})
        predictions = outputs[0]
        if predictions.ndim == 2 and predictions.shape[1] == 1:
            predictions = predictions[:, 0]  # regressors emit one column per row (a view)
        if self._probability_output is None:
            return {"predictions": _json_ready(predictions)}
        return {"predictions": _json_ready(predictions), "probabilities": _json_ready(outputs[1])}

    def run(self, instances: np.ndarray, output_names: list[str]) -> list[np.ndarray]:
        """The named outputs for `instances`, as onnxruntime returns them (v2 API)."""
        return self._session.run(output_names, {self._input_name: instances})

    def warm_up(self) -> None:
        """Run once before taking traffic, then replay the golden samples if there are any.

        The first run allocates onnxruntime's buffers, so a user's first request is not
        the slow one; the golden replay proves this runtime computes what the data
        scientists saw when they exported the model.
        """
        if self.input.dtype.kind == "O":  # zeros of object are the integer 0, not text
            blank = np.full((1, self.input.feature_count), "", dtype=object)
        else:
            blank = np.zeros((1, self.input.feature_count), dtype=self.input.dtype)
        self.predict(blank)
        golden = self.metadata.get("golden") or []
        if not golden:
            return
        try:
            rows = [sample["instance"] for sample in golden]
            instances = np.asarray(rows, dtype=self.input.dtype)
        except (KeyError, TypeError, ValueError) as error:
            raise ModelLoadError(f"{METADATA_FILENAME}: malformed golden samples ({error})")
        if instances.shape != (len(golden), self.input.feature_count):
            raise ModelLoadError(
                f"{METADATA_FILENAME}: golden instances must have "
                f"{self.input.feature_count} features each"
            )
        mismatch = first_mismatch(golden, self.predict(instances), Tolerance.of(self.metadata))
        if mismatch:
            raise ModelLoadError(mismatch)

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


def _signature(node) -> TensorSignature:
    return TensorSignature(node.name, node.type, tuple(node.shape or ()))


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


def _json_ready(values: np.ndarray) -> list:
    """Plain lists, with null where the model produced NaN or infinity.

    Inputs far outside the training range can overflow inside a model; JSON has no
    NaN, and emitting Python's bare NaN token would break every strict client.
    """
    if values.dtype.kind != "f":
        return values.tolist()  # labels: integers or strings, nothing to replace
    finite = np.isfinite(values)
    if finite.all():
        return values.tolist()
    return np.where(finite, values, None).tolist()
