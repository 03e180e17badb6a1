"""`invoke ci.check` proves that every job in ci/ gets the files its tasks read.

Stages run on separate agents that share only pipeline artifacts. These tests break copies
of the real ci/ folder the way an edit could (a download dropped, a task removed, a stage
rewired) and expect a problem naming the job, the task and the file.
"""

import shutil
import textwrap

import pytest
from invoke import Context, Exit

from modelship import pipeline_check
from modelship.pipeline_check import CI_DIR, check, expanded_jobs, handoff_problems
from modelship.stage_files import TASK_FILES, TaskFiles, files_for

ENVIRONMENTS = ("local", "dev", "staging", "prod")
NOT_HANDED_OVER = ("but nothing earlier in this job produces it and no artifact of an earlier "
                   "stage is downloaded there")


@pytest.fixture(scope="module")
def namespace(tasks_namespace):
    return tasks_namespace


@pytest.fixture
def ci_copy(tmp_path):
    return shutil.copytree(CI_DIR, tmp_path / "ci")


def edit(path, old, new):
    text = path.read_text()
    assert old in text, f"{path.name} no longer holds {old!r}: update this test"
    path.write_text(text.replace(old, new))


def remove_step(path, display_name):
    """Delete the step with this displayName, from its `- ` line to the next step."""
    lines = path.read_text().splitlines(keepends=True)
    named = next(index for index, line in enumerate(lines)
                 if line.strip() == f"displayName: {display_name}")
    start = max(index for index in range(named + 1) if lines[index].lstrip().startswith("- "))
    indent = len(lines[start]) - len(lines[start].lstrip())
    end = start + 1
    while end < len(lines) and (not lines[end].strip()
                                or len(lines[end]) - len(lines[end].lstrip()) > indent):
        end += 1
    path.write_text("".join(lines[:start] + lines[end:]))


def messages(problems):
    return [problem.message for problem in problems]


def test_every_task_declares_its_files_and_every_declaration_is_a_task(namespace):
    assert sorted(TASK_FILES) == sorted(namespace.task_names)


def test_declared_paths_take_the_calls_environment():
    assert files_for("apply", "staging") == TaskFiles(
        reads=("build/record.json", "build/k8s/staging/"), writes=("build/record.json",))
    assert files_for("render", "dev").writes == ("build/k8s/dev/",)


def test_the_projects_pipeline_hands_every_job_what_it_reads(namespace):
    assert [str(problem) for problem in handoff_problems(CI_DIR, namespace)] == []


def test_deploy_without_the_record_download_fails_naming_job_task_and_file(namespace, ci_copy):
    template = ci_copy / "templates" / "deploy-stage.yml"
    remove_step(template, "Download build/record.json")

    problems = check(ci_copy, namespace, ENVIRONMENTS)

    assert messages(problems) == [
        f"job Deploy_{env}/Apply: `invoke apply --env={env}` reads build/record.json "
        + NOT_HANDED_OVER for env in ("dev", "staging", "prod")]
    assert {problem.path for problem in problems} == {template}
    assert ".venv/bin/invoke aks.credentials" in template.read_text().splitlines()[
        problems[0].line - 1]


def test_ci_check_task_fails_on_that_copy_naming_the_file(namespace, ci_copy, monkeypatch,
                                                         capsys):
    remove_step(ci_copy / "templates" / "deploy-stage.yml", "Download build/record.json")
    monkeypatch.setattr(pipeline_check, "CI_DIR", ci_copy)

    with pytest.raises(Exit):
        namespace["ci.check"](Context())

    printed = capsys.readouterr().out
    assert f"{ci_copy / 'templates' / 'deploy-stage.yml'}:" in printed
    assert "job Deploy_dev/Apply: `invoke apply --env=dev` reads build/record.json" in printed


def test_build_without_fetch_model_fails_naming_the_model_folder(namespace, ci_copy):
    remove_step(ci_copy / "templates" / "build-job.yml",
                "invoke fetch-model --env=${{ parameters.modelEnv }}")

    problems = handoff_problems(ci_copy, namespace)

    assert messages(problems) == [
        "job Build/Build: `invoke build --env=prod` reads build/model/ " + NOT_HANDED_OVER]


def test_downloading_an_artifact_no_stage_publishes_fails(namespace, ci_copy):
    edit(ci_copy / "templates" / "deploy-stage.yml",
         "artifactName: record\n", "artifactName: build-record\n")

    found = messages(handoff_problems(ci_copy, namespace))

    assert "job Deploy_dev/Apply: downloads artifact 'build-record', but no stage that " \
        "Deploy_dev depends on publishes it" in found
    assert "job Deploy_dev/Apply: `invoke apply --env=dev` reads build/record.json " \
        + NOT_HANDED_OVER in found


def test_downloading_from_a_stage_not_depended_on_fails(namespace, ci_copy):
    # Deploy_dev would start beside Build instead of after it.
    edit(ci_copy / "azure-pipelines.yml", "dependsOn: Build\n", "dependsOn: ModelCheck\n")

    found = messages(handoff_problems(ci_copy, namespace))

    assert found[:2] == [
        f"job Deploy_dev/Apply: downloads artifact '{artifact}', but it is published by stage "
        "Build, which stage Deploy_dev does not depend on (directly or through dependsOn)"
        for artifact in ("record", "k8s-dev")]


def test_a_download_outside_the_project_does_not_count(namespace, ci_copy):
    # The task's default target: the files land in the workspace, not where apply reads them.
    edit(ci_copy / "templates" / "deploy-stage.yml",
         "targetPath: $(Build.SourcesDirectory)/build\n", "targetPath: $(Pipeline.Workspace)\n")

    assert messages(handoff_problems(ci_copy, namespace)) == [
        f"job Deploy_{env}/Apply: `invoke apply --env={env}` reads build/record.json "
        + NOT_HANDED_OVER for env in ("dev", "staging", "prod")]


def test_publishing_manifests_nothing_rendered_fails(namespace, ci_copy):
    remove_step(ci_copy / "templates" / "build-job.yml", "invoke render --env=${{ env }}")

    found = messages(handoff_problems(ci_copy, namespace))

    assert found == [
        f"job Build/Build: publishes build/k8s/{env} as artifact 'k8s-{env}' but nothing "
        "earlier in this job produces it" for env in ("dev", "staging", "prod")]


def test_each_environment_gets_its_own_push_render_and_manifests_artifact():
    jobs = expanded_jobs(CI_DIR / "azure-pipelines.yml")

    assert [job.label for job in jobs] == [
        "ModelCheck/Compare", "Build/Build", "Deploy_dev/Apply", "Deploy_staging/Apply",
        "Deploy_prod/Apply"]
    build = jobs[1]
    names = [str(step.get("displayName")) for step in build.steps]
    assert [name for name in names if name.startswith(("invoke push", "invoke render"))] == [
        f"invoke {task} --env={env}" for env in ("dev", "staging", "prod")
        for task in ("push", "render")]
    assert {step["artifact"]: step["publish"] for step in build.steps if "publish" in step} == {
        "k8s-dev": "build/k8s/dev", "k8s-staging": "build/k8s/staging",
        "k8s-prod": "build/k8s/prod", "record": "build/record.json"}
    # modelEnv: a pipeline variable, passed on as a template parameter.
    fetch = next(step for step in build.steps if "fetch-model" in str(step.get("displayName")))
    assert ".venv/bin/invoke fetch-model --env=prod" in fetch["inputs"]["inlineScript"]


def test_building_for_dev_only_leaves_staging_without_its_manifests(namespace, ci_copy):
    edit(ci_copy / "azure-pipelines.yml",
         "environments: [dev, staging, prod]", "environments: [dev]")

    found = messages(handoff_problems(ci_copy, namespace))

    assert not [message for message in found if "Deploy_dev/" in message]
    assert "job Deploy_staging/Apply: downloads artifact 'k8s-staging', but no stage that " \
        "Deploy_staging depends on publishes it" in found
    assert "job Deploy_prod/Apply: `invoke apply --env=prod` reads build/k8s/prod/ " \
        + NOT_HANDED_OVER in found


def write(folder, name, text):
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def deployment_pipeline(hooks):
    """Build publishes the record; stage Ship's deployment job runs the given lifecycle hooks."""
    return textwrap.dedent("""
        trigger: none
        stages:
          - stage: Build
            jobs:
              - job: Build
                steps:
                  - script: |
                      set -euo pipefail
                      invoke fetch-model build --env=dev
                  - publish: build/record.json
                    artifact: record
          - stage: Ship
            jobs:
              - deployment: Push
                environment: modelship-dev
                strategy:
                  runOnce:
    """).lstrip() + textwrap.indent(textwrap.dedent(hooks).lstrip(), " " * 12)


DOWNLOAD_RECORD = """
    - download: current
      artifact: record
      path: $(Build.SourcesDirectory)/build
"""
PUSH = """
    - script: |
        set -euo pipefail
        invoke push --env=dev
"""


def test_a_deployments_lifecycle_hooks_run_on_separate_agents(namespace, tmp_path):
    ci_dir = tmp_path / "ci"
    hooks = "preDeploy:\n  steps:" + textwrap.indent(DOWNLOAD_RECORD, "  ") \
        + "deploy:\n  steps:" + textwrap.indent(PUSH, "  ")
    write(ci_dir, "azure-pipelines.yml", deployment_pipeline(hooks))

    assert messages(handoff_problems(ci_dir, namespace)) == [
        "job Ship/Push: `invoke push --env=dev` reads build/record.json " + NOT_HANDED_OVER]

    hooks = "deploy:\n  steps:" + textwrap.indent(DOWNLOAD_RECORD + PUSH.lstrip("\n"), "  ")
    write(ci_dir, "azure-pipelines.yml", deployment_pipeline(hooks))

    assert messages(handoff_problems(ci_dir, namespace)) == []


def test_template_parameters_take_their_defaults_and_templates_must_exist(namespace, tmp_path):
    ci_dir = tmp_path / "ci"
    write(ci_dir, "templates/render-steps.yml", """
        parameters:
          - name: env
            type: string
            default: staging
        steps:
          - script: |
              set -euo pipefail
              invoke fetch-model build render --env=${{ parameters.env }}
              invoke diff --env=${{ parameters.env }}
    """)
    write(ci_dir, "azure-pipelines.yml", """
        trigger: none
        steps:
          - template: templates/render-steps.yml
          - template: templates/missing-steps.yml
          - script: |
              set -euo pipefail
              invoke diff --env=dev
    """)

    found = [str(problem) for problem in handoff_problems(ci_dir, namespace)]

    assert found == [
        f"{ci_dir / 'azure-pipelines.yml'}:4: template templates/missing-steps.yml not found "
        f"at {ci_dir / 'templates' / 'missing-steps.yml'}",
        f"{ci_dir / 'azure-pipelines.yml'}:7: job Job: `invoke diff --env=dev` reads "
        "build/k8s/dev/ " + NOT_HANDED_OVER]
