"""Turn a data scientist's ONNX file and golden samples into a model folder fit to publish.

`export_own_model` writes `model.onnx` + `metadata.json` (schema-checked) from a model file
and a samples file `{"instances": [[...], ...], "expected": [...]}`; `verify_serves` then
opens the folder exactly as the serving app does and replays the golden samples through
the app's own comparison (`modelship_serving.golden`). A model is published only after both, so `latest`
never moves to a model whose pods would stay unready. This module must never write into
the store: `model_store.publish` does that.
"""

from __future__ import annotations

import json
import shutil
from numbers import Integral, Real
from pathlib import Path

from . import model_metadata
from .errors import PipelineError

TASKS = ("classification", "regression")
# `invoke model.publish --help`, kept here so tasks.py stays a list of tasks.
FLAG_HELP = {
    "model": "Your ONNX file (one [batch, features] input); needs --samples.",
    "samples": 'JSON of golden samples: {"instances": [[...], ...], "expected": [...]}.',
    "name": "Model name (default: the environment's model_name).",
    "version": "Version to publish under (default: --model-dir's own, else a UTC timestamp).",
    "task": "classification or regression (default: guessed from the expected values).",
    "tolerance": "Relative tolerance for served numbers vs the expected ones (default 1e-4).",
    "model_dir": "Publish this folder (model.onnx + metadata.json) instead.",
    "signing_key": "Sign the model with this EC private key (PEM); see docs/model-store.md.",
    "force": "Replace a version that is already published (switches only when complete).",
    "promote": "Move latest to this version even when it is older than the one latest names.",
}


def read_samples(path: Path) -> list[dict]:
    """Golden samples from a samples file, in the metadata's shape."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise PipelineError(f"Cannot read the samples file {path}: {error}.",
                            'Write JSON: {"instances": [[...], ...], "expected": [...]}.') from None
    fix = ('The samples file holds {"instances": [[numbers], ...], "expected": [one label or '
           'number per instance]} (optionally "probabilities": [[...], ...]).')
    if not isinstance(data, dict) or set(data) - {"instances", "expected", "probabilities"}:
        raise PipelineError(f"{path} has other keys than instances, expected, probabilities.",
                            fix)
    instances, expected = data.get("instances"), data.get("expected")
    if not isinstance(instances, list) or not isinstance(expected, list) or not instances:
        raise PipelineError(f"{path} needs non-empty lists 'instances' and 'expected'.", fix)
    if len(instances) != len(expected):
        raise PipelineError(
            f"{path} has {len(instances)} instances but {len(expected)} expected values.", fix)
    golden = [{"instance": row, "label": want} for row, want in zip(instances, expected)]
    probabilities = data.get("probabilities")
    if probabilities is not None:
        if not isinstance(probabilities, list) or len(probabilities) != len(instances):
            raise PipelineError(f"{path}: 'probabilities' needs one row per instance.", fix)
        for sample, row in zip(golden, probabilities):
            sample["probabilities"] = row
    return golden


def guess_task(golden: list[dict]) -> str:
    """Regression when some expected value is a fractional number, else classification."""
    for sample in golden:
        label = sample["label"]
        fractional = (isinstance(label, Real) and not isinstance(label, (bool, Integral))
                      and not float(label).is_integer())
        if fractional:
            return "regression"
    return "classification"


def export_own_model(model: Path, samples: Path, output_dir: Path, *, name: str, version: str,
                     task: str | None = None, tolerance: float | None = None) -> Path:
    """Copy `model` into `output_dir` beside a metadata.json that describes it."""
    from .sample_model import describe_model

    model = Path(model)
    if not model.is_file():
        raise PipelineError(f"No model file at {model}.", "Pass --model path/to/model.onnx.")
    model_metadata.require_label_safe(name, "The model name")
    model_metadata.require_label_safe(version, "The version")
    if task is not None and task not in TASKS:
        raise PipelineError(f"Unknown task {task!r}.", "Use --task classification or regression.")
    golden = read_samples(samples)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    target = output_dir / "model.onnx"
    shutil.copyfile(model, target)
    try:
        metadata = describe_model(target, name, version, golden, task=task or guess_task(golden))
    except Exception as error:  # onnx's own parse errors: not a model we can describe
        raise PipelineError(f"{model} is not an ONNX model with one input ({error}).",
                            "Export the model to ONNX with a single [batch, features] input.")
    if tolerance is not None:
        metadata["tolerance"] = {"rel": tolerance, "abs": 1e-6}
    model_metadata.check(metadata, f"The metadata for {model}",
                         "Fix the name, version or samples named above.")
    (output_dir / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    return output_dir


def verify_serves(model_dir: Path) -> int:
    """Open the folder as the serving app would and replay its golden samples; return the count.

    Raises a PipelineError naming the first mismatch; nothing else is checked twice.
    """
    from modelship_serving.onnx_model import ModelLoadError, OnnxModel

    try:
        model = OnnxModel(model_dir)
        model.open()
    except ModelLoadError as error:
        raise PipelineError(f"The model would not serve: {error}.",
                            "Export the samples from the same model file, or raise "
                            "--tolerance for a regressor; nothing was published.") from None
    except Exception as error:  # onnxruntime refusing the file
        raise PipelineError(f"onnxruntime cannot open the model: {type(error).__name__}: "
                            f"{str(error)[:300]}.",
                            "Export it again; nothing was published.") from None
    return len(model.metadata["golden"])
