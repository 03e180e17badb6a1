"""The `s3://<bucket>/<prefix>` backend on boto3, for AWS and S3-compatible servers.

Credentials and region come from boto3's standard chain (environment, shared config,
instance roles); an endpoint override points it at an S3-compatible server. Large objects
download as parallel ranged GETs through boto3's transfer manager, with retries configured
on the client. This module must never show an access key or presigned URL in a message,
nor talk plain http to anything but loopback.
"""

from __future__ import annotations

from contextlib import contextmanager

from ..errors import PipelineError
from ..redact import without_query
from . import (ModelStore, StoreObjectChanged, StoreObjectExists, StoreObjectMissing, is_loopback,
                refuse_plain_http)

TRANSFER_CHUNK = 8 * 1024 * 1024
TRANSFER_CONCURRENCY = 4

_MISSING_OBJECT = {"NoSuchKey", "404", "NotFound"}
_REFUSED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
            "InvalidToken", "403", "AllAccessDisabled"}


def _transfer_config(single_stream: bool = False):
    from boto3.s3.transfer import TransferConfig

    # A loopback S3-compatible server shares our CPUs and serves every ranged GET by
    # reading the whole object again: one stream is faster there (benchmarks/bench_fetch.py).
    threshold = 2**63 if single_stream else TRANSFER_CHUNK
    return TransferConfig(
        multipart_threshold=threshold, multipart_chunksize=TRANSFER_CHUNK,
        max_concurrency=TRANSFER_CONCURRENCY, num_download_attempts=5,
        io_chunksize=1024 * 1024,
    )


# The instance-metadata probe (an EC2 or ECS role) gets one short try: off AWS it would
# otherwise retry for seconds before anyone hears that no credential is configured.
METADATA_TIMEOUT_SECONDS = 1


class S3Store(ModelStore):
    def __init__(self, bucket: str, prefix: str, endpoint_url: str = "", env: str = ""):
        import boto3
        from botocore.config import Config

        self.env = env
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")
        if endpoint_url:
            refuse_plain_http(endpoint_url, "model_store.endpoint_url")
        config = Config(
            retries={"max_attempts": 5, "mode": "standard"},
            connect_timeout=5, read_timeout=60,
            max_pool_connections=TRANSFER_CONCURRENCY * 2,
            # S3-compatible servers rarely do virtual-host buckets.
            s3={"addressing_style": "path"} if endpoint_url else {},
        )
        session = boto3.session.Session()
        session._session.set_config_variable("metadata_service_timeout",
                                             METADATA_TIMEOUT_SECONDS)
        session._session.set_config_variable("metadata_service_num_attempts", 1)
        if session.get_credentials() is None:
            raise PipelineError(
                f"No AWS credentials are configured for the model store {self.uri} "
                f"(--env={env}).",
                "Give AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE (with "
                "`aws configure` or `aws sso login`), or run where an instance or pod role "
                "applies.",
            )
        self._client = session.client("s3", endpoint_url=endpoint_url or None, config=config)
        self.endpoint = without_query(self._client.meta.endpoint_url)
        # AWS_ENDPOINT_URL(_S3) can set the endpoint too: hold it to the same rule.
        refuse_plain_http(self.endpoint, "model_store.endpoint_url / AWS_ENDPOINT_URL_S3")

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    @contextmanager
    def _translated_errors(self, key: str):
        """Turn boto3's exceptions into PipelineErrors that name no credential."""
        from boto3.exceptions import S3TransferFailedError
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectionError as BotoConnectionError,
            NoCredentialsError,
            ResponseStreamingError,
        )
        from s3transfer.exceptions import RetriesExceededError

        where = f"{self.uri}/{key}" if key else self.uri
        try:
            yield
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            if code == "NoSuchBucket" or (not key and code in _MISSING_OBJECT):
                raise StoreObjectMissing(
                    f"The S3 endpoint {self.endpoint} has no bucket '{self.bucket}'.",
                    "Check model_store.uri (and the region), or create the bucket.",
                    whole_store=True,
                ) from None
            if code in _MISSING_OBJECT:
                raise StoreObjectMissing(
                    f"The model store has no object {where}.",
                    "Publish a model first (`invoke model.publish`) or check model_store.uri.",
                ) from None
            if code in _REFUSED:
                raise PipelineError(
                    f"The S3 endpoint {self.endpoint} refused access to {where} ({code}).",
                    f"Check the AWS credentials for '{self.env}' (AWS_PROFILE / "
                    "AWS_ACCESS_KEY_ID, not expired) and their permissions on the bucket.",
                ) from None
            raise PipelineError(
                f"The S3 endpoint {self.endpoint} answered {code or 'an error'} for {where}.",
                "Try again; if it persists, check the bucket.",
            ) from None
        except NoCredentialsError:
            raise PipelineError(
                f"No AWS credentials were found for {self.uri} (--env={self.env}).",
                "Set AWS_PROFILE or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or run where "
                "an instance role applies.",
            ) from None
        except (BotoConnectionError, ResponseStreamingError, RetriesExceededError,
                S3TransferFailedError):
            raise PipelineError(
                f"Lost the connection to the S3 endpoint {self.endpoint} while transferring "
                f"{where}, after retries.",
                f"Check the network and model_store.endpoint_url of '{self.env}', then try "
                "again.",
            ) from None
        except BotoCoreError as error:
            raise PipelineError(
                f"Talking to the S3 endpoint {self.endpoint} failed for {where}: "
                f"{type(error).__name__}.",
                "Try again; if it persists, check the endpoint and the bucket.",
            ) from None

    def read_bytes(self, key):
        with self._translated_errors(key):
            return self._client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

    def write_bytes(self, key, data):
        with self._translated_errors(key):
            self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def upload_file(self, key, path, progress=None):
        with self._translated_errors(key):
            self._client.upload_file(str(path), self.bucket, self._key(key),
                                     Config=_transfer_config(),
                                     Callback=progress.advance if progress else None)

    def create_bytes(self, key, data):
        from botocore.exceptions import ClientError

        with self._translated_errors(key):
            try:
                # If-None-Match: * -- S3 refuses the write when the key exists (412), or
                # when another conditional write to it is in flight (409).
                self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data,
                                        IfNoneMatch="*")
            except ClientError as error:
                code = str(error.response.get("Error", {}).get("Code", ""))
                if code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                    raise StoreObjectExists(f"{self.uri}/{key} already exists.") from None
                raise

    def read_tagged(self, key):
        with self._translated_errors(key):
            answer = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
            return answer["Body"].read(), answer["ETag"]

    def _replace_existing(self, key, data, tag):
        from botocore.exceptions import ClientError

        with self._translated_errors(key):
            try:
                self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data,
                                        IfMatch=tag)
            except ClientError as error:
                code = str(error.response.get("Error", {}).get("Code", ""))
                if code in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey",
                            "412", "409", "404"):
                    raise StoreObjectChanged(
                        f"{self.uri}/{key} was rewritten meanwhile.") from None
                raise

    def list_keys(self, prefix=""):
        start = f"{self.prefix}/" if self.prefix else ""
        keys = []
        with self._translated_errors(""):
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=start + prefix)
            for page in pages:
                keys.extend(item["Key"][len(start):] for item in page.get("Contents", []))
        return sorted(keys)

    def exists(self, key):
        try:
            with self._translated_errors(key):
                self._client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except StoreObjectMissing as missing:
            if missing.whole_store:
                raise
            return False

    def delete(self, key):
        with self._translated_errors(key):
            self._client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def download(self, key, sink):
        with self._translated_errors(key):
            head = self._client.head_object(Bucket=self.bucket, Key=self._key(key))
            self._client.download_fileobj(self.bucket, self._key(key), sink,
                                          Config=_transfer_config(is_loopback(self.endpoint)))
        return str(head.get("ETag", "")).strip('"')

    def prepare_publish(self):
        with self._translated_errors(""):
            self._client.head_bucket(Bucket=self.bucket)
