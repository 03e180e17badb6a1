"""A release record edited to carry a newline in `image.tag` or `source.revision` (where it
would reach an image label, a manifest annotation or a GIT_REVISION variable) is refused by
every task that reads it, through the real CLI, in one line, and nothing in build/ changes."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

from modelship import release_record
from modelship.stage_files import BUILD_ROOT, PROJECT_ROOT

pytestmark = pytest.mark.integration

DIGEST = "sha256:" + "ab" * 32
REVISION = "3f2a9c1e" * 5


def a_record() -> dict:
    pushed = {env: {"repository": "127.0.0.1:15000/digits-api", "tag": "3f2a9c1e3f2a-f1f1f1f1",
                    "digest": DIGEST, "reference": f"127.0.0.1:15000/digits-api@{DIGEST}",
                    "inputs": "i" * 64}
              for env in ("local", "dev")}
    return {"schema_version": release_record.SCHEMA_VERSION,
            "image": {"repository": "digits-api", "tag": "3f2a9c1e3f2a-f1f1f1f1",
                      "inputs": "i" * 64, "name": "digits-api:3f2a9c1e3f2a-f1f1f1f1"},
            "model": {"name": "digits", "version": "1", "sha256": "f1" * 32,
                      "golden": [{"instance": [0.0], "label": 1}]},
            "source": {"revision": REVISION, "dirty": False},
            "pushed": pushed}


def build_folder() -> dict[str, str]:
    return {str(path.relative_to(BUILD_ROOT)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(BUILD_ROOT.rglob("*")) if path.is_file()}


@pytest.fixture
def record_file():
    """build/record.json of this checkout, put back as it was afterwards."""
    path = release_record.record_path()
    saved = path.read_bytes() if path.is_file() else None
    yield path
    if saved is None:
        path.unlink(missing_ok=True)
    else:
        path.write_bytes(saved)


@pytest.mark.parametrize("section, field, value", [
    ("image", "tag", "3f2a9c1e3f2a-f1f1f1f1\nevil: injected"),
    ("source", "revision", REVISION + "\nevil: injected"),
])
def test_tasks_refuse_a_record_whose_tag_or_revision_was_edited(record_file, section, field,
                                                                value):
    data = a_record()
    data[section][field] = value
    record_file.parent.mkdir(parents=True, exist_ok=True)
    record_file.write_text(json.dumps(data))
    before = build_folder()
    for task in (["render", "--env=dev"], ["push", "--env=local"], ["apply", "--env=dev"]):
        done = subprocess.run([sys.executable, "-m", "invoke", *task], cwd=PROJECT_ROOT,
                              capture_output=True, text=True, timeout=300)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 1, done.stdout + done.stderr
        assert len(lines) == 1 and f"is malformed at {section}.{field}: " in lines[0], lines
        assert build_folder() == before
    # The same record with the honest value reads (the test is not refusing everything).
    data[section][field] = a_record()[section][field]
    record_file.write_text(json.dumps(data))
    assert release_record.load().image.tag == "3f2a9c1e3f2a-f1f1f1f1"
