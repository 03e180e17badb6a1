"""Authenticity of a published model: OpenSSF model-signing with a local elliptic-curve key.

The sha256 in metadata.json only proves a download is intact; whoever can write to the
store can replace model and metadata together. A signature made at publish with a private
key that never goes near the store, checked at fetch against the public key in the
environment's settings (`model_store.public_key`), proves who published the bytes. This
module must never read a private key except to sign, and never let an unverified model
through once a public key is configured.
"""

from __future__ import annotations

from pathlib import Path

from .errors import PipelineError


def sign(model_path: Path, private_key: Path, signature_path: Path) -> None:
    import model_signing

    private_key = Path(private_key)
    if not private_key.is_file():
        raise PipelineError(f"No private key at {private_key}.",
                            "Pass --signing-key path/to/private-key.pem (EC, PEM).")
    try:
        model_signing.signing.Config().use_elliptic_key_signer(
            private_key=private_key).sign(model_path, signature_path)
    except (ValueError, TypeError, OSError) as error:
        raise PipelineError(f"Signing with {private_key} failed: {type(error).__name__}.",
                            "Use an elliptic-curve private key in PEM form (docs/model-store.md).") \
            from None


def verify(model_path: Path, signature_path: Path, public_key: Path, where: str) -> None:
    """Raise unless `signature_path` is a valid signature of `model_path` by `public_key`."""
    import model_signing

    public_key = Path(public_key)
    if not public_key.is_file():
        raise PipelineError(f"model_store.public_key names {public_key}, which does not exist.",
                            "Point it at the publisher's public key (PEM).")
    try:
        model_signing.verifying.Config().use_elliptic_key_verifier(
            public_key=public_key).verify(model_path, signature_path)
    except Exception as error:  # the library raises ValueError and others for a bad signature
        raise PipelineError(
            f"The signature of {where} does not verify with {public_key} "
            f"({type(error).__name__}); refusing the model.",
            "Someone other than the key's owner published it, or it was altered: publish it "
            "again with the right --signing-key.",
        ) from None
