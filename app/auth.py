"""The optional API key that guards scoring: `Authorization: Bearer <key>` or `X-API-Key`.

The key comes from `API_KEY`, or from the file `API_KEY_FILE` names (a mounted
Kubernetes secret). Without either, scoring is open and the app says so once at
start. Only scoring is guarded, /score and v2 infer (by `check_api_key` in app.scoring and
app.open_inference): probes, metrics and the API descriptions must stay reachable by the
platform. This module must never
log or echo a key, offered or configured, and never compare keys in a way whose
timing depends on how much of the key a caller guessed right.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from pathlib import Path

from flask import Flask, current_app

from app.errors import ApiError

logger = logging.getLogger(__name__)

_EXTENSION_KEY = "modelship.api_key"
API_KEY_HEADER = "X-API-Key"
_API_KEY_ENVIRON_KEY = "HTTP_X_API_KEY"
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


class ApiKeyConfigError(ValueError):
    """The API key settings are contradictory or point at nothing usable."""


def configured_key(config) -> str | None:
    """The API key the settings ask for, or None when scoring is meant to be open."""
    key, key_file = config.get("API_KEY") or "", config.get("API_KEY_FILE") or ""
    if key and key_file:
        raise ApiKeyConfigError("set API_KEY or API_KEY_FILE, not both")
    if key_file:
        try:
            key = Path(key_file).read_text().strip()
        except OSError as error:
            raise ApiKeyConfigError(
                f"API_KEY_FILE {key_file} cannot be read: {error.strerror}"
            ) from None
        if not key:
            raise ApiKeyConfigError(f"API_KEY_FILE {key_file} is empty")
    return key or None


def _digest(key: str) -> bytes:
    # Comparing digests keeps the comparison's length fixed, so not even the key's
    # length leaks through timing.
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def _offered_key(environ: dict) -> str | None:
    # Read from the WSGI environ: the same values request.headers gives, at a third of
    # the cost on the scoring hot path.
    scheme, _, credentials = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return environ.get(_API_KEY_ENVIRON_KEY) or None


def expected_key_digest(app: Flask) -> bytes | None:
    """The configured key's digest, or None when scoring is open."""
    return app.extensions[_EXTENSION_KEY]


def key_required() -> bool:
    return expected_key_digest(current_app) is not None


def check_api_key(environ: dict, expected: bytes | None) -> None:
    """Raise a 401 ApiError unless the request carries the key (no-op when `expected` is None)."""
    if expected is None:
        return
    offered = _offered_key(environ)
    if offered is None:
        raise ApiError(
            401,
            "missing_api_key",
            f"this endpoint needs an API key: send Authorization: Bearer <key> "
            f"or {API_KEY_HEADER}: <key>",
            _CHALLENGE,
        )
    if not hmac.compare_digest(_digest(offered), expected):
        raise ApiError(401, "invalid_api_key", "the API key sent is not valid", _CHALLENGE)


def init_app(app: Flask) -> None:
    key = configured_key(app.config)
    app.extensions[_EXTENSION_KEY] = _digest(key) if key else None
    if key is None:
        logger.warning(
            "no API key configured: POST /score and v2 infer answer anyone who can reach them; "
            "set API_KEY or API_KEY_FILE to require one"
        )
