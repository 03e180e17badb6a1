"""Signatures and attestations stored next to an image, in cosign's tag scheme.

For an image `repo@sha256:<hex>`, its signatures are the layers of the OCI image
`repo:sha256-<hex>.sig` and its attestations the layers of `repo:sha256-<hex>.att`, as
cosign writes and reads them, so `cosign verify` / `cosign verify-attestation` read what
`push` stores. The local registry has no referrers API, which is why the tag scheme (the
fallback the OCI spec itself names) rather than referrers.

This speaks the registry's HTTP API (OCI distribution: blob upload, manifest put and get)
with `requests` directly. The Docker SDK cannot push an image that is not in the engine,
and the oras Python package is not in the locks; adding it would bring a second client for
four calls it wraps thinly, and its push takes files from disk and gives a layer no
annotation of our own without another temporary file. Credentials are those `push` logs in
with (`registry.registry_auth`), else the Docker credential store (after `az acr login`);
a registry that answers 401 with a Bearer challenge (ACR, distribution with token auth)
gets the token exchange the distribution spec describes. It must never print a password.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

from .errors import PipelineError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
DSSE_ENVELOPE = "application/vnd.dsse.envelope.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
PREDICATE_ANNOTATION = "predicateType"
LOOPBACK_PREFIXES = ("127.", "localhost:", "[::1]:")
TIMEOUT = 30


@dataclass(frozen=True)
class Layer:
    media_type: str
    content: bytes
    annotations: dict


def signature_tag(digest: str) -> str:
    return _tag(digest, "sig")


def attestation_tag(digest: str) -> str:
    return _tag(digest, "att")


def _tag(digest: str, suffix: str) -> str:
    algorithm, _, hex_digest = digest.partition(":")
    if algorithm != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", hex_digest):
        raise PipelineError(f"{digest!r} is not an image digest (sha256:<64 hex digits>).",
                            "Run `invoke push` again to record the pushed digest.")
    return f"sha256-{hex_digest}.{suffix}"


def _sha256(content: bytes) -> str:
    return "sha256:" + hashlib.sha256(content).hexdigest()


class RegistryClient:
    """One repository of one registry: read and write small OCI images by tag."""

    def __init__(self, host: str, repository: str, auth: dict | None):
        import requests

        self.host = host
        self.repository = repository
        scheme = "http" if host.startswith(LOOPBACK_PREFIXES) else "https"
        self.base = f"{scheme}://{host}/v2/{repository}"
        self.session = requests.Session()
        self.login = auth or _credential_store_login(host)
        if self.login:
            self.session.auth = (self.login["username"], self.login["password"])

    # --- HTTP with the distribution spec's token dance ----------------------------------

    def _request(self, method: str, url: str, **kwargs):
        import requests

        try:
            answer = self.session.request(method, url, timeout=TIMEOUT, **kwargs)
            if answer.status_code == 401 and "bearer" in answer.headers.get(
                    "WWW-Authenticate", "").lower():
                self._take_token(answer.headers["WWW-Authenticate"])
                answer = self.session.request(method, url, timeout=TIMEOUT, **kwargs)
        except requests.RequestException as error:
            raise PipelineError(f"The registry {self.host} did not answer "
                                f"({type(error).__name__}).",
                                "Check that it runs and is reachable (`invoke local.up` for "
                                "the local one).") from None
        if answer.status_code in (401, 403):
            raise PipelineError(f"The registry {self.host} refused {method} on "
                                f"{self.repository} ({answer.status_code}).",
                                "Check the registry login (REGISTRY_USERNAME / "
                                "REGISTRY_PASSWORD, or `az acr login`).")
        return answer

    def _take_token(self, challenge: str) -> None:
        import requests

        fields = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        params = {key: fields[key] for key in ("service", "scope") if key in fields}
        auth = (self.login["username"], self.login["password"]) if self.login else None
        answer = requests.get(fields.get("realm", ""), params=params, auth=auth,
                              timeout=TIMEOUT)
        token = answer.ok and (answer.json().get("token") or answer.json().get("access_token"))
        if not token:
            raise PipelineError(f"The registry {self.host} gave no token for "
                                f"{self.repository} ({answer.status_code}).",
                                "Check the registry login (`az acr login` for ACR).")
        self.session.auth = None
        self.session.headers["Authorization"] = f"Bearer {token}"

    # --- reading -------------------------------------------------------------------------

    def layers(self, tag: str) -> list[Layer] | None:
        """The layers of the image at `tag` with their annotations, or None if there is none."""
        answer = self._request("GET", f"{self.base}/manifests/{tag}",
                               headers={"Accept": OCI_MANIFEST})
        if answer.status_code == 404:
            return None
        if not answer.ok:
            raise PipelineError(f"The registry {self.host} could not read {self.repository}:"
                                f"{tag} ({answer.status_code}).", "Check the registry's logs.")
        layers = []
        for descriptor in answer.json().get("layers", []):
            blob = self._request("GET", f"{self.base}/blobs/{descriptor['digest']}")
            if not blob.ok or _sha256(blob.content) != descriptor["digest"]:
                raise PipelineError(f"The registry {self.host} returned a damaged blob of "
                                    f"{self.repository}:{tag}.", "Check the registry's storage.")
            layers.append(Layer(descriptor.get("mediaType", ""), blob.content,
                                descriptor.get("annotations") or {}))
        return layers

    # --- writing -------------------------------------------------------------------------

    def _upload_blob(self, content: bytes) -> str:
        digest = _sha256(content)
        if self._request("HEAD", f"{self.base}/blobs/{digest}").status_code == 200:
            return digest
        started = self._request("POST", f"{self.base}/blobs/uploads/")
        location = started.headers.get("Location", "")
        if started.status_code != 202 or not location:
            raise PipelineError(f"The registry {self.host} did not start an upload to "
                                f"{self.repository} ({started.status_code}).",
                                "Check that the repository accepts pushes.")
        if location.startswith("/"):
            location = self.base.split("/v2/")[0] + location
        finished = self._request("PUT", location, params={"digest": digest}, data=content,
                                 headers={"Content-Type": "application/octet-stream"})
        if finished.status_code != 201:
            raise PipelineError(f"The registry {self.host} refused a blob for "
                                f"{self.repository} ({finished.status_code}).",
                                "Check that the repository accepts pushes.")
        return digest

    def put_layers(self, tag: str, layers: list[Layer]) -> str:
        """Store `layers` as the image at `tag` (replacing what it held); its manifest digest."""
        descriptors = []
        for layer in layers:
            descriptors.append({"mediaType": layer.media_type, "size": len(layer.content),
                                "digest": self._upload_blob(layer.content),
                                "annotations": layer.annotations})
        config = json.dumps({"architecture": "", "os": "", "config": {},
                             "rootfs": {"type": "layers",
                                        "diff_ids": [d["digest"] for d in descriptors]}},
                            sort_keys=True).encode()
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "size": len(config),
                       "digest": self._upload_blob(config)},
            "layers": descriptors,
        }, sort_keys=True).encode()
        answer = self._request("PUT", f"{self.base}/manifests/{tag}", data=manifest,
                               headers={"Content-Type": OCI_MANIFEST})
        if answer.status_code != 201:
            raise PipelineError(f"The registry {self.host} refused {self.repository}:{tag} "
                                f"({answer.status_code}).",
                                "Check that the repository accepts pushes.")
        return _sha256(manifest)


def _credential_store_login(host: str) -> dict | None:
    """What `docker login` / `az acr login` left in the Docker credential store, if anything."""
    from docker import auth

    try:
        found = auth.resolve_authconfig(auth.load_config(), host) or {}
    except Exception:  # a broken credential helper: go on without, the registry will say 401
        return None
    username = found.get("username") or found.get("Username")
    password = found.get("password") or found.get("Password") or found.get("IdentityToken")
    return {"username": username, "password": password} if username and password else None


def client_for(settings, auth: dict | None = None) -> RegistryClient:
    from .registry import registry_auth

    return RegistryClient(settings.registry.host, settings.image.repository,
                          auth if auth is not None else registry_auth(settings))
