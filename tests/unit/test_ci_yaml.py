"""The Azure Pipelines definition in ci/ does what the release process promises.

Build once, promote the same artifacts through approved environments, run only Invoke tasks,
keep secrets out of the YAML, and let a scheduled run deploy a newly published model.
"""

import re

import pytest
import yaml

from modelship import model_check
from modelship.pipeline_check import CI_DIR, invoke_calls, pipeline_files, shell_scripts
from modelship.settings import PROJECT_ROOT

TEMPLATES = CI_DIR / "templates"
ENVIRONMENTS = ["dev", "staging", "prod"]
NOT_FOR_PULL_REQUESTS = "ne(variables['Build.Reason'], 'PullRequest')"


def load(path):
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def pipeline():
    return load(CI_DIR / "azure-pipelines.yml")


@pytest.fixture(scope="module")
def build_job():
    return load(TEMPLATES / "build-job.yml")["jobs"][0]


@pytest.fixture(scope="module")
def deploy_stage():
    return load(TEMPLATES / "deploy-stage.yml")["stages"][0]


def stage_names(pipeline):
    names = []
    for stage in pipeline["stages"]:
        if "template" in stage:
            names.append(f"Deploy_{stage['parameters']['env']}")
        else:
            names.append(stage["stage"])
    return names


def flatten_each(steps):
    """Steps with `${{ each }}` blocks unnested, as Azure Pipelines expands them."""
    for step in steps:
        key = next(iter(step))
        if key.startswith("${{"):
            yield from flatten_each(step[key])
        else:
            yield step


def deploy_steps(deploy_stage):
    return deploy_stage["jobs"][0]["strategy"]["runOnce"]["deploy"]["steps"]


def test_runs_on_main_and_validates_pull_requests(pipeline):
    assert pipeline["trigger"]["branches"]["include"] == ["main"]
    assert pipeline["pr"]["branches"]["include"] == ["main"]


def test_stages_promote_build_through_dev_staging_prod(pipeline):
    assert stage_names(pipeline) == [
        "ModelCheck", "Build", "Deploy_dev", "Deploy_staging", "Deploy_prod"]
    depends = [stage.get("dependsOn") or stage["parameters"]["dependsOn"]
               for stage in pipeline["stages"][1:]]
    assert depends == ["ModelCheck", "Build", "Deploy_dev", "Deploy_staging"]


def test_build_fetches_builds_tests_then_pushes_and_renders_every_environment(pipeline,
                                                                               build_job):
    build_stage = pipeline["stages"][1]
    assert build_stage["jobs"][0]["template"] == "templates/build-job.yml"
    assert build_stage["jobs"][0]["parameters"]["environments"] == ENVIRONMENTS
    tasks = [call.argv[0] for script in shell_scripts(TEMPLATES / "build-job.yml")
             for call in invoke_calls(script)]
    assert tasks == ["ci.check", "fetch-model", "build", "test", "push", "render"]
    per_environment = next(step for step in build_job["steps"] if next(iter(step)).startswith(
        "${{ each env in parameters.environments"))
    assert [step.get("displayName") for step in next(iter(per_environment.values()))][:2] == [
        "invoke push --env=${{ env }}", "invoke render --env=${{ env }}"]


def test_junit_results_are_published_even_when_tests_fail(build_job):
    steps = list(flatten_each(build_job["steps"]))
    test_step = next(step for step in steps if step.get("displayName") == "invoke test")
    junit = re.search(r"--junitxml=(\S+)", test_step["env"]["PYTEST_ADDOPTS"]).group(1)
    publish = next(step for step in steps if step.get("task") == "PublishTestResults@2")
    assert publish["condition"] == "succeededOrFailed()"
    assert publish["inputs"]["testResultsFormat"] == "JUnit"
    assert junit.rsplit("/", 1)[0] == publish["inputs"]["testResultsFiles"].rsplit("/", 1)[0]


def test_build_publishes_the_record_and_each_environments_manifests(build_job):
    published = {step["artifact"]: step["publish"] for step in flatten_each(build_job["steps"])
                 if "publish" in step}
    assert published == {"record": "build/record.json",
                         "k8s-${{ env }}": "build/k8s/${{ env }}"}


def test_pull_requests_push_and_deploy_nothing(build_job, deploy_stage):
    for step in flatten_each(build_job["steps"]):
        does = step.get("displayName", "") + str(step.get("publish", ""))
        if "push" in does or "render" in does or "publish" in step:
            assert NOT_FOR_PULL_REQUESTS in step["condition"], step
    assert NOT_FOR_PULL_REQUESTS in deploy_stage["condition"]
    assert "eq(variables['Build.SourceBranch'], 'refs/heads/main')" in deploy_stage["condition"]


def test_deploy_is_a_deployment_job_bound_to_an_environment(deploy_stage):
    job = deploy_stage["jobs"][0]
    assert job["deployment"] == "Apply"
    assert job["environment"] == "modelship-${{ parameters.env }}"


def test_deploy_applies_the_build_artifacts_where_apply_reads_them(deploy_stage):
    downloads = {step["inputs"]["artifactName"]: step["inputs"]["targetPath"]
                 for step in deploy_steps(deploy_stage)
                 if step.get("task") == "DownloadPipelineArtifact@2"}
    root = "$(Build.SourcesDirectory)/"
    # `record` holds record.json, `k8s-<env>` the folder's files: both land where build wrote them.
    assert downloads == {"record": root + "build",
                         "k8s-${{ parameters.env }}": root + "build/k8s/${{ parameters.env }}"}


def test_deploy_never_rebuilds(deploy_stage):
    calls = [call.argv for script in shell_scripts(TEMPLATES / "deploy-stage.yml")
             for call in invoke_calls(script)]
    tasks = [word for argv in calls for word in argv if not word.startswith("-")]
    assert "apply" in tasks
    assert not {"fetch-model", "build", "push", "render", "deploy"} & set(tasks)
    assert ["--env=${{ parameters.env }}"] * 3 == [
        word for argv in calls for word in argv if word.startswith("--env")]


def test_every_shell_step_runs_only_invoke_or_the_setup_script():
    allowed_other = {"set -euo pipefail", "bash scripts/setup.sh"}
    for path in pipeline_files():
        for script in shell_scripts(path):
            lines = [line.strip() for line in script.text.replace("\\\n", " ").splitlines()
                     if line.strip() and not line.strip().startswith("#")]
            for line in lines:
                assert line in allowed_other or re.match(r"^\.venv/bin/invoke ", line), \
                    f"{path.name}:{script.line}: {line}"


def test_secrets_reach_steps_only_through_env_from_the_variable_group(pipeline, build_job):
    assert {"group": "modelship-registry"} in pipeline["variables"]
    mapped = 0
    for step in flatten_each(build_job["steps"]):
        for name, value in (step.get("env") or {}).items():
            if "PASSWORD" in name or "USERNAME" in name:
                mapped += 1
                assert re.fullmatch(r"\$\(registry-[A-Za-z${} .]+-(username|password)\)", value), \
                    (name, value)
    assert mapped == 2  # push only (once per environment): build and test hold no push token
    text = "\n".join(path.read_text() for path in pipeline_files())
    assert "AZURE_STORAGE_CONNECTION_STRING" not in text
    assert "AccountKey" not in text
    assert not re.search(r"echo[^\n]*\$\(registry", text)


def test_no_registry_host_is_written_into_the_pipeline():
    invoke_yaml = load(PROJECT_ROOT / "invoke.yaml")["modelship"]["environments"]
    hosts = {env["registry"]["host"] for env in invoke_yaml.values() if env.get("registry")}
    text = "\n".join(path.read_text() for path in pipeline_files())
    assert hosts and not [host for host in hosts if host in text]


def test_cloud_access_goes_through_service_connections(pipeline, build_job, deploy_stage):
    build_steps = [step for step in flatten_each(build_job["steps"])
                   if step.get("task") == "AzureCLI@2"]
    # What pull requests run reads the model store and pulls images, with the pull-only identity.
    assert [step["displayName"].split(" ")[1] for step in build_steps] == [
        "fetch-model", "build", "test"]
    for step in build_steps:
        assert step["inputs"]["azureSubscription"] == \
            "${{ parameters.pullOnlyServiceConnection }}"
    build_stage = pipeline["stages"][1]
    assert build_stage["jobs"][0]["parameters"]["pullOnlyServiceConnection"] == \
        "${{ variables.pullOnlyServiceConnection }}"
    apply = [step for step in deploy_steps(deploy_stage) if step.get("task") == "AzureCLI@2"]
    assert [step["inputs"]["azureSubscription"] for step in apply] == [
        "${{ parameters.serviceConnection }}"]


def test_scheduled_run_deploys_only_when_the_model_changed(pipeline):
    schedule = pipeline["schedules"][0]
    assert schedule["always"] == "true"  # no code change is needed for a run
    check_stage, build_stage = pipeline["stages"][:2]
    assert check_stage["condition"] == "eq(variables['Build.Reason'], 'Schedule')"
    job = check_stage["jobs"][0]
    step = next(step for step in job["steps"] if step.get("task") == "AzureCLI@2")
    assert "model.check --env=$(modelEnv)" in step["inputs"]["inlineScript"]
    # The stage condition reads the variable model.check sets, under the job and step names.
    emitted = model_check.pipeline_variables(model_check.Comparison(
        "prod", "digits", model_check.ModelRef("1", "0" * 64), None))
    assert "variable=changed;isOutput=true]" in emitted[0]
    reference = f"dependencies.ModelCheck.outputs['{job['job']}.{step['name']}.changed']"
    assert f"eq({reference}, 'true')" in build_stage["condition"]
    assert "ne(variables['Build.Reason'], 'Schedule')" in build_stage["condition"]


def test_model_check_compares_the_environment_the_build_fetches_for(pipeline):
    variables = {item["name"]: item["value"] for item in pipeline["variables"] if "name" in item}
    assert variables["modelEnv"] == "prod"
    assert pipeline["stages"][1]["jobs"][0]["parameters"]["modelEnv"] == \
        "${{ variables.modelEnv }}"


def test_a_scheduled_model_redeploy_goes_out_as_a_canary_every_other_run_rolls(pipeline,
                                                                               deploy_stage):
    conditional = {key: value for item in pipeline["variables"] if "name" not in item
                   and "group" not in item for key, value in item.items()}
    assert conditional == {
        "${{ if eq(variables['Build.Reason'], 'Schedule') }}": [
            {"name": "releaseStrategy", "value": "canary"}],
        "${{ else }}": [{"name": "releaseStrategy", "value": "rolling"}]}
    apply = [step for job in deploy_stage["jobs"]
             for step in job["strategy"]["runOnce"]["deploy"]["steps"]
             if step.get("task") == "AzureCLI@2"]
    assert len(apply) == 1
    assert re.search(r"apply --env=\$\{\{ parameters\.env \}\} --strategy=\$\(releaseStrategy\)",
                     apply[0]["inputs"]["inlineScript"])
