"""Masking of secrets in text the pipeline prints: messages, commands, URLs.

Storage credentials reach the pipeline as SAS tokens, account keys, connection strings and
cloud access keys; any of them can end up inside an SDK's error text or a URL. `mask()`
replaces both the values it knows from the environment and anything shaped like a secret.
It must never print, log or store what it masks.
"""

from __future__ import annotations

import os
import re

MASK = "***"

# Environment variables whose values are secrets wherever they turn up.
SECRET_VARIABLES = (
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_KEY",
    "AZURE_CLIENT_SECRET",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
)

# Secret-shaped fragments: SAS signatures and presigned-URL parts, connection-string keys.
_SHAPED = [
    re.compile(r"(?i)\b(sig|x-amz-signature|x-amz-credential|x-amz-security-token)=[^&\s\"'<>]+"),
    re.compile(r"(?i)\b(AccountKey|SharedAccessSignature|SharedAccessKey)=[^;\s\"'<>]+"),
    re.compile(r"(?i)\b(aws_secret_access_key|aws_session_token)(\s*[=:]\s*)[^\s\"',]+"),
]


def _known_secrets() -> list[str]:
    values = [os.environ.get(name, "") for name in SECRET_VARIABLES]
    # Short values are too likely to match ordinary text; real secrets are long.
    return sorted((value for value in values if len(value) >= 8), key=len, reverse=True)


def mask(text: str) -> str:
    """`text` with every secret it holds replaced by ***."""
    for secret in _known_secrets():
        text = text.replace(secret, MASK)
        # A SAS token often appears without its leading '?'.
        if secret.startswith("?"):
            text = text.replace(secret[1:], MASK)
    for pattern in _SHAPED:
        if pattern.groups == 1:
            text = pattern.sub(lambda match: f"{match.group(1)}={MASK}", text)
        else:
            text = pattern.sub(lambda match: f"{match.group(1)}{match.group(2)}{MASK}", text)
    return text


def without_query(url: str) -> str:
    """A URL without its query string, where SAS tokens and presigned signatures live."""
    return url.split("?", 1)[0]
