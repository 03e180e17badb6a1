"""Authenticity of a published model: OpenSSF model-signing with a local elliptic-curve key.

The sha256 in metadata.json only proves a download is intact; whoever can write to the
store can replace model and metadata together. A signature made at publish with a private
key that never goes near the store, checked at fetch against the public key in the
environment's settings (`model_store.public_key`), proves who published the model *and*
what it was published as: the signed payload is a folder holding the model file and one
file per metadata field (name, version, sha256, golden samples, tolerance, ...), so an old
signed model re-published under a new version or with edited samples no longer verifies,
and the refusal names the fields that differ. This module must never read a private key
except to sign, and never let an unverified model through once a public key is configured.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import PipelineError

# Where the payload folder keeps the model and the fields; the names are part of what is
# signed, so changing them invalidates every signature.
PAYLOAD_MODEL = "model.onnx"
PAYLOAD_FIELDS = "metadata"
# Set by publish after signing (where the files lie in the store), and checked there by
# the sha256: not part of what a publisher vouches for.
UNSIGNED_FIELDS = frozenset({"model_file", "signature_file"})
# model-signing checks the signature itself first and only then compares the files, saying
# "Signature mismatch: [...]" with the differing paths: the words below pick the fields out
# of it (tests/integration/stores/test_signed_fetch_cli.py pins them). Should the library
# reword it, the refusal stays and only loses the field names.
_FIELD_FILE = re.compile(rf"{PAYLOAD_FIELDS}/([A-Za-z0-9_]+)\.json")
_MODEL_FILE = re.compile(rf"(?<![/\w]){re.escape(PAYLOAD_MODEL)}")
# A signature of one file (the model alone) lists its only resource as ".".
_SINGLE_FILE = re.compile(r"Missing files in model '[^']*': \.(?:\"|'|$)")


def signed_fields(metadata: dict) -> dict:
    return {key: value for key, value in metadata.items() if key not in UNSIGNED_FIELDS}


def _field_text(value) -> str:
    # One canonical spelling, so the same values read back from JSON hash the same.
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


@contextmanager
def payload_folder(model_path: Path, metadata: dict, beside: Path):
    """A temporary folder of what is signed: the model (a hard link, no copy where the
    filesystem allows) and `metadata/<field>.json` per signed field."""
    folder = Path(tempfile.mkdtemp(prefix=".signed-payload-", dir=beside))
    try:
        try:
            os.link(model_path, folder / PAYLOAD_MODEL)
        except OSError:
            shutil.copyfile(model_path, folder / PAYLOAD_MODEL)
        fields = folder / PAYLOAD_FIELDS
        fields.mkdir()
        for key, value in signed_fields(metadata).items():
            (fields / f"{key}.json").write_text(_field_text(value))
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def sign(model_path: Path, metadata: dict, private_key: Path, signature_path: Path) -> None:
    """Sign the model together with its metadata (everything a fetch will trust)."""
    import model_signing

    private_key = Path(private_key)
    if not private_key.is_file():
        raise PipelineError(f"No private key at {private_key}.",
                            "Pass --signing-key path/to/private-key.pem (EC, PEM).")
    try:
        with payload_folder(Path(model_path), metadata, Path(signature_path).parent) as folder:
            model_signing.signing.Config().use_elliptic_key_signer(
                private_key=private_key).sign(folder, signature_path)
    except (ValueError, TypeError, OSError) as error:
        raise PipelineError(f"Signing with {private_key} failed: {type(error).__name__}.",
                            "Use an elliptic-curve private key in PEM form (docs/model-store.md).") \
            from None


def _differing(message: str) -> tuple[list[str], bool]:
    """(the metadata fields, or `model bytes`, a genuine signature disagrees with; whether the
    signature covers the model file alone, as signatures made before modelship signed the
    metadata do)."""
    if _SINGLE_FILE.search(message):
        return [], True
    fields = sorted(set(_FIELD_FILE.findall(message)))
    model_differs = _MODEL_FILE.search(message) is not None
    return [*(["model bytes"] if model_differs else []), *fields], False


def verify(model_path: Path, metadata: dict, signature_path: Path, public_key: Path,
           where: str) -> None:
    """Raise unless `signature_path` is `public_key`'s signature of this model *and* these
    metadata values; the error names the fields that differ from what was signed."""
    import model_signing

    public_key = Path(public_key)
    if not public_key.is_file():
        raise PipelineError(f"model_store.public_key names {public_key}, which does not exist.",
                            "Point it at the publisher's public key (PEM).")
    with payload_folder(Path(model_path), metadata, Path(signature_path).parent) as folder:
        try:
            model_signing.verifying.Config().use_elliptic_key_verifier(
                public_key=public_key).verify(folder, signature_path)
            return
        except Exception as error:  # the library raises ValueError and others for a bad signature
            message, kind = str(error), type(error).__name__
    named, model_only = _differing(message) if message.startswith(
        "Signature mismatch") else ([], False)
    if model_only:
        raise PipelineError(
            f"The signature of {where} covers the model bytes only (made before modelship "
            "signed the metadata too); refusing the model.",
            "Publish it again with `invoke model.publish --signing-key KEY.pem --force` "
            "(docs/model-store.md, Signing).")
    if named:
        raise PipelineError(
            f"The signature of {where} is genuine but was made for something else: "
            f"{', '.join(named)} differ from what was signed; refusing the model.",
            "Someone re-used a signature under other bytes or metadata: publish the model "
            "again with the right --signing-key, or fetch the version it was signed for.")
    raise PipelineError(
        f"The signature of {where} does not verify with {public_key} ({kind}); "
        "refusing the model.",
        "Someone other than the key's owner published it, or it was altered: publish it "
        "again with the right --signing-key.",
    ) from None
