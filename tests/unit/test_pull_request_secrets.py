"""`invoke ci.check` refuses a pipeline where a secret reaches a step that pull requests run.

A pull request's build runs the pull request's own code, so each test below hands a secret
to such a step in a copy of the real ci/ folder, the way an edit could, and expects one line
naming the file, the job, the step and the secret. The real folder passes.
"""

import shutil

import pytest
from invoke import Context, Exit

from modelship import pipeline_check
from modelship.pipeline_check import CI_DIR, check, pull_request_secret_problems
from modelship.pipeline_check.conditions import may_run_for_pull_requests

ENVIRONMENTS = ("local", "dev", "staging", "prod")
GETS = "runs in pull-request builds and gets"


@pytest.fixture(scope="module")
def namespace(tasks_namespace):
    return tasks_namespace


@pytest.fixture
def ci_copy(tmp_path):
    return shutil.copytree(CI_DIR, tmp_path / "ci")


def edit(path, old, new):
    text = path.read_text()
    assert old in text, f"{path.name} no longer holds {old!r}: update this test"
    path.write_text(text.replace(old, new, 1))


def lines(problems):
    return [str(problem) for problem in problems]


def build_job(ci_copy):
    return ci_copy / "templates" / "build-job.yml"


def test_the_projects_pipeline_gives_pull_requests_no_secret():
    assert lines(pull_request_secret_problems(CI_DIR)) == []


def test_the_push_token_mapped_into_build_is_refused_naming_file_job_step_and_secret(
        namespace, ci_copy):
    # The audit's finding: `invoke build` with the prod registry login and no PR condition.
    edit(build_job(ci_copy), """        env:
          PYTEST_ADDOPTS""", """        env:
          REGISTRY_PASSWORD: $(registry-${{ parameters.modelEnv }}-password)
          PYTEST_ADDOPTS""")

    problems = check(ci_copy, namespace, ENVIRONMENTS)

    assert len(problems) == 1, lines(problems)
    line = str(problems[0])
    assert line.startswith(f"{build_job(ci_copy)}:{problems[0].line}: job Build/Build: step "
                           f"'invoke test' {GETS} $(registry-prod-password) (env "
                           "REGISTRY_PASSWORD), which may be secret")
    assert "REGISTRY_PASSWORD" in build_job(ci_copy).read_text().splitlines()[
        problems[0].line - 1]
    assert "\n" not in line


def test_the_build_service_connection_in_fetch_model_is_refused(ci_copy):
    edit(build_job(ci_copy), """          azureSubscription: ${{ parameters.pullOnlyServiceConnection }}
          scriptType: bash
          scriptLocation: inlineScript
          inlineScript: |
            set -euo pipefail
            .venv/bin/invoke fetch-model""", """          azureSubscription: modelship-build
          scriptType: bash
          scriptLocation: inlineScript
          inlineScript: |
            set -euo pipefail
            .venv/bin/invoke fetch-model""")

    assert lines(pull_request_secret_problems(ci_copy)) == [
        f"{build_job(ci_copy)}:29: job Build/Build: step 'invoke fetch-model --env=prod' {GETS} "
        "service connection 'modelship-build' (input azureSubscription; only 'modelship-pull' "
        "(pullOnlyServiceConnection) may reach pull-request steps). Keep it out of the step, or "
        "give the step, its job or its stage the condition "
        "ne(variables['Build.Reason'], 'PullRequest')"]


def test_without_a_declared_pull_only_connection_no_connection_may_reach_a_pr_step(ci_copy):
    edit(ci_copy / "azure-pipelines.yml", "  - name: pullOnlyServiceConnection\n",
         "  - name: readerServiceConnection\n")
    edit(ci_copy / "azure-pipelines.yml", "${{ variables.pullOnlyServiceConnection }}",
         "${{ variables.readerServiceConnection }}")

    found = lines(pull_request_secret_problems(ci_copy))

    assert [line.split(f" {GETS} ")[0].split(": ", 1)[1] for line in found] == [
        "job Build/Build: step 'invoke fetch-model --env=prod'",
        "job Build/Build: step 'invoke build'", "job Build/Build: step 'invoke test'"]
    assert all("no pullOnlyServiceConnection is declared" in line for line in found)


def test_a_docker_task_with_a_registry_connection_is_refused(ci_copy):
    edit(build_job(ci_copy), "      - task: PublishTestResults@2", """      - task: Docker@2
        displayName: docker login
        inputs:
          command: login
          containerRegistry: acr-push
      - task: PublishTestResults@2""")

    found = lines(pull_request_secret_problems(ci_copy))

    assert len(found) == 1
    assert f"step 'docker login' {GETS} service connection 'acr-push' (input containerRegistry" \
        in found[0]


@pytest.mark.parametrize("how", [
    "$(registry-prod-password)",
    "${{ variables['registry-prod-password'] }}",
])
def test_a_group_variable_written_into_the_script_itself_is_refused(ci_copy, how):
    edit(build_job(ci_copy), ".venv/bin/invoke ci.check\n",
         f".venv/bin/invoke ci.check\n          echo {how} >/dev/null\n")

    found = lines(pull_request_secret_problems(ci_copy))

    assert len(found) == 1, found
    assert f"step 'invoke ci.check' {GETS} $(registry-prod-password) (script)" in found[0]


def test_a_job_variable_that_copies_a_group_variable_is_refused_where_used(ci_copy):
    edit(build_job(ci_copy), "  - job: Build\n", "  - job: Build\n    variables:\n"
         "      - name: token\n        value: $[ variables['registry-prod-password'] ]\n"
         "      - name: plain\n        value: digits\n")
    edit(build_job(ci_copy), "PYTEST_ADDOPTS:", "TOKEN: $(token)\n          PLAIN: $(plain)\n"
                                                "          PYTEST_ADDOPTS:")

    found = lines(pull_request_secret_problems(ci_copy))

    assert len(found) == 1, found
    assert f"step 'invoke test' {GETS} $(token) (env TOKEN), which may be secret" in found[0]


def test_the_access_token_is_a_secret(ci_copy):
    edit(build_job(ci_copy), "PYTEST_ADDOPTS:", "SYSTEM_ACCESSTOKEN: $(System.AccessToken)\n"
                                                "          PYTEST_ADDOPTS:")

    found = lines(pull_request_secret_problems(ci_copy))

    assert len(found) == 1
    assert f"step 'invoke test' {GETS} $(System.AccessToken) (env SYSTEM_ACCESSTOKEN), a " \
        "secret predefined variable" in found[0]


def test_a_checkout_that_keeps_the_token_is_refused(ci_copy):
    setup = ci_copy / "templates" / "setup-steps.yml"
    edit(setup, "  - checkout: self\n", "  - checkout: self\n    persistCredentials: true\n")

    found = lines(pull_request_secret_problems(ci_copy))

    # Only Build runs for pull requests: ModelCheck and the Deploy stages exclude them.
    assert found == [f"{setup}:4: job Build/Build: step 'checkout: self' {GETS} the job's access "
                     "token (checkout with persistCredentials: true leaves it in .git/config). "
                     "Keep it out of the step, or give the step, its job or its stage the "
                     "condition ne(variables['Build.Reason'], 'PullRequest')"]


def test_push_without_its_pull_request_condition_is_refused_for_each_environment(ci_copy):
    edit(build_job(ci_copy), """            displayName: invoke push --env=${{ env }}
            condition: and(succeeded(), ne(variables['Build.Reason'], 'PullRequest'))""",
         """            displayName: invoke push --env=${{ env }}""")

    found = lines(pull_request_secret_problems(ci_copy))

    assert [line.split(f" {GETS} ")[1].split(" (")[0] for line in found] == [
        f"$(registry-{env}-{part})" for env in ("dev", "staging", "prod")
        for part in ("username", "password")]
    assert all("step 'invoke push --env=" in line for line in found)


def test_a_condition_that_still_lets_pull_requests_through_is_refused(ci_copy):
    edit(build_job(ci_copy), "condition: and(succeeded(), ne(variables['Build.Reason'], "
         "'PullRequest'))\n            env:",
         "condition: or(succeeded(), ne(variables['Build.Reason'], 'PullRequest'))\n"
         "            env:")

    assert len(pull_request_secret_problems(ci_copy)) == 6  # push, 3 environments x 2


def test_a_job_condition_excludes_pull_requests_for_all_its_steps(ci_copy):
    edit(build_job(ci_copy), """            displayName: invoke push --env=${{ env }}
            condition: and(succeeded(), ne(variables['Build.Reason'], 'PullRequest'))""",
         """            displayName: invoke push --env=${{ env }}""")
    edit(build_job(ci_copy), "  - job: Build\n",
         "  - job: Build\n    condition: ne(variables['Build.Reason'], 'PullRequest')\n")

    assert lines(pull_request_secret_problems(ci_copy)) == []


def test_the_model_check_stage_gets_its_connection_only_because_its_condition_excludes_prs(
        ci_copy):
    pipeline = ci_copy / "azure-pipelines.yml"
    edit(pipeline, "    condition: eq(variables['Build.Reason'], 'Schedule')\n", "")

    found = lines(pull_request_secret_problems(ci_copy))

    assert len(found) == 1
    assert f"job ModelCheck/Compare: step 'invoke model.check --env=prod' {GETS} " \
        "service connection 'modelship-build'" in found[0]
    assert found[0].startswith(f"{pipeline}:")


def test_deploy_stages_are_refused_when_nothing_keeps_pull_requests_out(ci_copy):
    template = ci_copy / "templates" / "deploy-stage.yml"
    edit(template, """      and(succeeded(), ne(variables['Build.Reason'], 'PullRequest'),
          eq(variables['Build.SourceBranch'], 'refs/heads/main'))""",
         """      eq(variables['Build.SourceBranch'], 'refs/heads/main')""")
    assert lines(pull_request_secret_problems(ci_copy)) == []  # a PR's branch is refs/pull/…

    edit(template, "eq(variables['Build.SourceBranch'], 'refs/heads/main')", "succeeded()")

    found = lines(pull_request_secret_problems(ci_copy))
    assert [line.split(": step")[0].split(": ", 1)[1] for line in found] == [
        "job Deploy_dev/Apply", "job Deploy_staging/Apply", "job Deploy_prod/Apply"]
    assert f"{GETS} service connection 'modelship-prod'" in found[-1]


def test_a_pipeline_with_pr_none_runs_no_pull_request_build(ci_copy):
    edit(build_job(ci_copy), "PYTEST_ADDOPTS:", "REGISTRY_PASSWORD: $(registry-prod-password)\n"
                                                "          PYTEST_ADDOPTS:")
    assert len(pull_request_secret_problems(ci_copy)) == 1

    edit(ci_copy / "azure-pipelines.yml", "pr:\n  branches:\n    include: [main]\n", "pr: none\n")

    assert lines(pull_request_secret_problems(ci_copy)) == []


def test_ci_check_task_fails_on_such_a_copy(namespace, ci_copy, monkeypatch, capsys):
    edit(build_job(ci_copy), "PYTEST_ADDOPTS:", "REGISTRY_PASSWORD: $(registry-prod-password)\n"
                                                "          PYTEST_ADDOPTS:")
    monkeypatch.setattr(pipeline_check, "CI_DIR", ci_copy)

    with pytest.raises(Exit) as failure:
        namespace["ci.check"](Context())

    assert "1 problem(s)" in str(failure.value.message)
    assert f"job Build/Build: step 'invoke test' {GETS} $(registry-prod-password)" \
        in capsys.readouterr().out


@pytest.mark.parametrize("condition, may_run", [
    ("ne(variables['Build.Reason'], 'PullRequest')", False),
    ("and(succeeded(), ne(variables['Build.Reason'], 'PullRequest'))", False),
    ("and(succeeded(), NE(variables['build.reason'], 'pullrequest'))", False),
    ("eq(variables['Build.Reason'], 'Schedule')", False),
    ("in(variables['Build.Reason'], 'IndividualCI', 'Manual')", False),
    ("notIn(variables['Build.Reason'], 'PullRequest', 'Schedule')", False),
    ("not(eq(variables['Build.Reason'], 'PullRequest'))", False),
    ("eq(variables['Build.SourceBranch'], 'refs/heads/main')", False),
    ("startsWith(variables['Build.SourceBranch'], 'refs/tags/')", False),
    ("succeeded()", True),
    ("eq(variables['Build.Reason'], 'PullRequest')", True),
    ("or(succeeded(), ne(variables['Build.Reason'], 'PullRequest'))", True),
    ("ne(variables['Build.Reason'], 'Schedule')", True),
    ("in(variables['Build.Reason'], 'PullRequest', 'Manual')", True),
    ("startsWith(variables['Build.SourceBranch'], 'refs/')", True),
    ("ne(variables['Build.Reason'], ${{ parameters.reason }})", True),  # cannot be read
    ("ne(variables['Build.Reason'], 'PullRequest'", True),  # unbalanced
    ("ne(variables['Build.Reason'], 'Pull''Request')", True),  # "Pull'Request" is not it
])
def test_conditions_exclude_pull_requests_only_when_false_in_every_pr_build(condition, may_run):
    assert may_run_for_pull_requests(condition) is may_run


def test_passing_the_build_connection_as_the_pull_only_parameter_is_refused_at_each_step(
        ci_copy):
    edit(ci_copy / "azure-pipelines.yml",
         "pullOnlyServiceConnection: ${{ variables.pullOnlyServiceConnection }}",
         "pullOnlyServiceConnection: ${{ variables.buildServiceConnection }}")

    found = lines(pull_request_secret_problems(ci_copy))

    assert [line.split(": job")[0].rsplit(":", 1)[0] for line in found] == [
        str(build_job(ci_copy))] * 3
    assert all(f"{GETS} service connection 'modelship-build'" in line for line in found)
