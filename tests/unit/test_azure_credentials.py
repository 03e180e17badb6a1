"""Azure sign-in for the model store: only configured sources, a fast and exact error."""

from __future__ import annotations

import time

import pytest

from modelship.errors import PipelineError
from modelship.stores import azure_credentials
from modelship.stores.azure_credentials import configured_sources, token_credential

NO_AZ = staticmethod(lambda name: None)
ENDPOINT = "https://stmodelsdev.blob.core.windows.net"


@pytest.mark.parametrize("environ, az, sources", [
    ({}, False, []),
    ({}, True, ["Azure CLI"]),
    ({"AZURE_CLIENT_ID": "c", "AZURE_TENANT_ID": "t", "AZURE_CLIENT_SECRET": "s"}, False,
     ["service principal"]),
    ({"AZURE_CLIENT_ID": "c", "AZURE_TENANT_ID": "t", "AZURE_FEDERATED_TOKEN_FILE": "/f"},
     True, ["workload identity", "Azure CLI"]),
    ({"AZURE_CLIENT_ID": "c"}, False, ["managed identity"]),
    ({"IDENTITY_ENDPOINT": "http://127.0.0.1:9/msi"}, False, ["managed identity"]),
    ({"MODELSHIP_AZURE_MANAGED_IDENTITY": "1"}, False, ["managed identity"]),
    # A secret without the rest of the principal is not a credential.
    ({"AZURE_CLIENT_SECRET": "s"}, False, []),
])
def test_only_sources_something_points_at_are_tried(environ, az, sources):
    which = (lambda name: "/usr/bin/az") if az else (lambda name: None)
    assert configured_sources(environ, which) == sources


def test_with_no_credential_configured_it_says_so_at_once_and_lists_the_ways():
    started = time.monotonic()
    with pytest.raises(PipelineError) as refused:
        token_credential(ENDPOINT, "dev", environ={}, which=lambda name: None)
    assert time.monotonic() - started < 1
    message = str(refused.value)
    assert message.startswith(f"No Azure credential is configured for the model store at "
                              f"{ENDPOINT} (--env=dev).")
    for way in ("AZURE_STORAGE_CONNECTION_STRING", "az login", "AZURE_CLIENT_SECRET",
                "AZURE_FEDERATED_TOKEN_FILE", "MODELSHIP_AZURE_MANAGED_IDENTITY"):
        assert way in message
    assert "refused" not in message and "\n" not in message


def test_a_chain_that_cannot_get_a_token_names_what_it_tried_not_a_refusal():
    from azure.identity import CredentialUnavailableError

    error = CredentialUnavailableError("ChainedTokenCredential failed to retrieve a token.\n"
                                       "Attempted credentials:\n\tAzureCliCredential: Please "
                                       "run 'az login' to set up an account")
    problem = azure_credentials.unavailable(ENDPOINT, "staging", error, environ={},
                                            which=lambda name: "/usr/bin/az")
    text = str(problem)
    assert "(--env=staging); tried: Azure CLI" in text and "az login" in text
    assert "refused" not in text and "\n" not in text


def test_the_store_stops_before_any_request_when_nothing_is_configured(monkeypatch):
    from modelship import model_store

    for name in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_SAS_TOKEN", "AZURE_CLIENT_ID",
                 "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "IDENTITY_ENDPOINT", "MSI_ENDPOINT",
                 "AZURE_FEDERATED_TOKEN_FILE", "MODELSHIP_AZURE_MANAGED_IDENTITY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(azure_credentials.shutil, "which", lambda name: None)
    with pytest.raises(PipelineError, match=r"No Azure credential is configured .*--env=dev"):
        model_store.open_store("az://models/digits", ENDPOINT, env="dev")


def test_s3_without_any_credential_says_so_at_once(monkeypatch, tmp_path):
    from modelship import model_store

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    # No shared config either, and never the instance-metadata address from a test.
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    started = time.monotonic()
    with pytest.raises(PipelineError) as refused:
        model_store.open_store("s3://models/digits", "https://s3.example.com", env="staging")
    assert time.monotonic() - started < 2
    message = str(refused.value)
    assert "No AWS credentials are configured for the model store s3://models/digits " \
           "(--env=staging)." in message
    assert "AWS_PROFILE" in message and "refused" not in message
