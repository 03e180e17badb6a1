"""The schema every modelship setting must satisfy, written as pydantic models.

`settings.py` merges `modelship.defaults` with one environment and validates the result
against `EnvironmentSection`; the top of the `modelship` block is checked by
`ModelshipSection`. The models reject unknown keys and check the formats Kubernetes, the
registry and the model store will later insist on, so a mistake stops the run before any
stage starts. These models are also the typed settings the code reads (`settings.Settings`
adds the environment's name and the top of the block): there is no second definition to
drift. A field's default is what the code uses when the files leave the key out; the
deployment's have none, and which keys the files set stays known
(`model_dump(exclude_unset=True)`), so the manifests name what a rendering lacks instead of
inventing it.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)

# --- formats -------------------------------------------------------------------------------


def _format_check(pattern: str, description: str, max_length: int = 0,
                  allow_empty: bool = False):
    """A check whose error says what is allowed, e.g. 'must be a DNS-1035 label (...)'."""
    compiled = re.compile(pattern)

    def check(value: Any) -> Any:
        if value == "" and allow_empty:
            return value
        if not isinstance(value, str) or not compiled.fullmatch(value) or \
                (max_length and len(value) > max_length):
            raise ValueError(f"must be {description}")
        return value

    return check


def _text(pattern: str, description: str, max_length: int = 0, allow_empty: bool = False):
    # Checked before the type, so `rollout_timeout: 300` hears "a duration such as 300s".
    return Annotated[str, BeforeValidator(
        _format_check(pattern, description, max_length, allow_empty))]


def _numbers_as_text(value: Any) -> Any:
    # `cpu_limit: 1` is as good a quantity as `cpu_limit: "1"`; YAML just reads it as a number.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(value, "g")
    return value


def _refuse_unquoted_version(value: Any) -> Any:
    # YAML reads 1.30 as the number 1.3: only the quoted form keeps the version intact.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        # pydantic reports a ValueError as a validation error; a TypeError would escape it.
        message = "must be quoted text: unquoted, YAML reads 1.30 as the number 1.3"
        raise ValueError(message)  # noqa: TRY004
    return value


def _model_store_uri(value: str) -> str:
    parsed = urlparse(value)
    has_place = parsed.netloc if parsed.scheme in ("az", "s3") else parsed.path.strip("/")
    if parsed.scheme not in ("az", "s3", "file") or not has_place:
        raise ValueError("must be az://<container>/<prefix>, s3://<bucket>/<prefix> "
                         "or file:///<dir>")
    return value


_LABEL_1123 = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_SUBDOMAIN_1123 = rf"{_LABEL_1123}(\.{_LABEL_1123})*"

Rfc1123Label = _text(_LABEL_1123, "an RFC 1123 label (lower-case letters, digits and '-', "
                                  "starting and ending with a letter or digit, at most 63)", 63)
Dns1035Label = _text(r"[a-z]([-a-z0-9]*[a-z0-9])?",
                     "a DNS-1035 label (lower-case letters, digits and '-', starting with a "
                     "letter, at most 63)", 63)
ObjectName = _text(_SUBDOMAIN_1123, "a Kubernetes object name (lower-case RFC 1123 subdomain, "
                                    "e.g. digits-api-key)", 253)
OptionalObjectName = _text(_SUBDOMAIN_1123, "empty or a Kubernetes object name (lower-case "
                                            "RFC 1123 subdomain)", 253, allow_empty=True)
SecretKey = _text(r"[-._a-zA-Z0-9]+", "a Secret key (letters, digits, '-', '_' or '.')", 253)
def _reads_as_text_in_yaml(value: str) -> str:
    # "null", "true", "no", "1.10"... fit a DNS name but YAML reads them as another type: an
    # Ingress rule with `host: null` matches every host.
    try:
        read = yaml.safe_load(value)
    except yaml.YAMLError:  # "*.example.com" reads as an alias: not a scalar of another type
        return value
    if not isinstance(read, str):
        raise ValueError("must be a DNS name YAML reads as text (not null, true, yes, no, "
                         "~ or a number) such as digits.example.com")
    return value


IngressHost = Annotated[_text(rf"(\*\.)?{_SUBDOMAIN_1123}", "a lower-case DNS name such as "
                                                        "digits.example.com", 253),
                        AfterValidator(_reads_as_text_in_yaml)]
AzureDnsLabel = _text(r"[a-z][a-z0-9-]{1,61}[a-z0-9]", "empty or an Azure DNS label (3-63 "
                                                       "lower-case letters, digits or '-', "
                                                       "starting with a letter)",
                      allow_empty=True)
CpuQuantity = Annotated[str, BeforeValidator(_numbers_as_text), AfterValidator(
    _format_check(r"\d+m|\d+(\.\d+)?|\.\d+", "a CPU quantity such as 250m, 1 or 0.5"))]
MemoryQuantity = Annotated[str, BeforeValidator(_numbers_as_text), AfterValidator(
    _format_check(r"\d+(\.\d+)?([KMGTPE]i|[kMGTPE])?",
                  "a memory quantity such as 256Mi, 1.5Gi or 512M"))]
Duration = _text(r"(\d+(\.\d+)?(ns|us|ms|s|m|h))+", "a duration such as 300s, 5m or 1h30m")
KubernetesMinor = Annotated[str, BeforeValidator(_refuse_unquoted_version), AfterValidator(
    _format_check(r"1\.\d+", 'a Kubernetes minor version such as "1.31"'))]
PythonMinor = Annotated[str, BeforeValidator(_refuse_unquoted_version), AfterValidator(
    _format_check(r"3\.\d+", 'a Python minor version such as "3.11"'))]
ImageRepository = _text(r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*",
                        "an image repository such as digits-api (lower-case, '/' between "
                        "parts)", 255)
ImageReference = _text(r"[A-Za-z0-9][A-Za-z0-9._/:@-]*",
                       "an image reference such as python:3.11-slim")
Platform = _text(r"[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?", "a platform such as linux/amd64")
RegistryHost = _text(r"[A-Za-z0-9.-]+(:\d+)?(/[a-z0-9._-]+)*",
                     "empty or a registry host such as myregistry.azurecr.io or "
                     "127.0.0.1:15000", allow_empty=True)
EnvVarName = _text(r"[A-Za-z_][A-Za-z0-9_]*", "an environment variable name such as "
                                              "REGISTRY_USERNAME")
OptionalEnvVarName = _text(r"[A-Za-z_][A-Za-z0-9_]*", "empty or an environment variable name "
                           "such as PROVENANCE_SIGNING_KEY", allow_empty=True)
HttpUrl = _text(r"https?://[^\s/]+(/\S*)?", "empty or an http(s):// URL", allow_empty=True)
ModelStoreUri = Annotated[str, AfterValidator(_model_store_uri)]
# A path to a PEM file, relative to the project or absolute: printable, no control characters.
PemPath = _text(r"[^\x00-\x1f\x7f]+", "empty or the path of a PEM file such as "
                "keys/publisher.pub.pem", 4096, allow_empty=True)
ModelName = _text(r"[A-Za-z0-9][A-Za-z0-9._-]*", "a model name (letters, digits, '.', '_', '-')")
ResourceGroup = _text(r"[-\w.()]{0,89}[-\w()]", "empty or an Azure resource group name",
                      allow_empty=True)
# kind, minikube, AKS, GKE (gke_project_zone_name) and EKS (arn:aws:eks:...:cluster/name)
# contexts all fit; a space, quote or shell metacharacter does not.
KubeContext = _text(r"[A-Za-z0-9][A-Za-z0-9._:/@-]*", "a kube context name (letters, digits, "
                    "'.', '_', ':', '/', '@' and '-')", 253)
AksClusterName = _text(r"[A-Za-z0-9]([-_A-Za-z0-9]{0,61}[A-Za-z0-9])?",
                       "empty or an AKS cluster name", allow_empty=True)

Port = Annotated[int, Field(ge=1, le=65535)]
Count = Annotated[int, Field(ge=0)]
Positive = Annotated[int, Field(ge=1)]

# --- sections ------------------------------------------------------------------------------
# A default is the value used when the key is left out (None: no value, nothing invented).
# Pydantic does not validate defaults, so an omitted key passes while an explicit
# `key: null` (or empty value) is still refused.


class Section(BaseModel):
    """A block of settings: an unknown key or a value of the wrong type is an error."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ModelStoreSection(Section):
    uri: ModelStoreUri
    account_url: HttpUrl = ""
    # S3-compatible servers (MinIO, moto, ...): their endpoint; empty for AWS itself.
    endpoint_url: HttpUrl = ""
    # The publisher's public key (PEM file, relative to the project): when set, fetch-model
    # refuses unsigned or forged models (docs/model-store.md). The private key is never a
    # setting: it is passed to model.publish --signing-key.
    public_key: PemPath = ""


class AuditSection(Section):
    """`build` refuses a lock with known vulnerabilities: pip-audit audits it
    (modelship/audit.py, docs/image.md: auditing)."""
    enabled: bool = False
    fail_on: Literal["low", "medium", "high", "critical"] = "high"
    # An OSV advisories file (JSON): offline, pip-audit is answered from it; with a service,
    # it grades what the service finds (pip-audit reports no severity).
    advisories: str = ""
    # pip-audit's own service, for agents that reach it; empty: the advisories file only.
    service: Literal["", "osv", "pypi"] = ""
    # An OSV-compatible query API (a mirror) for service osv; empty: pip-audit's default.
    osv_url: HttpUrl = ""

    @model_validator(mode="after")
    def _a_source_when_enabled(self):
        if self.enabled and not (self.advisories or self.service):
            raise ValueError("has audit enabled without advisories or a service: name an OSV "
                             "advisories file or set service to osv or pypi (docs/image.md: "
                             "auditing)")
        if self.osv_url and self.service != "osv":
            raise ValueError(f"has audit osv_url '{self.osv_url}' without service: osv")
        return self


class ImageSection(Section):
    repository: ImageRepository
    base: ImageReference
    offline_base: bool = False
    python_version: PythonMinor = "3.11"
    platform: Platform = "linux/amd64"
    audit: AuditSection = AuditSection()

    @model_validator(mode="after")
    def _pulled_base_by_digest(self):
        # A pulled base is pinned like the wheels: a tag can be moved to other bytes. A base
        # built offline (base-image) is made here and never pulled, so its tag is enough.
        if not self.offline_base and "@sha256:" not in self.base:
            raise ValueError(
                f"has base '{self.base}' pinned by tag only: a pulled base image is pinned by "
                f"digest, {self.base}@sha256:<digest> (docs/image.md: refreshing the base "
                "image), unless offline_base builds it")
        return self


class RegistrySection(Section):
    host: RegistryHost
    username_env: EnvVarName = "REGISTRY_USERNAME"
    password_env: EnvVarName = "REGISTRY_PASSWORD"


class ProvenanceSection(Section):
    """Signed build provenance (docs/provenance.md): `push` signs with the private key,
    `apply` and a cached build verify with the public one. Paths are relative to the
    project, absolute, or start at ~."""

    # The private key (PEM file), or the variable holding its PEM (the pipeline's, from
    # Key Vault); the variable wins when it is set.
    signing_key: PemPath = ""
    signing_key_env: OptionalEnvVarName = ""
    # The key `apply` and `rollback` verify with: empty means images are applied unverified
    # (or refused, with require_verified). A list during a rotation: the new key and the old.
    public_key: PemPath | list[PemPath] = ""
    # Refuse to apply or roll back without a public_key, instead of warning (staging, prod).
    require_verified: bool = False
    # Make the pair on first use when signing_key does not exist (the local environment).
    generate_key: bool = False

    @property
    def public_keys(self) -> list[str]:
        """public_key as a list: empty, one key, or the keys of a rotation."""
        keys = self.public_key if isinstance(self.public_key, list) else [self.public_key]
        return [key for key in keys if key]

    @model_validator(mode="after")
    def _one_key_to_generate(self):
        if self.generate_key and isinstance(self.public_key, list) and len(self.public_key) > 1:
            raise ValueError("has generate_key with several public keys: generate_key makes "
                             "one pair")
        return self


class AksSection(Section):
    resource_group: ResourceGroup = ""
    cluster: AksClusterName = ""
    # How kubelogin signs in on clusters with Microsoft Entra ID login: azurecli (a laptop
    # after `az login`, or an AzureCLI@2 pipeline step), workloadidentity, msi... The modes
    # kubelogin's convert-kubeconfig accepts.
    login: Literal["azurecli", "azd", "devicecode", "interactive", "msi", "ropc", "spn",
                   "workloadidentity", "azurepipelines"] = "azurecli"


class KubernetesSection(Section):
    context: KubeContext
    namespace: Rfc1123Label
    rollout_timeout: Duration = "300s"
    # The Kubernetes minor version whose schemas rendered objects must pass.
    version: KubernetesMinor = "1.31"
    aks: AksSection = Field(default_factory=AksSection)
    # true: the context is this machine's control plane (`invoke local.cluster.up`), reached
    # with its own kubectl and kubeconfig; kwok plays its pods, so nothing serves the smoke test.
    local_cluster: bool = False


class AutoscalingSection(Section):
    enabled: bool = None
    min_replicas: Positive = None
    max_replicas: Positive = None
    target_cpu_percent: Positive = None

    @model_validator(mode="after")
    def _range_is_not_empty(self):
        if None not in (self.min_replicas, self.max_replicas) and \
                self.min_replicas > self.max_replicas:
            raise ValueError(f"has min_replicas {self.min_replicas} above max_replicas "
                             f"{self.max_replicas}")
        return self


class ServiceSection(Section):
    port: Port = None
    dns_label: AzureDnsLabel = None


class IngressSection(Section):
    hosts: list[IngressHost] = None
    class_name: OptionalObjectName = None
    tls_secret: OptionalObjectName = None
    controller_namespace: Rfc1123Label = None


class ApiKeySection(Section):
    secret_name: ObjectName = None
    key: SecretKey = None


class DeploymentSection(Section):
    replicas: Count = None
    port: Port = None
    cpu_request: CpuQuantity = None
    cpu_limit: CpuQuantity = None
    memory_request: MemoryQuantity = None
    memory_limit: MemoryQuantity = None
    max_batch: Positive = None
    container_port: Port = None
    web_concurrency: Positive = None
    drain_seconds: Positive = None
    shutdown_timeout_seconds: Positive = None
    progress_deadline_seconds: Positive = None
    confirm: bool = None
    autoscaling: AutoscalingSection = None
    service: ServiceSection = None
    ingress: IngressSection = None
    api_key: ApiKeySection = None
    smoke_local_port: Port = None


class LocalServicesSection(Section):
    azurite_port: Port = 10000
    registry_port: Port = 15000
    # The deployment's two container slots behind the local edge; by default the two 11 and
    # 12 above deployment.port, so apps on other ports never share.
    slot_ports: Annotated[list[Port], Field(min_length=2, max_length=2)] = None

    @model_validator(mode="after")
    def _two_different_slots(self):
        if self.slot_ports is not None and self.slot_ports[0] == self.slot_ports[1]:
            raise ValueError(f"has slot_ports {self.slot_ports}: the two slots need two "
                             "different ports")
        return self


WsgiTarget = _text(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(\(\))?",
                   "a WSGI callable as module:attribute (module:factory() to call a factory), "
                   "such as app:app")
UrlPath = _text(r"/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*", "a URL path such as /score")
# Empty: the app has no such endpoint, and the image's server answers it in front of the app.
OptionalUrlPath = _text(r"/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*", "a URL path such as /healthz, or "
                        "empty when the app has none (the image's server answers it)",
                        allow_empty=True)
JsonKey = _text(r"[A-Za-z_][A-Za-z0-9_.-]*", "a JSON key such as instances", 128)


class AppSection(Section):
    """The app's contract: how the image runs it and how the pipeline talks to it. The
    defaults are the sample app's (app/); docs/app-contract.md describes each one."""

    wsgi: WsgiTarget = "app:create_app()"
    score_path: UrlPath = "/score"
    health_path: OptionalUrlPath = "/healthz"
    readiness_path: OptionalUrlPath = "/readyz"
    request_key: JsonKey = "instances"
    predictions_key: JsonKey = "predictions"


Share = Annotated[float, Field(ge=0, le=1)]
NonNegative = Annotated[float, Field(ge=0)]


def duration_seconds(text: str) -> float:
    """Seconds in a duration the `Duration` format accepts: 300s, 5m, 1h30m, 500ms."""
    units = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(number) * units[unit]
               for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)", text))


class CanarySection(Section):
    """How `deploy` judges a canary (docs/operations.md: canary releases)."""

    # Shares of traffic in percent, in order; the last must be 100: reaching it promotes.
    steps: list[Annotated[int, Field(ge=1, le=100)]] = [10, 25, 50, 100]
    interval: Duration = "60s"          # each window, after the share is set
    min_requests: Positive = 100        # per version and window, or the window is inconclusive
    max_inconclusive: Count = 2         # inconclusive windows held at one step before rollback
    max_error_rate_increase: Share = 0.01
    max_p99_ratio: Annotated[float, Field(ge=1)] = 1.5
    p99_slack_ms: NonNegative = 5.0     # added to the allowed p99: buckets are coarse
    max_drift: NonNegative = 0.1        # Jensen-Shannon distance (0-1), or PSI
    drift_measure: Literal["js", "psi"] = "js"

    @model_validator(mode="after")
    def _steps_rise_to_100(self):
        if len(self.steps) < 2 or self.steps[-1] != 100 or \
                any(later <= earlier for earlier, later in zip(self.steps, self.steps[1:])):
            raise ValueError(f"has steps {self.steps}: shares must rise step by step and end "
                             "with 100 (the promotion), after at least one judged step")
        if duration_seconds(self.interval) < 1:
            raise ValueError(f"has interval {self.interval}: a window needs at least 1s")
        return self


class ReleaseSection(Section):
    # rolling: the new version replaces the old at once (no analysis); canary: step by step.
    strategy: Literal["rolling", "canary"] = "rolling"
    canary: CanarySection = Field(default_factory=CanarySection)


class EnvironmentSection(Section):
    """`modelship.defaults` merged with `modelship.environments.<env>`."""

    app: AppSection = Field(default_factory=AppSection)

    runtime: Literal["kubernetes", "docker"] = "kubernetes"
    model_store: ModelStoreSection
    image: ImageSection
    registry: RegistrySection
    kubernetes: KubernetesSection
    deployment: DeploymentSection = Field(default_factory=DeploymentSection)
    local_services: LocalServicesSection = Field(default_factory=LocalServicesSection)
    provenance: ProvenanceSection = Field(default_factory=ProvenanceSection)
    release: ReleaseSection = Field(default_factory=ReleaseSection)


EnvironmentName = _text(_LABEL_1123, "an RFC 1123 label (lower-case letters, digits and '-')",
                        63)


class ModelshipSection(Section):
    """The top of the `modelship` block; each environment is checked once merged."""

    default_env: EnvironmentName = None
    app_name: Dns1035Label
    model_name: ModelName
    defaults: dict[str, Any] = None
    # `dev:` with nothing under it is an environment that changes no default.
    environments: dict[EnvironmentName, Annotated[dict[str, Any], BeforeValidator(
        lambda value: {} if value is None else value)]]


# --- walking the schema --------------------------------------------------------------------


def section_model(annotation: Any) -> type[Section] | None:
    """The Section a field holds, or None for a leaf setting."""
    if isinstance(annotation, type) and issubclass(annotation, Section):
        return annotation
    return None


def model_at(model: type[Section], path: tuple) -> type[Section] | None:
    """The Section found at `path` below `model` (None once the path leaves the schema)."""
    for key in path:
        field = model.model_fields.get(key) if isinstance(key, str) else None
        model = section_model(field.annotation) if field else None
        if model is None:
            return None
    return model


def leaf_paths(model: type[Section], prefix: tuple = ()) -> list[tuple[str, ...]]:
    """Every setting below `model`, as key paths: ('deployment', 'autoscaling', 'enabled')."""
    paths = []
    for name, field in model.model_fields.items():
        inner = section_model(field.annotation)
        paths.extend(leaf_paths(inner, prefix + (name,)) if inner else [prefix + (name,)])
    return paths


def is_text(model: type[Section], path: tuple[str, ...]) -> bool:
    """True when the setting at `path` holds a string (not a number, flag, list or choice)."""
    return model_at(model, path[:-1]).model_fields[path[-1]].annotation is str
