"""Which credential the Azure model store signs in with, decided before any network call.

The Azure SDK's DefaultAzureCredential tries every source it knows, one after another, each
with its own timeouts (the managed-identity probe alone can take many seconds off Azure),
and when all fail it prints a page per source. Here only the sources something on this
machine points at are tried: a service principal or a workload identity named by the
AZURE_* variables, a managed identity where the host says it has one, and the Azure CLI
when it is installed (bounded to a few seconds). With none of those, the run stops at once
with one line listing the ways to give a credential; with some, a failure says which
sources were tried and why each declined. A credential that was offered and turned down
is reported as refused by the caller, which sees the service's answer. This module must
never print or log a secret, and never contact an identity endpoint nothing pointed at.
"""

from __future__ import annotations

import os
import shutil
from typing import Mapping

from ..errors import PipelineError

CLI_TIMEOUT_SECONDS = 8
# Set to 1 on an Azure VM (or agent) whose system-assigned managed identity should be used:
# nothing else on such a machine says that it has one.
MANAGED_IDENTITY_SWITCH = "MODELSHIP_AZURE_MANAGED_IDENTITY"

WAYS_TO_GIVE_ONE = (
    "AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_SAS_TOKEN; `az login` (Azure CLI); "
    "a service principal (AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET or "
    "AZURE_CLIENT_CERTIFICATE_PATH); a workload identity (AZURE_FEDERATED_TOKEN_FILE with "
    f"AZURE_CLIENT_ID and AZURE_TENANT_ID); or a managed identity ({MANAGED_IDENTITY_SWITCH}=1,"
    " or AZURE_CLIENT_ID alone for a user-assigned one)"
)


def configured_sources(environ: Mapping[str, str] | None = None, which=None) -> list[str]:
    """The credential sources this machine points at, in the order they are tried."""
    environ = os.environ if environ is None else environ
    which = which or shutil.which
    sources = []
    has_client = bool(environ.get("AZURE_CLIENT_ID")) and bool(environ.get("AZURE_TENANT_ID"))
    if has_client and (environ.get("AZURE_CLIENT_SECRET")
                       or environ.get("AZURE_CLIENT_CERTIFICATE_PATH")):
        sources.append("service principal")
    if has_client and environ.get("AZURE_FEDERATED_TOKEN_FILE"):
        sources.append("workload identity")
    user_assigned = (bool(environ.get("AZURE_CLIENT_ID")) and "service principal" not in sources
                     and "workload identity" not in sources)
    if (environ.get("IDENTITY_ENDPOINT") or environ.get("MSI_ENDPOINT")
            or environ.get(MANAGED_IDENTITY_SWITCH, "").lower() in ("1", "true", "yes")
            or user_assigned):
        sources.append("managed identity")
    if which("az"):
        sources.append("Azure CLI")
    return sources


def token_credential(endpoint: str, env: str, environ: Mapping[str, str] | None = None,
                     which=None):
    """A credential trying exactly the configured sources; a one-line error if there are none."""
    environ = os.environ if environ is None else environ
    sources = configured_sources(environ, which)
    if not sources:
        raise PipelineError(
            f"No Azure credential is configured for the model store at {endpoint} "
            f"(--env={env}).",
            f"Give one of: {WAYS_TO_GIVE_ONE}.",
        )
    from azure.identity import (
        AzureCliCredential,
        ChainedTokenCredential,
        EnvironmentCredential,
        ManagedIdentityCredential,
        WorkloadIdentityCredential,
    )

    made = {
        "service principal": lambda: EnvironmentCredential(),
        "workload identity": lambda: WorkloadIdentityCredential(),
        "managed identity": lambda: ManagedIdentityCredential(
            client_id=environ.get("AZURE_CLIENT_ID") or None,
            connection_timeout=3, retry_total=1),
        "Azure CLI": lambda: AzureCliCredential(process_timeout=CLI_TIMEOUT_SECONDS),
    }
    return ChainedTokenCredential(*(made[source]() for source in sources))


def unavailable(endpoint: str, env: str, error: BaseException,
                environ: Mapping[str, str] | None = None, which=None) -> PipelineError:
    """The error for a chain in which no source could give a token (none was refused)."""
    tried = ", ".join(configured_sources(environ, which)) or "none"
    first = str(error).strip().splitlines()
    reason = next((line.strip() for line in first if "Attempted credentials" not in line
                   and line.strip()), type(error).__name__)[:240]
    return PipelineError(
        f"No Azure credential could be obtained for the model store at {endpoint} "
        f"(--env={env}); tried: {tried} ({reason}).",
        f"Sign in (`az login`) or give another credential: {WAYS_TO_GIVE_ONE}.",
    )
