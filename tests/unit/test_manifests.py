"""Rendering, golden files, schema validation, checkov and `render --check`.

Renders use a fixed fake build record, so they are byte-for-byte reproducible. After an
intended template or config change, refresh the golden folders with
`MODELSHIP_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/unit/test_manifests.py` and
review the diff like any other change.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from pathlib import Path

import invoke
import pytest
import yaml

from modelship import tasks
from modelship import manifest_checks, manifests, release_record
from modelship.manifests import Release
from modelship.release_record import ReleaseRecord
from modelship.errors import PipelineError
from modelship.settings import PROJECT_ROOT, load_settings
from modelship.settings_schema import DeploymentSection

GOLDEN_DIR = Path(__file__).parent / "golden"
ENVIRONMENTS = ["local", "dev", "staging", "prod"]
DIGEST = "sha256:" + "ab" * 32
IMAGE_ID = "sha256:" + "cd" * 32


def project_config() -> invoke.Config:
    config = invoke.Config(project_location=str(PROJECT_ROOT))
    config.load_project()
    return config


def fake_record(envs=ENVIRONMENTS) -> ReleaseRecord:
    config = project_config()
    return ReleaseRecord.model_validate({
        "image": {"id": IMAGE_ID, "name": "digits-api:3f2a9c1-f1962600",
                  "repository": "digits-api", "tag": "3f2a9c1-f1962600"},
        "model": {"name": "digits", "version": "20260101.120000", "sha256": "f1962600" * 8},
        "source": {"revision": "3f2a9c1e" * 5, "dirty": False},
        "pushed": {
            env: {
                "digest": DIGEST,
                "repository": f"{load_settings(config, env).image_repository}",
                "reference": f"{load_settings(config, env).image_repository}@{DIGEST}",
            }
            for env in envs
        },
    })


def release_of(record: ReleaseRecord, env: str) -> Release:
    return Release.from_record(record, record.require_push(env))


@pytest.fixture
def record():
    return fake_record()


def settings_for(env: str, **deployment_overrides):
    settings = load_settings(project_config(), env)
    if deployment_overrides:
        deployment = settings.deployment.model_dump(exclude_unset=True)
        deployment.update(deployment_overrides)
        settings = with_deployment(settings, deployment)
    return settings


def with_deployment(settings, deployment: dict):
    """The settings with another deployment section, validated as the files' would be."""
    return settings.model_copy(update={"deployment": DeploymentSection.model_validate(deployment)})


def render_env(env: str, record: ReleaseRecord, output_dir: Path,
               **overrides) -> dict[str, dict]:
    settings = settings_for(env, **overrides)
    manifests.render(settings, release_of(record, env), output_dir=output_dir)
    return {path.name: yaml.safe_load(path.read_text()) for path in output_dir.glob("*.yaml")}


@pytest.fixture
def build_dir(tmp_path, monkeypatch):
    """settings.render_dir points into a temporary build folder, never the real one."""
    monkeypatch.setattr("modelship.stage_files.BUILD_ROOT", tmp_path / "build")
    return tmp_path / "build"


# --- golden renders ---------------------------------------------------------------------


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_render_matches_the_golden_files(env, record, tmp_path):
    rendered = tmp_path / env
    render_env(env, record, rendered)
    golden = GOLDEN_DIR / env
    if os.environ.get("MODELSHIP_UPDATE_GOLDEN"):
        shutil.rmtree(golden, ignore_errors=True)
        shutil.copytree(rendered, golden)
    differences = manifests.drift(golden, rendered)
    assert not differences, "rendering changed:\n" + "".join(differences)


def test_render_is_byte_for_byte_reproducible(record, tmp_path):
    render_env("prod", record, tmp_path / "first")
    render_env("prod", record, tmp_path / "second")
    assert manifests.drift(tmp_path / "first", tmp_path / "second") == []


def test_each_object_gets_its_own_file_with_a_header_naming_revision_and_model(record,
                                                                                tmp_path):
    objects = render_env("prod", record, tmp_path / "prod")
    assert set(objects) == {
        "configmap.yaml", "deployment.yaml", "horizontalpodautoscaler.yaml", "ingress.yaml",
        "networkpolicy.yaml", "poddisruptionbudget.yaml", "service.yaml",
        "serviceaccount.yaml",
    }
    for path in (tmp_path / "prod").glob("*.yaml"):
        head = path.read_text().splitlines()[:2]
        assert record.source.revision in head[0], path.name
        assert f"digits 20260101.120000 sha256:{record.model.sha256}" in head[1], path.name
        assert len(list(yaml.safe_load_all(path.read_text()))) == 1, path.name


def test_optional_objects_follow_the_environment_config(record, tmp_path):
    dev = render_env("dev", record, tmp_path / "dev")
    assert "ingress.yaml" not in dev and "horizontalpodautoscaler.yaml" not in dev
    assert dev["deployment.yaml"]["spec"]["replicas"] == 1
    prod = render_env("prod", record, tmp_path / "prod")
    # With an HPA the replica count is the HPA's: apply must not reset it every release.
    assert "replicas" not in prod["deployment.yaml"]["spec"]
    hpa = prod["horizontalpodautoscaler.yaml"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 10)
    ingress = prod["ingress.yaml"]["spec"]
    assert [rule["host"] for rule in ingress["rules"]] == ["digits.example.com"]
    assert ingress["tls"] == [{"hosts": ["digits.example.com"],
                               "secretName": "digits-example-com-tls"}]


def test_without_an_ingress_the_service_is_the_public_load_balancer_with_its_dns_label(
        record, tmp_path):
    dev = render_env("dev", record, tmp_path / "dev")
    assert dev["service.yaml"]["spec"]["type"] == "LoadBalancer"
    assert dev["service.yaml"]["metadata"]["annotations"] == {
        "service.beta.kubernetes.io/azure-dns-label-name": "modelship-digits-dev"}
    assert "ingress.yaml" not in dev
    # Anyone may reach the pods, but only on the HTTP port.
    assert dev["networkpolicy.yaml"]["spec"]["ingress"] == [
        {"ports": [{"port": "http", "protocol": "TCP"}]}]
    local = render_env("local", record, tmp_path / "local")["service.yaml"]
    assert "annotations" not in local["metadata"]


def test_with_an_ingress_the_service_is_cluster_internal_and_only_the_controller_connects(
        record, tmp_path):
    prod = render_env("prod", record, tmp_path / "prod")
    service = prod["service.yaml"]
    assert service["spec"]["type"] == "ClusterIP"
    assert "annotations" not in service["metadata"]
    assert prod["ingress.yaml"]["spec"]["tls"][0]["secretName"] == "digits-example-com-tls"
    assert prod["networkpolicy.yaml"]["spec"]["ingress"] == [{
        "from": [{"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": "app-routing-system"}}}],
        "ports": [{"port": "http", "protocol": "TCP"}],
    }]


def test_an_ingress_and_a_dns_label_together_are_refused_in_one_line(record, tmp_path):
    service = {"port": 80, "dns_label": "modelship-digits"}
    with pytest.raises(PipelineError) as refused:
        render_env("prod", record, tmp_path / "prod", service=service)
    assert "ClusterIP" in str(refused.value) and "\n" not in str(refused.value)
    assert not (tmp_path / "prod").exists()


# --- the Deployment ---------------------------------------------------------------------


@pytest.fixture
def prod_deployment(record, tmp_path):
    return render_env("prod", record, tmp_path / "prod")["deployment.yaml"]


def test_image_is_pinned_by_the_pushed_digest(prod_deployment, record):
    container = prod_deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == record.pushed['prod'].reference
    assert container["image"].endswith("@" + DIGEST)


def test_a_reference_without_digest_is_refused(record, tmp_path):
    release = dataclasses.replace(release_of(record, "dev"),
                                  image="crmodelshipdev.azurecr.io/digits-api:v1")
    with pytest.raises(PipelineError, match="not pinned by digest"):
        manifests.render(settings_for("dev"), release, output_dir=tmp_path / "dev")


def test_labels_and_release_annotations(prod_deployment, record):
    metadata = prod_deployment["metadata"]
    assert metadata["labels"]["app.kubernetes.io/name"] == "digits-api"
    assert metadata["labels"]["app.kubernetes.io/instance"] == "digits-api-prod"
    assert metadata["labels"]["app.kubernetes.io/version"] == "3f2a9c1-f1962600"
    assert metadata["labels"]["app.kubernetes.io/managed-by"] == "modelship"
    assert metadata["annotations"]["modelship.ai/git-revision"] == record.source.revision
    assert metadata["annotations"]["modelship.ai/model-version"] == "20260101.120000"
    assert metadata["annotations"]["modelship.ai/model-sha256"] == record.model.sha256


def test_rolling_update_keeps_capacity_and_probes_use_the_app_endpoints(prod_deployment):
    spec = prod_deployment["spec"]
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    container = spec["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert container["resources"]["limits"]["cpu"] == "2"
    assert container["resources"]["limits"]["memory"] == "1Gi"
    assert container["resources"]["requests"]["memory"] == "256Mi"


def test_pod_meets_the_restricted_pod_security_standard(prod_deployment):
    pod = prod_deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    container = pod["containers"][0]["securityContext"]
    assert container["allowPrivilegeEscalation"] is False
    assert container["readOnlyRootFilesystem"] is True
    assert container["capabilities"] == {"drop": ["ALL"]}
    mounts = {mount["name"]: mount["mountPath"] for mount in pod["containers"][0]["volumeMounts"]}
    assert mounts["tmp"] == "/tmp"
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"]


def test_api_key_is_a_mounted_secret_reference_never_a_value(record, tmp_path):
    objects = render_env("prod", record, tmp_path / "prod")
    assert all(obj["kind"] != "Secret" for obj in objects.values())
    pod = objects["deployment.yaml"]["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "api-key")
    assert volume["secret"]["secretName"] == "digits-api-key"
    env = {item["name"]: item["value"] for item in pod["containers"][0]["env"]}
    assert env["API_KEY_FILE"] == "/var/run/secrets/modelship/api-key"


def test_service_account_and_network_policy(record, tmp_path):
    objects = render_env("dev", record, tmp_path / "dev")
    assert objects["serviceaccount.yaml"]["automountServiceAccountToken"] is False
    policy = objects["networkpolicy.yaml"]["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["egress"] == []
    assert policy["ingress"] == [{"ports": [{"port": "http", "protocol": "TCP"}]}]
    assert objects["poddisruptionbudget.yaml"]["spec"]["maxUnavailable"] == 1


def config_map_reference(deployment: dict) -> str:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return container["envFrom"][0]["configMapRef"]["name"]


def test_the_config_map_is_named_by_its_content_and_the_pods_point_at_that_name(
        record, tmp_path):
    before = render_env("dev", record, tmp_path / "a")
    again = render_env("dev", record, tmp_path / "again")
    after = render_env("dev", record, tmp_path / "b", max_batch=10)
    name = before["configmap.yaml"]["metadata"]["name"]
    assert re.fullmatch(r"digits-api-config-[0-9a-f]{10}", name)
    assert before["configmap.yaml"]["immutable"] is True
    assert config_map_reference(before["deployment.yaml"]) == name
    # Same data, same name; new data, a new ConfigMap and a new pod template (a rollout).
    assert again["configmap.yaml"]["metadata"]["name"] == name
    changed = after["configmap.yaml"]["metadata"]["name"]
    assert changed != name and config_map_reference(after["deployment.yaml"]) == changed
    assert after["configmap.yaml"]["data"]["MAX_BATCH"] == "10"


def test_pods_drain_before_they_stop_within_their_grace_period(record, tmp_path):
    objects = render_env("prod", record, tmp_path / "prod", drain_seconds=12,
                         shutdown_timeout_seconds=20)
    pod = objects["deployment.yaml"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["lifecycle"]["preStop"]["exec"]["command"] == [
        "python3", "-m", "modelship_serving.drain"]
    config = objects["configmap.yaml"]["data"]
    assert (config["SHUTDOWN_DRAIN_SECONDS"], config["WORKERS_KILL_TIMEOUT_SECONDS"]) == \
        ("12", "20")
    # The drain marker lives in the pod's writable /tmp.
    assert config["METRICS_DIR"].startswith("/tmp/")
    assert pod["terminationGracePeriodSeconds"] == 12 + 20 + manifests.GRACE_MARGIN_SECONDS
    readiness = container["readinessProbe"]
    # The drain outlasts the time a failing readiness probe needs to take the pod out.
    assert readiness["periodSeconds"] * readiness["failureThreshold"] < 12


def test_replicas_are_spread_over_nodes_and_zones(prod_deployment):
    constraints = prod_deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in constraints} == {
        "kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    assert all(c["whenUnsatisfiable"] == "ScheduleAnyway" for c in constraints)


# --- strictness -------------------------------------------------------------------------


def test_a_value_missing_from_the_config_is_an_error_naming_it(record, tmp_path):
    settings = settings_for("dev")
    deployment = {k: v for k, v in settings.deployment.model_dump(exclude_unset=True).items()
                  if k != "cpu_limit"}
    settings = with_deployment(settings, deployment)
    with pytest.raises(PipelineError, match="deployment.yaml.j2 needs.*cpu_limit"):
        manifests.render(settings, release_of(record, "dev"), output_dir=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_a_failed_render_keeps_the_previous_folder(record, tmp_path):
    output = tmp_path / "dev"
    render_env("dev", record, output)
    before = sorted(p.name for p in output.iterdir())
    settings = settings_for("dev")
    broken = with_deployment(settings, {
        k: v for k, v in settings.deployment.model_dump(exclude_unset=True).items()
        if k != "service"})
    with pytest.raises(PipelineError, match="service"):
        manifests.render(broken, release_of(record, "dev"), output_dir=output)
    assert sorted(p.name for p in output.iterdir()) == before


# --- validation -------------------------------------------------------------------------


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_object_is_valid_for_the_configured_kubernetes_version(env, record, tmp_path):
    render_env(env, record, tmp_path / env)
    version = settings_for(env).kubernetes.version
    assert manifest_checks.schema_problems(tmp_path / env, version) == []


def test_schema_validation_is_strict_about_misspelt_fields(record, tmp_path):
    folder = tmp_path / "dev"
    objects = render_env("dev", record, folder)
    deployment = objects["deployment.yaml"]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    (folder / "deployment.yaml").write_text(yaml.safe_dump(deployment))
    with pytest.raises(PipelineError, match="deployment.yaml: .*readinesProbe"):
        manifest_checks.validate_schemas(folder, "1.31")


needs_checkov = pytest.mark.skipif(
    manifest_checks.find_checkov() is None,
    reason="checkov is not installed; " + manifest_checks.CHECKOV_INSTALL_HINT,
)


@needs_checkov
def test_checkov_passes_on_every_rendering_and_the_dockerfile(record, tmp_path):
    for env in ENVIRONMENTS:
        render_env(env, record, tmp_path / "all" / env)
    report = manifest_checks.run_checkov(tmp_path / "all")
    assert report.failed == [] and report.passed > 100


@needs_checkov
def test_checkov_fails_a_privileged_container(record, tmp_path):
    folder = tmp_path / "dev"
    objects = render_env("dev", record, folder)
    deployment = objects["deployment.yaml"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"].update(privileged=True, allowPrivilegeEscalation=True)
    (folder / "deployment.yaml").write_text(yaml.safe_dump(deployment))
    with pytest.raises(PipelineError, match="checkov failed .*CKV_K8S_16"):
        manifest_checks.run_checkov(folder)


# --- render --check and the task -------------------------------------------------------


def test_check_reports_no_drift_for_the_same_inputs_and_a_diff_otherwise(record, tmp_path):
    reviewed = tmp_path / "reviewed"
    render_env("staging", record, reviewed)
    settings = settings_for("staging")
    assert manifests.check(settings, release_of(record, "staging"), reviewed) == []
    changed = settings_for("staging", memory_limit="768Mi")
    differences = "".join(
        manifests.check(changed, release_of(record, "staging"), reviewed))
    assert "-            memory: 512Mi" in differences
    assert "+            memory: 768Mi" in differences


@pytest.fixture
def task_context(record, build_dir, monkeypatch):
    release_record.save(record)
    monkeypatch.setattr(manifest_checks, "find_checkov", lambda: None)
    return invoke.Context(project_config())


def test_render_task_writes_the_review_folder_and_validates_it(task_context, build_dir, capsys):
    tasks.render(task_context, env="dev")
    assert (build_dir / "k8s" / "dev" / "deployment.yaml").is_file()
    out = capsys.readouterr().out
    assert "valid against the Kubernetes 1.31 schemas" in out
    assert "AKS deployment safeguards and the restricted Pod Security Standard" in out
    assert "checkov skipped: not installed" in out


def test_render_refuses_an_image_from_outside_the_environments_registry(task_context,
                                                                       build_dir):
    tasks.render(task_context, env="dev")
    reviewed = build_dir / "k8s" / "dev"
    before = folder_bytes(reviewed)
    with pytest.raises(invoke.Exit, match="render failed: .*DS-ALLOWED-IMAGES.*"
                                          "crmodelshipdev.azurecr.io"):
        tasks.render(task_context, env="dev", image=f"registry.example.com/someone/else@{DIGEST}")
    assert folder_bytes(reviewed) == before


def test_render_refuses_a_template_that_breaks_a_safeguard(task_context, build_dir,
                                                          monkeypatch):
    templates = build_dir.parent / "templates"
    shutil.copytree(manifests.TEMPLATE_DIR, templates)
    text = (templates / "deployment.yaml.j2").read_text()
    start = text.index("          livenessProbe:")
    end = text.index("          resources:")
    (templates / "deployment.yaml.j2").write_text(text[:start] + text[end:])
    monkeypatch.setattr(manifests, "TEMPLATE_DIR", templates)
    with pytest.raises(invoke.Exit, match="render failed: .*DS-PROBES.*liveness"):
        tasks.render(task_context, env="dev")
    assert not (build_dir / "k8s" / "dev").exists()


def test_render_task_requires_checkov_when_asked(task_context):
    with pytest.raises(invoke.Exit, match="checkov is not installed"):
        tasks.render(task_context, env="dev", require_checkov=True)


def test_render_check_passes_on_the_golden_folder_and_fails_on_drift(task_context, record,
                                                                     tmp_path, capsys):
    tasks.render(task_context, env="prod", check=True, against=str(GOLDEN_DIR / "prod"))
    assert "matches" in capsys.readouterr().out
    with pytest.raises(invoke.Exit, match="differs from"):
        tasks.render(task_context, env="dev", check=True, against=str(GOLDEN_DIR / "prod"))
    assert "+++ rendered/deployment.yaml" in capsys.readouterr().out


def test_checkov_runs_without_calling_home(monkeypatch):
    monkeypatch.setenv("BC_API_KEY", "would-upload-results")
    environment = manifest_checks._checkov_environment()
    assert environment["CKV_SKIP_PACKAGE_UPDATE_CHECK"] == "true"
    assert environment["BC_SKIP_MAPPING"] == "TRUE"
    assert "BC_API_KEY" not in environment


# --- all-or-nothing, and rendering for review without a build ------------------------------


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_a_rendering_that_fails_validation_leaves_the_reviewed_folder_byte_for_byte(
        task_context, build_dir, monkeypatch):
    tasks.render(task_context, env="dev")
    reviewed = build_dir / "k8s" / "dev"
    (reviewed / "deployment.yaml").write_text("# an ops note kept while reviewing\n")
    before = folder_bytes(reviewed)

    # A template change that only schema validation catches (a misspelt field).
    templates = build_dir.parent / "templates"
    shutil.copytree(manifests.TEMPLATE_DIR, templates)
    text = (templates / "deployment.yaml.j2").read_text()
    (templates / "deployment.yaml.j2").write_text(
        text.replace("terminationGracePeriodSeconds", "terminationGracePeriodSecond", 1))
    monkeypatch.setattr(manifests, "TEMPLATE_DIR", templates)

    with pytest.raises(invoke.Exit, match="render failed: .*terminationGracePeriodSecond"):
        tasks.render(task_context, env="dev")
    assert folder_bytes(reviewed) == before
    assert sorted(p.name for p in reviewed.parent.iterdir()) == ["dev"]  # no staging left


def test_render_image_works_without_a_build_record_and_says_so(build_dir, monkeypatch, capsys):
    monkeypatch.setattr(manifest_checks, "find_checkov", lambda: None)
    image = f"crmodelshipdev.azurecr.io/digits-api@{DIGEST}"
    tasks.render(invoke.Context(project_config()), env="dev", image=image)
    deployment = (build_dir / "k8s" / "dev" / "deployment.yaml").read_text()
    assert "render --image" in deployment.splitlines()[2]
    assert yaml.safe_load(deployment)["spec"]["template"]["spec"]["containers"][0][
        "image"] == image
    assert not (build_dir / "record.json").exists()
    assert f"with --image {image}" in capsys.readouterr().out


def test_render_image_must_be_pinned_by_digest(build_dir):
    with pytest.raises(invoke.Exit, match="not pinned by digest.*REPOSITORY@sha256"):
        tasks.render(invoke.Context(project_config()), env="dev",
                     image="crmodelshipdev.azurecr.io/digits-api:latest")
    assert not (build_dir / "k8s" / "dev").exists()


def test_dry_render_writes_nothing_and_shows_the_difference(task_context, build_dir, capsys):
    tasks.render(task_context, env="dev")
    reviewed = build_dir / "k8s" / "dev"
    (reviewed / "deployment.yaml").write_text("# hand edit\n")
    before = folder_bytes(reviewed)
    task_context.config.run.dry = True
    tasks.render(task_context, env="dev")
    assert folder_bytes(reviewed) == before
    out = capsys.readouterr().out
    assert "+++ rendered/deployment.yaml" in out and "[dry] would write" in out


# --- an unchanged rendering is not validated again -----------------------------------------


def test_rendering_the_same_release_again_is_up_to_date_until_something_changes(
        task_context, build_dir, monkeypatch, capsys):
    validations = []
    real_check = manifest_checks.check_rendered
    monkeypatch.setattr(manifest_checks, "check_rendered",
                        lambda *args, **kwargs: validations.append(1) or real_check(
                            *args, **kwargs))
    tasks.render(task_context, env="dev")
    tasks.render(task_context, env="dev")
    assert len(validations) == 1
    assert "up to date: " in capsys.readouterr().out.splitlines()[-1]
    reviewed = build_dir / "k8s" / "dev"
    assert sorted(p.name for p in reviewed.iterdir() if p.name.startswith(".")) == [
        manifests.VALIDATED_STAMP]

    # A hand edit since: render again, for real.
    (reviewed / "service.yaml").write_text("# edited\n")
    tasks.render(task_context, env="dev")
    assert len(validations) == 2 and "# edited" not in (reviewed / "service.yaml").read_text()

    # Other checks (checkov now required) or another setting: validate again.
    monkeypatch.setattr(manifest_checks, "find_checkov", lambda: "/bin/true")
    monkeypatch.setattr(manifest_checks, "run_checkov", lambda folder, executable=None:
                        manifest_checks.CheckovReport(passed=1, skipped=0, failed=[]))
    tasks.render(task_context, env="dev")
    assert len(validations) == 3
    tasks.render(task_context, env="dev")
    assert len(validations) == 3
    task_context.config.modelship["environments"]["dev"]["deployment"]["max_batch"] = 7
    tasks.render(task_context, env="dev")
    assert len(validations) == 4
