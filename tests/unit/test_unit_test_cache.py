"""`invoke test` skips what already passed for the same inputs, and nothing else."""

from __future__ import annotations

import re
import subprocess
from types import SimpleNamespace
from unittest import mock

import pytest
from invoke import MockContext, Result

from modelship import release_record, stages, unit_test_cache
from modelship.errors import PipelineError

PYTEST_COMMAND = re.compile(r".* -m pytest .*")


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    """A tiny git checkout standing in for the project, and a private cache record."""
    root = tmp_path / "checkout"
    for name, text in {"app/routes.py": "ANSWER = 42\n", "tests/unit/test_x.py": "x = 1\n",
                       "requirements/image.lock": "flask==3.0\n", "docs/notes.md": "hi\n",
                       "README.md": "readme\n", "tests/integration/test_y.py": "y = 1\n",
                       ".gitignore": "/build/\n", "build/record.json": "{}\n"}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    monkeypatch.setattr(unit_test_cache, "PROJECT_ROOT", root)
    monkeypatch.setattr(unit_test_cache, "UNIT_RECORD", tmp_path / "cache" / "unit-tests.json")
    return root


def test_the_inputs_are_the_checkouts_files_but_docs_integration_tests_and_ignored_ones(
        checkout):
    assert unit_test_cache.input_files() == [".gitignore", "app/routes.py",
                                        "requirements/image.lock", "tests/unit/test_x.py"]


def test_one_changed_byte_of_a_tested_file_changes_the_digest_and_docs_do_not(checkout):
    before = unit_test_cache.inputs_digest()
    (checkout / "docs" / "notes.md").write_text("changed\n")
    (checkout / "tests" / "integration" / "test_y.py").write_text("y = 2\n")
    assert unit_test_cache.inputs_digest() == before
    (checkout / "app" / "routes.py").write_text("ANSWER = 43\n")
    assert unit_test_cache.inputs_digest() != before
    (checkout / "app" / "routes.py").write_text("ANSWER = 42\n")
    assert unit_test_cache.inputs_digest() == before
    (checkout / "app" / "new_module.py").write_text("")  # untracked but not ignored: an input
    assert unit_test_cache.inputs_digest() != before


def test_the_installed_libraries_are_inputs(checkout, monkeypatch):
    before = unit_test_cache.inputs_digest()
    monkeypatch.setattr(unit_test_cache, "environment_fingerprint", lambda: "python 3.11\nflask==9")
    assert unit_test_cache.inputs_digest() != before


def pytest_commands(c) -> list[str]:
    return [call.args[0] for call in c.run.call_args_list if " -m pytest " in call.args[0]]


@pytest.fixture
def laptop(checkout, tmp_path, monkeypatch):
    """Not CI, testmon installed; its data file appears once a run collected coverage."""
    monkeypatch.setattr(unit_test_cache, "TESTMON_DATA", tmp_path / "cache" / "testmondata")
    monkeypatch.setattr(unit_test_cache, "TESTMON_BASELINE", tmp_path / "cache" / "baseline.json")
    monkeypatch.setattr(unit_test_cache, "_installed", lambda name: True)
    for name in ("CI", "TF_BUILD"):
        monkeypatch.delenv(name, raising=False)

    def run(command, **kwargs):
        if "--testmon" in command:
            unit_test_cache.TESTMON_DATA.parent.mkdir(parents=True, exist_ok=True)
            unit_test_cache.TESTMON_DATA.write_bytes(b"coverage")
        return Result(stdout="3 passed in 0.1s\n")

    c = MockContext()
    c.run = mock.Mock(side_effect=run)
    return c


def test_unit_tests_run_once_then_are_skipped_until_an_input_changes(laptop, checkout):
    lines = []
    assert stages.run_unit_tests(laptop, force=False, dry=False, echo=lines.append) is True
    # The first run runs everything and collects the coverage later runs select by.
    assert [" --testmon-noselect " in command for command in pytest_commands(laptop)] == [True]
    assert lines[0] == "unit tests (all): 3 passed in 0.1s"

    assert stages.run_unit_tests(laptop, force=False, dry=False, echo=lines.append) is False
    assert len(pytest_commands(laptop)) == 1
    assert lines[1].startswith("unit tests: up to date (passed at ")
    assert "`invoke test --force`" in lines[1]

    # One byte of project code: the tests it can affect, and every subprocess test.
    (checkout / "app" / "routes.py").write_text("ANSWER = 43\n")
    assert stages.run_unit_tests(laptop, force=False, dry=False, echo=lines.append) is True
    affected = pytest_commands(laptop)[1:]
    assert [" --testmon " in affected[0], "-m subprocess_project_code" in affected[1]] == [
        True, True]
    assert lines[2].startswith("unit tests (the ones the changed code can affect): ")

    # One byte of a data input (no coverage sees a file being read): everything again.
    (checkout / "requirements" / "image.lock").write_text("flask==3.1\n")
    stages.run_unit_tests(laptop, force=False, dry=False, echo=lines.append)
    assert " --testmon-noselect " in pytest_commands(laptop)[-1]

    # --force: everything, whatever the records say.
    stages.run_unit_tests(laptop, force=True, dry=False, echo=lines.append)
    assert " --testmon-noselect " in pytest_commands(laptop)[-1]
    assert len(pytest_commands(laptop)) == 5


def test_in_ci_the_whole_suite_runs_without_coverage(checkout, monkeypatch):
    monkeypatch.setenv("TF_BUILD", "True")
    run = unit_test_cache.plan_run(force=False, environ={"TF_BUILD": "True"})
    assert len(run.commands) == 1 and "--testmon" not in run.commands[0]
    assert run.scope == "all" and run.collects_coverage is False


def test_nothing_affected_is_a_pass_not_an_error(laptop, checkout):
    stages.run_unit_tests(laptop, force=False, dry=False, echo=lambda line: None)
    (checkout / "app" / "routes.py").write_text("ANSWER = 44\n")
    laptop.run.side_effect = lambda command, **kwargs: Result(
        stdout="no tests ran in 0.1s\n", exited=5)
    assert stages.run_unit_tests(laptop, force=False, dry=False, echo=lambda line: None)
    assert unit_test_cache.passed_run(unit_test_cache.inputs_digest()) is not None


def test_a_fresh_agent_has_no_record_and_runs_them(checkout, monkeypatch):
    monkeypatch.setenv("CI", "true")
    assert unit_test_cache.passed_run(unit_test_cache.inputs_digest()) is None
    c = MockContext(run={PYTEST_COMMAND: Result(stdout="3 passed\n")}, repeat=True)
    assert stages.run_unit_tests(c, force=False, dry=False, echo=lambda line: None) is True


def test_a_failure_forgets_the_pass_and_stops(checkout, monkeypatch):
    monkeypatch.setenv("CI", "true")
    c = MockContext(run={PYTEST_COMMAND: [Result(stdout="3 passed\n"),
                                                Result(stdout="1 failed\n", exited=1),
                                                Result(stdout="3 passed\n")]})
    stages.run_unit_tests(c, force=False, dry=False, echo=lambda line: None)
    (checkout / "app" / "routes.py").write_text("ANSWER = 0\n")
    with pytest.raises(PipelineError, match="unit tests failed"):
        stages.run_unit_tests(c, force=False, dry=False, echo=lambda line: None)
    assert not unit_test_cache.UNIT_RECORD.exists()
    # Put back as it was when they passed: the earlier pass was forgotten, so they run.
    (checkout / "app" / "routes.py").write_text("ANSWER = 42\n")
    assert stages.run_unit_tests(c, force=False, dry=False, echo=lambda line: None) is True


def test_an_unreadable_record_means_run_them(checkout):
    unit_test_cache.UNIT_RECORD.parent.mkdir(parents=True)
    unit_test_cache.UNIT_RECORD.write_text("{not json")
    assert unit_test_cache.passed_run(unit_test_cache.inputs_digest()) is None


# --- the container contract test ------------------------------------------------------


def record_with(image_id, name, contract):
    from modelship.release_record import ReleaseRecord

    data = {
        "image": {"id": image_id, "name": name, "repository": "digits-api", "tag": "t",
                  "inputs": "i" * 64},
        "model": {"name": "digits", "version": "1", "sha256": "a" * 64,
                  "golden": [{"instance": [0.0], "label": 1}]},
        "source": {"revision": "0123abcd" * 5, "dirty": False},
    }
    if contract:
        data["contract_test"] = {"image": contract}
    return ReleaseRecord.model_validate(data)


@pytest.fixture
def record_dir(tmp_path, monkeypatch):
    monkeypatch.setattr("modelship.stage_files.BUILD_ROOT", tmp_path / "build")
    return tmp_path / "build"


def test_the_contract_test_is_skipped_only_for_the_image_it_passed_for(record_dir, monkeypatch):
    ran = []
    monkeypatch.setattr("modelship.contract_check.run_contract",
                        lambda client, image, metadata, echo, contract: ran.append(image))
    monkeypatch.setattr("modelship.engine.docker_client", lambda: object())
    settings = SimpleNamespace(contract=None)  # only the app's contract is read
    release_record.save(record_with("sha256:" + "1" * 64, "digits-api:t", "sha256:" + "1" * 64))
    outcome = stages.test(MockContext(), settings, unit=False, dry=False, echo=print)
    assert ran == [] and outcome.status == "up to date"
    assert "already passed" in outcome.line

    release_record.save(record_with("sha256:" + "2" * 64, "digits-api:t", "sha256:" + "1" * 64))
    outcome = stages.test(MockContext(), settings, unit=False, dry=False, echo=print)
    assert ran == ["sha256:" + "2" * 64] and outcome.status == "ran"
    assert release_record.load().contract_test.image == "sha256:" + "2" * 64

    outcome = stages.test(MockContext(), settings, unit=False, force=True, dry=False, echo=print)
    assert len(ran) == 2


def test_a_broken_selection_falls_back_to_running_everything(laptop, checkout):
    stages.run_unit_tests(laptop, force=False, dry=False, echo=lambda line: None)
    (checkout / "app" / "routes.py").write_text("ANSWER = 45\n")

    def run(command, **kwargs):
        if "--testmon" in command:
            return Result(stdout="INTERNALERROR> sqlite3.DatabaseError\n", exited=3)
        return Result(stdout="3 passed\n")

    laptop.run.side_effect = run
    lines = []
    assert stages.run_unit_tests(laptop, force=False, dry=False, echo=lines.append)
    assert lines[0] == "unit tests: test selection failed (pytest-testmon), running all of them"
    assert lines[1] == "unit tests (all): 3 passed"
    assert "--testmon" not in pytest_commands(laptop)[-1]
    assert not unit_test_cache.TESTMON_DATA.exists()
