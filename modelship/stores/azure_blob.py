"""The `az://<container>/<prefix>` backend on azure-storage-blob.

Credentials come from AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_SAS_TOKEN in the
environment, Azurite's published development key for a loopback endpoint, or else the
Azure credential chain. Large blobs download as parallel ranged GETs with the SDK's own
concurrency and retry settings. This module must never show a key, SAS token or
connection string in a message, nor talk plain http to anything but loopback.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

from ..errors import PipelineError
from ..redact import mask, without_query
from . import ModelStore, StoreObjectMissing, is_loopback, refuse_plain_http

# Azurite's documented development account: public by design, valid only against the emulator.
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

# Ranged GETs of 8 MiB, four at a time against a remote account; two against a loopback
# emulator, which competes for the same CPUs (measured: benchmarks/bench_fetch.py).
DOWNLOAD_CHUNK = 8 * 1024 * 1024
DOWNLOAD_CONCURRENCY = 4
LOOPBACK_DOWNLOAD_CONCURRENCY = 2
UPLOAD_CONCURRENCY = 4


def _service_client(account_url: str):
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
        from azure.identity import DefaultAzureCredential

        return BlobServiceClient(account_url, credential=DefaultAzureCredential(), **options)
    except ValueError as error:
        raise PipelineError(
            f"The Azure storage settings are not usable: {mask(str(error))}",
            "Check AZURE_STORAGE_CONNECTION_STRING / AZURE_STORAGE_SAS_TOKEN and "
            "model_store.account_url.",
        ) from None


class AzureBlobStore(ModelStore):
    def __init__(self, container: str, prefix: str, account_url: str):
        self.container = container
        self.prefix = prefix.strip("/")
        self.uri = f"az://{container}/{self.prefix}".rstrip("/")
        service = _service_client(account_url)
        self.endpoint = without_query(service.url)
        # A connection string names its own endpoint: hold it to the same rule.
        refuse_plain_http(self.endpoint, "AZURE_STORAGE_CONNECTION_STRING")
        self._container = service.get_container_client(container)
        self._download_concurrency = (
            LOOPBACK_DOWNLOAD_CONCURRENCY if is_loopback(self.endpoint) else DOWNLOAD_CONCURRENCY
        )

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

        where = f"{self.uri}/{key}" if key else self.uri
        try:
            yield
        except ResourceNotFoundError as error:
            if "ContainerNotFound" in str(error.error_code):
                raise StoreObjectMissing(
                    f"The storage account at {self.endpoint} has no container "
                    f"'{self.container}'.",
                    "Check model_store.uri, or publish a model first (`invoke model.publish`).",
                    whole_store=True,
                ) from None
            raise StoreObjectMissing(
                f"The model store has no object {where}.",
                "Publish a model first (`invoke model.publish`) or check model_store.uri.",
            ) from None
        except ClientAuthenticationError:
            raise PipelineError(
                f"The model store at {self.endpoint} refused the credentials.",
                "Check AZURE_STORAGE_CONNECTION_STRING / AZURE_STORAGE_SAS_TOKEN (not expired, "
                "right account) or `az login`.",
            ) from None
        except ServiceRequestError:
            # The request never got through: nothing listens there, or the name is wrong.
            raise PipelineError(
                f"Cannot reach the model store at {self.endpoint}.",
                "Check the network and model_store.account_url; for --env=local run "
                "`invoke local.up` to start Azurite.",
            ) from None
        except (ServiceResponseError, IncompleteReadError):
            raise self._connection_lost(where) from None
        except HttpResponseError as error:
            if error.status_code is None:
                # The SDK wraps a body cut short, after its retries, in a status-less error.
                raise self._connection_lost(where) from None
            if error.status_code in (401, 403):
                raise PipelineError(
                    f"The model store at {self.endpoint} refused access to {where}.",
                    "Check the storage credentials and their permissions (read for fetch, "
                    "write for publish).",
                ) from None
            raise PipelineError(
                f"The model store at {self.endpoint} answered "
                f"{error.status_code} for {where}.",
                "Try again; if it persists, check the storage account.",
            ) from None
        except AzureError as error:
            raise PipelineError(
                f"Talking to the model store at {self.endpoint} failed for {where}: "
                f"{type(error).__name__}.",
                "Try again; if it persists, check the storage account.",
            ) from None

    def _connection_lost(self, where: str) -> PipelineError:
        return PipelineError(
            f"Lost the connection to the model store at {self.endpoint} while reading "
            f"{where}, after retries.",
            "Check the network and model_store.account_url; for --env=local run "
            "`invoke local.up` to start Azurite.",
        )

    def read_bytes(self, key):
        with self._translated_errors(key):
            return self._blob(key).download_blob().readall()

    def write_bytes(self, key, data):
        with self._translated_errors(key):
            self._blob(key).upload_blob(data, overwrite=True)

    def upload_file(self, key, path):
        with self._translated_errors(key), open(path, "rb") as handle:
            self._blob(key).upload_blob(handle, overwrite=True,
                                        max_concurrency=UPLOAD_CONCURRENCY)

    def exists(self, key):
        with self._translated_errors(key):
            return self._blob(key).exists()

    def download(self, key, sink):
        with self._translated_errors(key):
            downloader = self._blob(key).download_blob(
                max_concurrency=self._download_concurrency)
            downloader.readinto(sink)
            return (downloader.properties.etag or "").strip('"')

    def prepare_publish(self):
        from azure.core.exceptions import ResourceExistsError

        with self._translated_errors(""):
            try:
                self._container.create_container()
            except ResourceExistsError:
                pass
