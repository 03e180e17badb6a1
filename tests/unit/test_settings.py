"""Strict settings: every mistake in invoke.yaml, a -f file or an INVOKE_MODELSHIP_* variable
stops the run with one line naming the key, where it came from and what is allowed."""

import copy

import invoke
import pydantic
import pytest
import yaml

from modelship.errors import PipelineError
from modelship.settings import PROJECT_ROOT, load_settings

SHIPPED = yaml.safe_load((PROJECT_ROOT / "invoke.yaml").read_text())


@pytest.fixture
def project(tmp_path):
    """Write a changed copy of the shipped invoke.yaml and return a loaded invoke Config."""
    def make(change=None, runtime_file=None):
        data = copy.deepcopy(SHIPPED)
        if change:
            change(data["modelship"])
        folder = tmp_path / "project"
        folder.mkdir(exist_ok=True)
        (folder / "invoke.yaml").write_text(yaml.safe_dump(data))
        config = invoke.Config(project_location=str(folder), runtime_path=runtime_file)
        config.load_project()
        config.load_runtime()
        return config
    return make


def error_of(config, env="dev", environ=None) -> str:
    with pytest.raises(PipelineError) as caught:
        load_settings(config, env, environ=environ or {})
    message = str(caught.value)
    assert "\n" not in message
    return message


def dev(modelship):
    return modelship["environments"]["dev"]


# --- the shipped configuration ---------------------------------------------------------------


@pytest.mark.parametrize("env, runtime, namespace, replicas", [
    ("local", "docker", "digits-local", 1),
    ("dev", "kubernetes", "digits-dev", 1),
    ("staging", "kubernetes", "digits-staging", 2),
    ("prod", "kubernetes", "digits", 3),
])
def test_the_shipped_invoke_yaml_is_valid_for_every_environment(env, runtime, namespace,
                                                                 replicas, project):
    settings = load_settings(project(), env, environ={})

    assert (settings.runtime, settings.kubernetes.namespace) == (runtime, namespace)
    assert settings.deployment.replicas == replicas
    assert settings.deployment.autoscaling.target_cpu_percent == 70


def test_settings_stay_immutable(project):
    settings = load_settings(project(), "dev", environ={})

    with pytest.raises(pydantic.ValidationError, match="frozen"):
        settings.runtime = "docker"


def test_keys_the_files_leave_out_stay_out_of_the_deployment(project):
    def only_replicas(modelship):
        modelship["defaults"]["deployment"] = {"replicas": 2}
        dev(modelship)["deployment"] = {}

    # The manifests name what a rendering lacks; the settings must not invent it.
    deployment = load_settings(project(only_replicas), "dev", environ={}).deployment
    assert deployment.model_dump(exclude_unset=True) == {"replicas": 2}
    assert deployment.cpu_limit is None


def test_a_quantity_written_as_a_number_is_accepted_as_text(project):
    config = project(lambda m: dev(m)["deployment"].update(cpu_limit=2))

    assert load_settings(config, "dev", environ={}).deployment.cpu_limit == "2"


def test_the_documented_public_key_is_a_setting(project):
    # docs/model-store.md tells users to set it; the strict schema must not refuse it.
    config = project(lambda m: dev(m)["model_store"].update(public_key="keys/publisher.pub.pem"))

    assert load_settings(config, "dev", environ={}).model_store.public_key == \
        "keys/publisher.pub.pem"


def test_a_public_key_path_with_a_control_character_is_refused(project):
    config = project(lambda m: dev(m)["model_store"].update(public_key="keys/a\nb.pem"))

    message = error_of(config)
    assert "model_store.public_key" in message and "path of a PEM file" in message


# --- mistakes in invoke.yaml -------------------------------------------------------------------


@pytest.mark.parametrize("change, expected", [
    (lambda m: dev(m)["deployment"].update(replicaz=3),
     ("invoke.yaml: modelship.environments.dev.deployment.replicaz is not a setting "
      "(did you mean 'replicas'?)")),
    (lambda m: m["defaults"]["kubernetes"].update(namespase="x"),
     ("invoke.yaml: modelship.defaults.kubernetes.namespase is not a setting "
      "(did you mean 'namespace'?)")),
    (lambda m: m.update(defualts={}),
     "invoke.yaml: modelship.defualts is not a setting (did you mean 'defaults'?)"),
    (lambda m: dev(m)["deployment"].update(zzz=1),
     "modelship.environments.dev.deployment.zzz is not a setting. Settings there: replicas, port"),
])
def test_an_unknown_key_is_named_with_the_nearest_known_one(change, expected, project):
    assert expected in error_of(project(change))


@pytest.mark.parametrize("change, key, allowed", [
    (lambda m: dev(m)["kubernetes"].update(namespace="Digits_Dev"),
     "kubernetes.namespace is 'Digits_Dev'", "RFC 1123 label"),
    (lambda m: dev(m)["deployment"].update(cpu_limit="lots"),
     "deployment.cpu_limit is 'lots'", "CPU quantity such as 250m"),
    (lambda m: dev(m)["deployment"].update(memory_limit="1 GB"),
     "deployment.memory_limit is '1 GB'", "memory quantity such as 256Mi"),
    (lambda m: dev(m).update(model_store="az://models/digits"),
     "dev.model_store is 'az://models/digits'", "section holding uri, account_url"),
    (lambda m: dev(m)["deployment"].update(replicas="3"),
     "deployment.replicas is '3'", "whole number"),
    (lambda m: dev(m)["deployment"].update(port=70000),
     "deployment.port is 70000", "at most 65535"),
    (lambda m: dev(m).update(runtime="podman"),
     "dev.runtime is 'podman'", "one of 'kubernetes' or 'docker'"),
    (lambda m: dev(m)["kubernetes"].update(rollout_timeout=300),
     "kubernetes.rollout_timeout is 300", "duration such as 300s"),
    (lambda m: dev(m)["kubernetes"].update(version=1.3),
     "kubernetes.version is 1.3", "quoted"),
    (lambda m: dev(m)["model_store"].update(uri="gs://models/digits"),
     "model_store.uri is 'gs://models/digits'", "az://<container>/<prefix>, s3://"),
    (lambda m: dev(m)["deployment"].update(ingress={"hosts": ["Digits.Example.com"]}),
     "deployment.ingress.hosts[0] is 'Digits.Example.com'", "lower-case DNS name"),
    (lambda m: dev(m)["deployment"].update(confirm="yes please"),
     "deployment.confirm is 'yes please'", "true or false"),
    (lambda m: dev(m)["deployment"].update(autoscaling={"min_replicas": 5, "max_replicas": 2}),
     "deployment.autoscaling has min_replicas 5 above max_replicas 2", ""),
    (lambda m: dev(m)["kubernetes"]["aks"].update(login="password"),
     "kubernetes.aks.login is 'password'", "'azurecli'"),
    # A pulled base by tag alone could change under the same name (issue 25): by digest.
    (lambda m: dev(m).update(image={"base": "python:3.11-slim"}),
     "dev.image has base 'python:3.11-slim' pinned by tag only", "@sha256:<digest>"),
    (lambda m: dev(m).update(image={"base": "python:3.11-slim", "offline_base": False}),
     "dev.image has base 'python:3.11-slim' pinned by tag only", "unless offline_base"),
    (lambda m: dev(m).update(local_services={"slot_ports": [18091, 18091]}),
     "local_services has slot_ports [18091, 18091]", "two different ports"),
    (lambda m: dev(m).update(local_services={"slot_ports": [18091]}),
     "local_services.slot_ports is [18091]", "at least 2"),
    (lambda m: dev(m)["deployment"].update(drain_seconds=0),
     "deployment.drain_seconds is 0", "at least 1"),
    (lambda m: dev(m)["deployment"].update(ingress={"controller_namespace": "App_Routing"}),
     "deployment.ingress.controller_namespace is 'App_Routing'", "RFC 1123 label"),
    (lambda m: m.update(app_name="Digits_API"),
     "modelship.app_name is 'Digits_API'", "DNS-1035 label"),
])
def test_a_bad_value_is_named_with_what_is_allowed(change, key, allowed, project):
    message = error_of(project(change))

    assert message.startswith("invoke.yaml: modelship.")
    assert key in message and allowed in message


def test_a_base_image_by_tag_is_accepted_only_where_it_is_built_offline(project):
    offline = load_settings(project(lambda m: dev(m).update(
        image={"base": "modelship/debian-python:bookworm", "offline_base": True})), "dev",
        environ={})
    pinned = load_settings(project(lambda m: dev(m).update(image={
        "base": "python:3.11-slim@sha256:" + "ab" * 32})), "dev", environ={})

    assert offline.image.base == "modelship/debian-python:bookworm"
    assert pinned.image.base.endswith("@sha256:" + "ab" * 32)
    assert "@sha256:" in load_settings(project(), "prod", environ={}).image.base


def test_a_required_setting_missing_everywhere_names_the_environment(project):
    message = error_of(project(lambda m: m["defaults"]["model_store"].pop("uri")))

    assert "modelship.environments.dev.model_store.uri is not set (nor in modelship.defaults)" \
        in message


def test_an_unknown_environment_names_the_nearest_one(project):
    message = error_of(project(), env="stagin")

    assert "Unknown environment 'stagin' (did you mean 'staging'?)" in message
    assert "dev, local, prod, staging" in message


def test_a_default_env_that_is_no_environment_is_named(project):
    message = error_of(project(lambda m: m.update(default_env="qa")), env=None)

    assert "invoke.yaml: modelship.default_env is 'qa', which is not an environment" in message


# --- the -f runtime file -------------------------------------------------------------------------


def test_a_runtime_file_that_does_not_exist_is_an_error_naming_it(project, tmp_path):
    missing = tmp_path / "ops" / "dev-overrides.yaml"

    message = error_of(project(runtime_file=str(missing)))

    assert f"The config file {missing} (given with -f or INVOKE_RUNTIME_CONFIG) does not exist" \
        in message


def test_a_mistake_in_the_runtime_file_is_blamed_on_that_file(project, tmp_path):
    runtime_file = tmp_path / "mine.yaml"
    runtime_file.write_text("modelship: {environments: {dev: {deployment: {replicaz: 3}}}}\n")

    message = error_of(project(runtime_file=str(runtime_file)))

    assert message.startswith(f"-f {runtime_file}: modelship.environments.dev.deployment.replicaz")


# --- INVOKE_MODELSHIP_* variables ----------------------------------------------------------------


@pytest.mark.parametrize("variable, value, read, expected", [
    # dev sets no model_store.uri itself: invoke alone would ignore this variable.
    ("ENVIRONMENTS_DEV_MODEL_STORE_URI", "s3://models/digits",
     lambda s: s.model_store.uri, "s3://models/digits"),
    ("ENVIRONMENTS_DEV_DEPLOYMENT_REPLICAS", "4", lambda s: s.deployment.replicas, 4),
    ("ENVIRONMENTS_DEV_DEPLOYMENT_AUTOSCALING_MAX_REPLICAS", "9",
     lambda s: s.deployment.autoscaling.max_replicas, 9),
    ("ENVIRONMENTS_DEV_DEPLOYMENT_INGRESS_HOSTS", "[a.example.com, b.example.com]",
     lambda s: s.deployment.ingress.hosts, ["a.example.com", "b.example.com"]),
    ("ENVIRONMENTS_DEV_DEPLOYMENT_CONFIRM", "true", lambda s: s.deployment.confirm, True),
    # Text is taken as written: as YAML, 1.30 would be the number 1.3.
    ("ENVIRONMENTS_DEV_KUBERNETES_VERSION", "1.30", lambda s: s.kubernetes.version, "1.30"),
    ("ENVIRONMENTS_DEV_KUBERNETES_AKS_LOGIN", "workloadidentity",
     lambda s: s.kubernetes.aks.login, "workloadidentity"),
    ("DEFAULTS_DEPLOYMENT_WEB_CONCURRENCY", "3", lambda s: s.deployment.web_concurrency, 3),
    ("APP_NAME", "digits-v2", lambda s: s.app_name, "digits-v2"),
])
def test_a_variable_overrides_any_setting(variable, value, read, expected, project):
    environ = {f"INVOKE_MODELSHIP_{variable}": value}

    assert read(load_settings(project(), "dev", environ=environ)) == expected


def test_an_environment_setting_still_beats_a_defaults_variable(project):
    environ = {"INVOKE_MODELSHIP_DEFAULTS_DEPLOYMENT_REPLICAS": "7"}

    assert load_settings(project(), "prod", environ=environ).deployment.replicas == 3
    assert load_settings(project(), "local", environ=environ).deployment.replicas == 1
    assert load_settings(project(), "staging", environ=environ).deployment.replicas == 2
    without_own = project(lambda m: dev(m)["deployment"].pop("replicas"))
    assert load_settings(without_own, "dev", environ=environ).deployment.replicas == 7


def test_the_runtime_file_beats_a_variable_as_invoke_ranks_them(project, tmp_path):
    runtime_file = tmp_path / "mine.yaml"
    runtime_file.write_text("modelship: {environments: {dev: {deployment: {replicas: 5}}}}\n")
    environ = {"INVOKE_MODELSHIP_ENVIRONMENTS_DEV_DEPLOYMENT_REPLICAS": "7"}

    config = project(runtime_file=str(runtime_file))

    assert load_settings(config, "dev", environ=environ).deployment.replicas == 5


def test_a_variable_invoke_already_applied_is_read_once_and_as_yaml(project, monkeypatch):
    # Invoke turns any non-empty string into True for a key the file holds as a boolean.
    monkeypatch.setenv("INVOKE_MODELSHIP_ENVIRONMENTS_LOCAL_IMAGE_OFFLINE_BASE", "false")
    # A base that is pulled, not built offline, is pinned by digest.
    monkeypatch.setenv("INVOKE_MODELSHIP_ENVIRONMENTS_LOCAL_IMAGE_BASE",
                       "python:3.11-slim@sha256:" + "ab" * 32)
    config = project()
    config.load_shell_env()
    assert config.modelship.environments.local.image.offline_base is True

    assert load_settings(config, "local").image.offline_base is False


def test_a_bad_integer_in_a_variable_names_the_variable(project):
    environ = {"INVOKE_MODELSHIP_ENVIRONMENTS_DEV_DEPLOYMENT_WEB_CONCURRENCY": "two"}

    message = error_of(project(), environ=environ)

    assert message.startswith("INVOKE_MODELSHIP_ENVIRONMENTS_DEV_DEPLOYMENT_WEB_CONCURRENCY: "
                              "modelship.environments.dev.deployment.web_concurrency is 'two'")
    assert "whole number" in message


def test_a_bad_format_in_a_variable_names_the_variable(project):
    environ = {"INVOKE_MODELSHIP_ENVIRONMENTS_DEV_KUBERNETES_NAMESPACE": "Digits_Dev"}

    assert error_of(project(), environ=environ).startswith(
        "INVOKE_MODELSHIP_ENVIRONMENTS_DEV_KUBERNETES_NAMESPACE: "
        "modelship.environments.dev.kubernetes.namespace is 'Digits_Dev'")


def test_a_variable_naming_no_setting_names_the_nearest_one(project):
    environ = {"INVOKE_MODELSHIP_ENVIRONMENTS_DEV_DEPLOYMENT_REPLICAZ": "3"}

    message = error_of(project(), environ=environ)

    assert message.startswith("INVOKE_MODELSHIP_ENVIRONMENTS_DEV_DEPLOYMENT_REPLICAZ names no "
                              "modelship setting (did you mean "
                              "INVOKE_MODELSHIP_ENVIRONMENTS_DEV_DEPLOYMENT_REPLICAS, which sets "
                              "modelship.environments.dev.deployment.replicas?)")


def test_a_variable_for_an_unknown_environment_is_refused(project):
    environ = {"INVOKE_MODELSHIP_ENVIRONMENTS_QA_DEPLOYMENT_REPLICAS": "3"}

    message = error_of(project(), environ=environ)

    assert "INVOKE_MODELSHIP_ENVIRONMENTS_QA_DEPLOYMENT_REPLICAS names no environment" in message
    assert "dev, local, prod, staging" in message


def test_a_variable_naming_a_whole_section_is_refused(project):
    environ = {"INVOKE_MODELSHIP_ENVIRONMENTS_DEV_DEPLOYMENT": "{}"}

    assert "names no modelship setting" in error_of(project(), environ=environ)


def test_other_invoke_variables_are_left_to_invoke(project):
    environ = {"INVOKE_RUN_ECHO": "1", "INVOKE_RUNTIME_CONFIG": "ignored-here"}

    assert load_settings(project(), "dev", environ=environ).env == "dev"


def test_the_documented_public_key_is_a_setting_of_a_runtime_file(project, tmp_path):
    runtime_file = tmp_path / "signed.yaml"
    runtime_file.write_text("modelship: {environments: {dev: {model_store: "
                            "{public_key: keys/publisher.pem}}}}\n")

    settings = load_settings(project(runtime_file=str(runtime_file)), "dev", environ={})

    assert settings.model_store.public_key == "keys/publisher.pem"
    assert load_settings(project(), "dev", environ={}).model_store.public_key == ""
