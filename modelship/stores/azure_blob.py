"""The `az://<container>/<prefix>` backend on azure-storage-blob.

Credentials come from AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_SAS_TOKEN in the
environment, Azurite's published development key for a loopback endpoint, or else the
Azure credential chain. Metadata, listings and uploads go through the SDK; the model file
itself downloads through `ranged_http` (streamed, resumable ranges, several at once
against a remote account), authorised by what the SDK holds: the SAS already in the
URL, a short-lived read-only SAS signed with the account key, or a bearer token from
the credential chain. This module must never show a key, SAS token or connection
string in a message, nor talk plain http to anything but loopback.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

from ..errors import PipelineError
from ..redact import mask, without_query
from . import (
    ModelStore,
    StoreObjectChanged,
    StoreObjectExists,
    StoreObjectMissing,
    is_loopback,
    ranged_http,
    refuse_plain_http,
)

# Azurite's documented development account: public by design, valid only against the emulator.
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

# The model downloads as this many streamed ranges from a remote account, where one
# connection seldom fills the link; from a loopback emulator, which competes for the
# same CPUs, one stream is fastest (measured: benchmarks/bench_fetch.py).
DOWNLOAD_STREAMS = 4
LOOPBACK_DOWNLOAD_STREAMS = 1
# Reads of other blobs (metadata, pointers) through the SDK, in one GET up to this size.
DOWNLOAD_CHUNK = 8 * 1024 * 1024
UPLOAD_CONCURRENCY = 4
# A SAS signed for the download outlives any resume of it, and reads one blob only.
DOWNLOAD_SAS_LIFETIME = timedelta(hours=4)
STORAGE_TOKEN_SCOPE = "https://storage.azure.com/.default"


def _service_client(account_url: str, env: str = ""):
    from azure.storage.blob import BlobServiceClient, ExponentialRetry

    # The SDK's default backoff starts at 15 s: an unreachable store would hang for a
    # minute and a half before saying so.
    retry = ExponentialRetry(initial_backoff=1, increment_base=2, retry_total=3)
    options = dict(
        retry_policy=retry, connection_timeout=5, read_timeout=60,
        max_single_get_size=DOWNLOAD_CHUNK, max_chunk_get_size=DOWNLOAD_CHUNK,
    )
    connection_string = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
    sas = os.environ.get("AZURE_STORAGE_SAS_TOKEN")
    try:
        if connection_string:
            return BlobServiceClient.from_connection_string(connection_string, **options)
        if sas:
            return BlobServiceClient(account_url, credential=sas.lstrip("?"), **options)
        if is_loopback(account_url):
            # A loopback endpoint is the Azurite emulator: use its documented dev account.
            credential = {"account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY}
            return BlobServiceClient(account_url, credential=credential, **options)
        from .azure_credentials import token_credential

        return BlobServiceClient(account_url, credential=token_credential(account_url, env),
                                 **options)
    except ValueError as error:
        raise PipelineError(
            f"The Azure storage settings are not usable: {mask(str(error))}",
            "Check AZURE_STORAGE_CONNECTION_STRING / AZURE_STORAGE_SAS_TOKEN and "
            "model_store.account_url.",
        ) from None


class AzureBlobStore(ModelStore):
    def __init__(self, container: str, prefix: str, account_url: str, env: str = ""):
        self.container = container
        self.prefix = prefix.strip("/")
        self.uri = f"az://{container}/{self.prefix}".rstrip("/")
        self.env = env
        service = _service_client(account_url, env)
        self.endpoint = without_query(service.url)
        # A connection string names its own endpoint: hold it to the same rule.
        refuse_plain_http(self.endpoint, "AZURE_STORAGE_CONNECTION_STRING")
        self._container = service.get_container_client(container)
        self._download_streams = (
            LOOPBACK_DOWNLOAD_STREAMS if is_loopback(self.endpoint) else DOWNLOAD_STREAMS
        )
        self._session = None

    def _blob(self, key: str):
        return self._container.get_blob_client(f"{self.prefix}/{key}" if self.prefix else key)

    @contextmanager
    def _translated_errors(self, key: str):
        """Turn the SDK's exceptions into PipelineErrors that name no credential."""
        from azure.core.exceptions import (
            AzureError,
            ClientAuthenticationError,
            HttpResponseError,
            IncompleteReadError,
            ResourceNotFoundError,
            ServiceRequestError,
            ServiceResponseError,
        )
        from azure.identity import CredentialUnavailableError

        where = f"{self.uri}/{key}" if key else self.uri
        try:
            yield
        except ResourceNotFoundError as error:
            raise self._status_error(404, str(error.error_code), where) from None
        except CredentialUnavailableError as error:
            # No source could even produce a token: nothing was offered, nothing refused.
            from .azure_credentials import unavailable

            raise unavailable(self.endpoint, self.env, error) from None
        except ClientAuthenticationError:
            raise PipelineError(
                f"The model store at {self.endpoint} refused the credentials "
                f"({self._credential_in_use()}).",
                "Check that it is current and for this storage account "
                f"(model_store.account_url of '{self.env}'), and that it may read the models.",
            ) from None
        except ServiceRequestError:
            # The request never got through: nothing listens there, or the name is wrong.
            raise self._unreachable() from None
        except (ServiceResponseError, IncompleteReadError):
            raise self._connection_lost(where) from None
        except HttpResponseError as error:
            if error.status_code is None:
                # The SDK wraps a body cut short, after its retries, in a status-less error.
                raise self._connection_lost(where) from None
            raise self._status_error(error.status_code, "", where) from None
        except AzureError as error:
            raise PipelineError(
                f"Talking to the model store at {self.endpoint} failed for {where}: "
                f"{type(error).__name__}.",
                "Try again; if it persists, check the storage account.",
            ) from None

    def _status_error(self, status: int, error_code: str, where: str) -> PipelineError:
        if status == 404:
            # Azure names the code in x-ms-error-code; the SDK passes it on as error_code.
            if "ContainerNotFound" in error_code:
                return StoreObjectMissing(
                    f"The storage account at {self.endpoint} has no container "
                    f"'{self.container}'.",
                    "Check model_store.uri, or publish a model first (`invoke model.publish`).",
                    whole_store=True,
                )
            return StoreObjectMissing(
                f"The model store has no object {where}.",
                "Publish a model first (`invoke model.publish`) or check model_store.uri.",
            )
        if status in (401, 403):
            return PipelineError(
                f"The model store at {self.endpoint} refused access to {where}.",
                "Check the storage credentials and their permissions (read for fetch, "
                "write for publish).",
            )
        return PipelineError(
            f"The model store at {self.endpoint} answered {status} for {where}.",
            "Try again; if it persists, check the storage account.",
        )

    def _credential_in_use(self) -> str:
        if os.environ.get("AZURE_STORAGE_CONNECTION_STRING"):
            return "AZURE_STORAGE_CONNECTION_STRING"
        if os.environ.get("AZURE_STORAGE_SAS_TOKEN"):
            return "AZURE_STORAGE_SAS_TOKEN"
        if is_loopback(self.endpoint):
            return "the Azurite emulator's account key"
        from .azure_credentials import configured_sources

        return "signed in with: " + ", ".join(configured_sources())

    def _check_where(self) -> str:
        if is_loopback(self.endpoint):
            return (f"Start Azurite with `invoke local.up --env={self.env}`, or check "
                    f"model_store.account_url of '{self.env}'.")
        return f"Check the network and model_store.account_url of '{self.env}' in invoke.yaml."

    def _unreachable(self) -> PipelineError:
        return PipelineError(f"Cannot reach the model store at {self.endpoint}.",
                             self._check_where())

    def _connection_lost(self, where: str) -> PipelineError:
        return PipelineError(
            f"Lost the connection to the model store at {self.endpoint} while reading "
            f"{where}, after retries.",
            self._check_where(),
        )

    def read_bytes(self, key):
        with self._translated_errors(key):
            return self._blob(key).download_blob().readall()

    def write_bytes(self, key, data):
        with self._translated_errors(key):
            self._blob(key).upload_blob(data, overwrite=True)

    def upload_file(self, key, path, progress=None):
        hook = (lambda done, total: progress.update(done, total)) if progress else None
        with self._translated_errors(key), open(path, "rb") as handle:
            self._blob(key).upload_blob(handle, overwrite=True,
                                        max_concurrency=UPLOAD_CONCURRENCY, progress_hook=hook)

    def create_bytes(self, key, data):
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError

        with self._translated_errors(key):
            try:
                # overwrite=False makes the SDK send If-None-Match: *: the service itself
                # refuses the second writer (409 BlobAlreadyExists, or 412).
                self._blob(key).upload_blob(data, overwrite=False)
            except (ResourceExistsError, ResourceModifiedError):
                raise StoreObjectExists(f"{self.uri}/{key} already exists.") from None

    def read_tagged(self, key):
        with self._translated_errors(key):
            downloader = self._blob(key).download_blob()
            return downloader.readall(), downloader.properties.etag

    def _replace_existing(self, key, data, tag):
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        with self._translated_errors(key):
            try:
                self._blob(key).upload_blob(data, overwrite=True, etag=tag,
                                            match_condition=MatchConditions.IfNotModified)
            except (ResourceModifiedError, ResourceNotFoundError):
                raise StoreObjectChanged(f"{self.uri}/{key} was rewritten meanwhile.") from None

    def exists(self, key):
        with self._translated_errors(key):
            return self._blob(key).exists()

    def delete(self, key):
        from azure.core.exceptions import ResourceNotFoundError

        with self._translated_errors(key):
            try:
                self._blob(key).delete_blob()
            except ResourceNotFoundError:
                pass

    def list_keys(self, prefix=""):
        start = f"{self.prefix}/" if self.prefix else ""
        with self._translated_errors(""):
            return sorted(blob.name[len(start):] for blob in
                          self._container.list_blobs(name_starts_with=start + prefix))

    def download(self, key, sink):
        where = f"{self.uri}/{key}"
        with self._translated_errors(key):
            url, headers = authorised_get(self._blob(key))
        try:
            return ranged_http.download(self._http_session(), url, headers, sink,
                                        streams=self._download_streams)
        except ranged_http.StatusError as error:
            raise self._status_error(error.status, error.error_code, where) from None
        except ranged_http.Unreachable:
            raise self._unreachable() from None
        except ranged_http.ConnectionLost:
            raise self._connection_lost(where) from None
        except ranged_http.ObjectChanged as error:
            raise PipelineError(
                f"{where}: {error}.",
                "Someone published over this version during the fetch; run it again.",
            ) from None

    def _http_session(self):
        if self._session is None:
            import requests

            self._session = requests.Session()
            adapter = requests.adapters.HTTPAdapter(pool_maxsize=max(self._download_streams, 1))
            self._session.mount("https://", adapter)
            self._session.mount("http://", adapter)
        return self._session

    def prepare_publish(self):
        from azure.core.exceptions import ResourceExistsError

        with self._translated_errors(""):
            try:
                self._container.create_container()
            except ResourceExistsError:
                pass


def authorised_get(blob) -> tuple[str, dict]:
    """The blob's URL and headers for a plain GET, authorised as the SDK would be."""
    headers = {"x-ms-version": blob.api_version, "User-Agent": "modelship"}
    credential = blob.credential
    if credential is None:  # anonymous, or a SAS the SDK keeps in the URL
        return blob.url, headers
    account_key = getattr(credential, "account_key", None)
    if account_key:
        from azure.storage.blob import BlobSasPermissions, generate_blob_sas

        sas = generate_blob_sas(
            blob.account_name, blob.container_name, blob.blob_name,
            account_key=account_key, permission=BlobSasPermissions(read=True),
            expiry=datetime.now(timezone.utc) + DOWNLOAD_SAS_LIFETIME,
        )
        return f"{blob.url}?{sas}", headers
    if hasattr(credential, "signature"):  # AzureSasCredential
        return f"{blob.url}?{credential.signature.lstrip('?')}", headers
    token = credential.get_token(STORAGE_TOKEN_SCOPE)
    headers["Authorization"] = f"Bearer {token.token}"
    return blob.url, headers
