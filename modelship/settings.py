"""Typed, per-environment settings read from Invoke's configuration layers.

`invoke.yaml` holds `modelship.defaults` and `modelship.environments.<env>`; this module merges
them into one `Settings` object for the environment a task runs against. It must never
hold environment-specific values itself: those live in config files only.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import PipelineError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BUILD_DIR = PROJECT_ROOT / "build"
LOCAL_STATE_DIR = PROJECT_ROOT / ".local"


def _merge(base: dict, override: Mapping) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _plain(value: Any) -> Any:
    """Invoke's DataProxy objects to plain dicts, so merging and dataclasses see real types."""
    if isinstance(value, Mapping):
        return {key: _plain(value[key]) for key in value}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


@dataclass(frozen=True)
class ModelStoreSettings:
    uri: str
    account_url: str = ""
    # S3-compatible servers (MinIO, moto, …): their endpoint; empty for AWS itself.
    endpoint_url: str = ""
    # The publisher's public key (PEM): when set, fetch-model refuses unsigned models.
    public_key: str = ""


@dataclass(frozen=True)
class ImageSettings:
    repository: str
    base: str
    offline_base: bool = False
    python_version: str = "3.11"
    platform: str = "linux/amd64"


@dataclass(frozen=True)
class RegistrySettings:
    host: str
    username_env: str = "REGISTRY_USERNAME"
    password_env: str = "REGISTRY_PASSWORD"


@dataclass(frozen=True)
class AksSettings:
    resource_group: str = ""
    cluster: str = ""
    # How kubelogin signs in on clusters with Microsoft Entra ID login: azurecli (a
    # laptop after `az login`, or an AzureCLI@2 pipeline step), workloadidentity, msi...
    login: str = "azurecli"


@dataclass(frozen=True)
class KubernetesSettings:
    context: str
    namespace: str
    rollout_timeout: str = "300s"
    # The Kubernetes minor version whose schemas rendered objects must pass.
    version: str = "1.31"
    aks: AksSettings = field(default_factory=AksSettings)


@dataclass(frozen=True)
class LocalServiceSettings:
    azurite_port: int = 10000
    registry_port: int = 15000


@dataclass(frozen=True)
class Settings:
    env: str
    app_name: str
    model_name: str
    runtime: str
    model_store: ModelStoreSettings
    image: ImageSettings
    registry: RegistrySettings
    kubernetes: KubernetesSettings
    deployment: dict
    local_services: LocalServiceSettings = field(default_factory=LocalServiceSettings)

    @property
    def image_repository(self) -> str:
        """Registry-qualified repository, e.g. `myregistry.azurecr.io/digits-api`."""
        if not self.registry.host:
            raise PipelineError(
                f"No registry is configured for environment '{self.env}'.",
                f"Set modelship.environments.{self.env}.registry.host in invoke.yaml.",
            )
        return f"{self.registry.host}/{self.image.repository}"

    @property
    def render_dir(self) -> Path:
        return BUILD_DIR / "k8s" / self.env


# Settings that once lived elsewhere: silently ignoring the old place would validate
# manifests against the wrong version or fetch credentials for no cluster.
_MOVED_SETTINGS = {
    ("deployment", "kubernetes_version"): "kubernetes.version",
    ("deployment", "aks"): "kubernetes.aks",
}


def _refuse_moved_settings(merged: Mapping, env: str) -> None:
    for (section, key), new_place in _MOVED_SETTINGS.items():
        if key in (merged.get(section) or {}):
            raise PipelineError(
                f"invoke.yaml sets {section}.{key} (for environment '{env}'), which has moved.",
                f"Move it to {new_place}.",
            )


def _kubernetes_settings(section: Mapping) -> KubernetesSettings:
    section = dict(section)
    aks = AksSettings(**(section.pop("aks", None) or {}))
    return KubernetesSettings(**section, aks=aks)


def known_environments(config: Mapping) -> list[str]:
    return sorted(_plain(config.get("modelship", {})).get("environments", {}))


def load_settings(config: Mapping, env: str | None = None) -> Settings:
    """Settings for `env` (or the configured default) from an Invoke config mapping."""
    section = _plain(config.get("modelship", {}))
    if not section:
        raise PipelineError(
            "No 'modelship' section in the Invoke configuration.",
            "Run invoke from the project root, where invoke.yaml lives.",
        )
    env = env or section.get("default_env", "local")
    environments = section.get("environments", {})
    if env not in environments:
        known = ", ".join(sorted(environments)) or "none"
        raise PipelineError(
            f"Unknown environment '{env}'.",
            f"Use one of: {known} (or add it under modelship.environments in invoke.yaml).",
        )
    merged = _merge(section.get("defaults", {}), environments[env] or {})
    _refuse_moved_settings(merged, env)
    try:
        return Settings(
            env=env,
            app_name=section["app_name"],
            model_name=section["model_name"],
            runtime=merged.get("runtime", "kubernetes"),
            model_store=ModelStoreSettings(**merged["model_store"]),
            image=ImageSettings(**merged["image"]),
            registry=RegistrySettings(**merged["registry"]),
            kubernetes=_kubernetes_settings(merged["kubernetes"]),
            deployment=dict(merged.get("deployment", {})),
            local_services=LocalServiceSettings(**merged.get("local_services", {})),
        )
    except (KeyError, TypeError) as error:
        raise PipelineError(
            f"Environment '{env}' is misconfigured in invoke.yaml: {error}.",
            "Compare it with modelship.defaults, which lists every setting.",
        ) from None
