"""The release record: typed, versioned, written atomically, and the only hand-off file."""

from __future__ import annotations

import json

import pytest

from modelship import release_record
from modelship.errors import PipelineError
from modelship.release_record import PushRecord, ReleaseRecord
from modelship.settings import PROJECT_ROOT

DIGEST = "sha256:" + "ab" * 32


def a_record(inputs: str = "inputs-1") -> ReleaseRecord:
    return ReleaseRecord.model_validate({
        "image": {"repository": "digits-api", "tag": "3f2a9c1-f1962600", "inputs": inputs,
                  "name": "digits-api:3f2a9c1-f1962600", "id": "sha256:" + "cd" * 32},
        "model": {"name": "digits", "version": "1.0", "sha256": "f1" * 32,
                  "golden": [{"instance": [0.0, 1.0], "label": 3}]},
        "source": {"revision": "3f2a9c1e" * 5, "dirty": False},
    })


def a_push(inputs: str = "inputs-1") -> PushRecord:
    return PushRecord(repository="127.0.0.1:15000/digits-api", digest=DIGEST,
                      reference=f"127.0.0.1:15000/digits-api@{DIGEST}", inputs=inputs)


@pytest.fixture
def record_file(tmp_path):
    return tmp_path / "build" / "record.json"


def test_a_saved_record_reads_back_equal_with_its_golden_samples(record_file):
    record = a_record().with_push("dev", a_push())
    release_record.save(record, record_file)
    loaded = release_record.load(record_file)
    assert loaded == record
    assert loaded.model.as_metadata()["golden"] == [{"instance": [0.0, 1.0], "label": 3}]
    assert json.loads(record_file.read_text())["schema_version"] == release_record.SCHEMA_VERSION


def test_a_push_counts_only_for_the_build_whose_inputs_it_carries():
    record = a_record("inputs-1").with_push("dev", a_push("inputs-1"))
    assert record.push_for("dev").reference.endswith(DIGEST)
    assert record.push_for("prod") is None
    rebuilt = record.model_copy(update={"image": record.image.model_copy(
        update={"inputs": "inputs-2"})})
    assert rebuilt.push_for("dev") is None
    with pytest.raises(PipelineError, match="not been pushed for environment 'dev'.*invoke push"):
        rebuilt.require_push("dev")


def test_a_record_of_another_schema_version_is_refused_with_one_clear_line(record_file):
    record_file.parent.mkdir(parents=True)
    record_file.write_text(json.dumps({"image": {}, "model": {}, "pushed": {}}))  # version 1
    with pytest.raises(PipelineError) as failure:
        release_record.load(record_file)
    message = str(failure.value)
    assert "schema version 1" in message and "reads version 2" in message
    assert "invoke build" in message and "\n" not in message


def test_a_missing_record_says_to_build_or_download_it(record_file):
    with pytest.raises(PipelineError, match="No image has been built yet.*invoke build.*record"):
        release_record.load(record_file)


@pytest.mark.parametrize("text, where", [
    ("{not json", "not readable JSON"),
    (json.dumps({"schema_version": 2, "image": {"repository": "x"}}), "malformed at image"),
])
def test_a_damaged_record_is_refused(record_file, text, where):
    record_file.parent.mkdir(parents=True)
    record_file.write_text(text)
    with pytest.raises(PipelineError, match=where):
        release_record.load(record_file)


def test_save_replaces_the_file_whole_and_leaves_no_temporary(record_file):
    release_record.save(a_record(), record_file)
    release_record.save(a_record().with_push("dev", a_push()), record_file)
    assert [p.name for p in record_file.parent.iterdir()] == ["record.json"]
    assert "dev" in json.loads(record_file.read_text())["pushed"]


def test_the_record_has_one_writer_in_the_package():
    """Only release_record writes build/record.json: every other module asks it to."""
    writing = ("write_text(", "os.replace(", "json.dump(", ".open(\"w")
    sources = sorted((PROJECT_ROOT / "modelship").rglob("*.py")) + [PROJECT_ROOT / "tasks.py"]
    writers = [
        path.relative_to(PROJECT_ROOT).as_posix() for path in sources
        if ("record.json" in path.read_text() or "RECORD_NAME" in path.read_text())
        and any(call in path.read_text() for call in writing)
    ]
    assert writers == ["modelship/release_record.py"]


@pytest.mark.parametrize("where, value", [
    (("image", "tag"), "3f2a9c1-f1962600\nevil: label"), (("image", "tag"), "x" * 64),
    (("image", "tag"), "-starts-with-a-dash"),
    (("source", "revision"), "3f2a9c1e" * 5 + "\n"), (("source", "revision"), "main; rm -rf /"),
    (("source", "revision"), "3F2A9C1E" * 5),
])
def test_a_tag_or_revision_that_could_reach_a_label_unchecked_is_refused(record_file, where,
                                                                        value):
    data = a_record().model_dump(mode="json")
    data[where[0]][where[1]] = value
    record_file.parent.mkdir(parents=True)
    record_file.write_text(json.dumps(data))
    with pytest.raises(PipelineError, match=rf"is malformed at {where[0]}\.{where[1]}: "):
        release_record.load(record_file)


def test_a_tree_outside_git_still_records_its_revision_as_unknown(record_file):
    data = a_record().model_dump(mode="json")
    data["source"]["revision"] = "unknown"
    release_record.save(ReleaseRecord.model_validate(data), record_file)
    assert release_record.load(record_file).source.revision == "unknown"
