"""The build record: the file through which build, push, render and apply hand over.

`build/record.json` says which image was built (id, tag, labels, model) and, per
environment, where it was pushed (repository and digest). It must never hold a credential.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import PipelineError
from .settings import BUILD_DIR

RECORD_PATH = BUILD_DIR / "record.json"


def read_record(path: Path = RECORD_PATH) -> dict:
    if not path.exists():
        raise PipelineError(
            "No image has been built yet (build/record.json is missing).",
            "Run `invoke build` first.",
        )
    return json.loads(path.read_text())


def write_record(record: dict, path: Path = RECORD_PATH) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.partial")
    temporary.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, path)


def pushed_for(record: dict, env: str) -> dict:
    pushed = record.get("pushed", {}).get(env)
    if not pushed or pushed.get("inputs") != record["image"].get("inputs"):
        raise PipelineError(
            f"The current build has not been pushed for environment '{env}'.",
            f"Run `invoke push --env={env}` first.",
        )
    return pushed
