"""`invoke ci.check`: the real ci/ folder passes, and each kind of mistake is caught."""

import textwrap

import pytest
from invoke import Collection, Context, Exit, task

from modelship import pipeline_check, stage_files
from modelship.pipeline_check import check

ENVIRONMENTS = ("local", "dev", "staging", "prod")


@pytest.fixture(scope="module")
def namespace(tasks_namespace):
    """tasks.py's collection, which its ci.check task passes to the check."""
    return tasks_namespace


@pytest.fixture
def ci_dir(tmp_path):
    folder = tmp_path / "ci"
    (folder / "templates").mkdir(parents=True)
    return folder


def write(folder, name, text):
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def steps_pipeline(*scripts):
    """A schema-valid pipeline whose steps run the given bash scripts."""
    steps = "".join(
        "  - script: |\n" + "".join(f"      {line}\n" for line in script.splitlines())
        for script in scripts
    )
    return f"trigger: none\nsteps:\n{steps}"


def messages(problems):
    return [str(problem) for problem in problems]


def test_the_projects_pipeline_files_pass(namespace):
    assert messages(check(namespace=namespace, environments=ENVIRONMENTS)) == []


def test_ci_check_task_passes_on_the_real_folder(namespace, capsys):
    namespace["ci.check"](Context())

    assert "pipeline files valid" in capsys.readouterr().out


def test_ci_check_task_fails_and_lists_each_problem(namespace, ci_dir, monkeypatch, capsys):
    write(ci_dir, "azure-pipelines.yml", steps_pipeline("set -euo pipefail\ninvoke nosuchtask"))
    monkeypatch.setattr(pipeline_check, "CI_DIR", ci_dir)

    with pytest.raises(Exit) as failure:
        namespace["ci.check"](Context())

    assert failure.value.code == 1
    assert "1 problem(s)" in str(failure.value.message)
    assert "azure-pipelines.yml:5: `invoke nosuchtask`: No idea what 'nosuchtask' is!" \
        in capsys.readouterr().out


def test_unknown_task_name_fails_with_file_and_line(namespace, ci_dir):
    write(ci_dir, "azure-pipelines.yml",
          steps_pipeline("set -euo pipefail\n.venv/bin/invoke fetch-model --env=dev\n"
                         ".venv/bin/invoke deploy-everything --env=dev"))

    problems = check(ci_dir, namespace, ENVIRONMENTS)

    assert len(problems) == 1
    assert problems[0].line == 6
    assert "No idea what 'deploy-everything' is!" in problems[0].message


def test_unknown_flag_fails(namespace, ci_dir):
    write(ci_dir, "azure-pipelines.yml",
          steps_pipeline("set -euo pipefail\ninvoke build --env=dev --no-cache-please"))

    assert ["No idea what '--no-cache-please' is!" in m for m in messages(check(
        ci_dir, namespace, ENVIRONMENTS))] == [True]


def test_flag_of_another_task_fails(namespace, ci_dir):
    # --unit belongs to `test`; on `push` it is an error a pipeline run would hit.
    write(ci_dir, "azure-pipelines.yml", steps_pipeline("set -euo pipefail\ninvoke push --unit"))

    assert any("'--unit'" in m for m in messages(check(ci_dir, namespace, ENVIRONMENTS)))


def test_flag_missing_its_value_fails(namespace, ci_dir):
    write(ci_dir, "azure-pipelines.yml", steps_pipeline("set -euo pipefail\ninvoke render --env"))

    assert any("needed value" in m for m in messages(check(ci_dir, namespace, ENVIRONMENTS)))


def test_environment_missing_from_invoke_yaml_fails(namespace, ci_dir):
    write(ci_dir, "azure-pipelines.yml",
          steps_pipeline("set -euo pipefail\ninvoke push --env=qa"))

    assert any("environment 'qa' is not in invoke.yaml" in m
               for m in messages(check(ci_dir, namespace, ENVIRONMENTS)))


def test_task_name_from_an_expression_cannot_be_checked(namespace, ci_dir):
    write(ci_dir, "azure-pipelines.yml",
          steps_pipeline("set -euo pipefail\ninvoke ${{ parameters.task }} --env=dev"))

    assert any("task names must be literal" in m
               for m in messages(check(ci_dir, namespace, ENVIRONMENTS)))


def test_calls_inside_task_inputs_chains_and_continuations_are_all_checked(namespace, ci_dir):
    # No pull-request builds: the service connection is then not this test's business.
    write(ci_dir, "azure-pipelines.yml", """
        trigger: none
        pr: none
        steps:
          - task: AzureCLI@2
            inputs:
              azureSubscription: modelship-dev
              scriptType: bash
              scriptLocation: inlineScript
              inlineScript: |
                set -euo pipefail
                # invoke bogus-in-a-comment is not a call
                PYTEST_ADDOPTS=-x .venv/bin/invoke aks.credentials --env=$(env) \\
                  apply --env=${{ parameters.env }} --bogus-flag && invoke frobnicate
    """)

    found = messages(check(ci_dir, namespace, ENVIRONMENTS))

    assert len(found) == 2
    assert "azure-pipelines.yml:12:" in found[0] and "'--bogus-flag'" in found[0]
    assert "azure-pipelines.yml:12:" in found[1] and "'frobnicate'" in found[1]


def test_schema_invalid_file_fails(namespace, ci_dir):
    write(ci_dir, "azure-pipelines.yml", """
        trigger: none
        steps:
          - script: invoke build
            timeoutInMinute: 10
    """)

    problems = messages(check(ci_dir, namespace, ENVIRONMENTS))

    assert any("vendor.azure-pipelines" in m and "timeoutInMinute" in m for m in problems)


def test_unquoted_boolean_is_explained(namespace, ci_dir):
    write(ci_dir, "azure-pipelines.yml", """
        trigger: none
        schedules:
          - cron: "0 0 * * *"
            branches:
              include: [main]
            always: true
        steps:
          - script: echo nothing
    """)

    problems = messages(check(ci_dir, namespace, ENVIRONMENTS))

    assert any("always" in m and "quote it" in m for m in problems)


def test_unparsable_yaml_fails(namespace, ci_dir):
    write(ci_dir, "azure-pipelines.yml", "steps: [\n")

    assert any("not valid YAML" in m for m in messages(check(ci_dir, namespace, ENVIRONMENTS)))


def test_templates_with_expressions_are_validated(namespace, ci_dir):
    write(ci_dir, "azure-pipelines.yml", steps_pipeline("set -euo pipefail\necho hello"))
    write(ci_dir / "templates", "push-steps.yml", """
        parameters:
          - name: environments
            type: object
        steps:
          - ${{ each env in parameters.environments }}:
              - script: |
                  set -euo pipefail
                  invoke push --env=${{ env }}
                displayName: push ${{ env }}
                retryCountOnTaskFailure: "2"
    """)
    bad = write(ci_dir / "templates", "bad-steps.yml", """
        steps:
          - ${{ if eq(parameters.x, 'y') }}:
              - script: |
                  set -euo pipefail
                  invoke push
                continueOnErrors: true
    """)

    problems = check(ci_dir, namespace, ENVIRONMENTS)

    assert [(p.path.name, "continueOnErrors" in p.message) for p in problems] == \
        [(bad.name, True)], messages(problems)


def test_shell_step_without_fail_fast_fails(namespace, ci_dir):
    write(ci_dir, "azure-pipelines.yml", steps_pipeline("invoke fetch-model\ninvoke build"))

    problems = messages(check(ci_dir, namespace, ENVIRONMENTS))

    assert problems == [f"{ci_dir / 'azure-pipelines.yml'}:4: shell step does not start with "
                        "`set -euo pipefail`: a failing command in the middle would not stop it"]


def test_a_task_added_to_the_collection_is_known_at_once(ci_dir, monkeypatch):
    @task(help={"fresh_flag": "A flag that did not exist yesterday."})
    def freshly_added(c, fresh_flag=False):
        """A task added by another change."""

    # The change that adds a task declares its files too (tests/unit/test_handoff_check.py).
    monkeypatch.setitem(stage_files.TASK_FILES, "freshly-added", stage_files.TaskFiles())
    write(ci_dir, "azure-pipelines.yml",
          steps_pipeline("set -euo pipefail\ninvoke freshly-added --fresh-flag"))

    assert check(ci_dir, Collection(freshly_added)) == []
    assert check(ci_dir, Collection()) != []


def test_a_task_without_declared_files_cannot_be_proven_and_fails(ci_dir):
    @task
    def undeclared(c):
        """A task nobody added to modelship/stage_files.py."""

    write(ci_dir, "azure-pipelines.yml", steps_pipeline("set -euo pipefail\ninvoke undeclared"))

    assert messages(check(ci_dir, Collection(undeclared))) == [
        f"{ci_dir / 'azure-pipelines.yml'}:5: job Job: `invoke undeclared`: the task declares "
        "no files in modelship/stage_files.py TASK_FILES, so what it needs cannot be checked"]


def test_empty_folder_is_a_problem(namespace, tmp_path):
    assert "no pipeline files" in messages(check(tmp_path, namespace))[0]


def test_variables_template_is_validated_though_the_schema_lacks_that_shape(namespace, ci_dir):
    # The vendored schema wants stages/jobs/steps/extends at the top, which a valid
    # variables template has none of; ci.check validates its variables instead.
    write(ci_dir, "azure-pipelines.yml", steps_pipeline("set -euo pipefail\necho hello"))
    write(ci_dir / "templates", "variables.yml", """
        parameters:
          - name: env
            type: string
        variables:
          - name: kubernetesContext
            value: aks-modelship-${{ parameters.env }}
    """)
    typo = write(ci_dir / "templates", "variables-typo.yml", """
        variables:
          - name: kubernetesContext
            valeu: aks-modelship-dev
    """)

    problems = check(ci_dir, namespace, ENVIRONMENTS)

    assert [(p.path, "'valeu' was unexpected" in p.message) for p in problems] == [(typo, True)]
