"""Signed models on every kind of store: a good signature passes, a missing or forged one
is refused at fetch with one line, and the previous local model stays."""

from __future__ import annotations

import hashlib
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from test_model_store_races import store_spec  # noqa: F401  (the same three stores)

from modelship import model_store, signing
from modelship.errors import PipelineError

pytestmark = pytest.mark.integration


def key_pair(folder, name):
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = folder / f"{name}.pem", folder / f"{name}.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


@pytest.fixture
def keys(tmp_path):
    return {"publisher": key_pair(tmp_path, "publisher"), "forger": key_pair(tmp_path, "forger")}


def publish_signed(store, folder, version, private_key, force=False):
    signature = folder / "model.sig"
    signing.sign(folder / "model.onnx", model_store.read_model_dir(folder), private_key,
                 signature)
    return model_store.publish(store, folder, version, force=force, signature=signature)


def test_a_good_signature_passes_and_a_forged_or_missing_one_is_refused(
        store_spec, make_model, keys, tmp_path):  # noqa: F811
    store = model_store.open_store(*store_spec)
    public_key = keys["publisher"][1]
    publish_signed(store, make_model("1", seed=1), "1", keys["publisher"][0])
    model_store.fetch(store, tmp_path / "build", public_key=public_key)
    good = (tmp_path / "build" / "model.onnx").read_bytes()

    publish_signed(store, make_model("2", seed=2), "2", keys["forger"][0])
    with pytest.raises(PipelineError, match="does not verify with .*refusing the model"):
        model_store.fetch(store, tmp_path / "build", public_key=public_key)

    model_store.publish(store, make_model("3", seed=3), "3")
    with pytest.raises(PipelineError, match="is not signed, and this environment requires"):
        model_store.fetch(store, tmp_path / "build", public_key=public_key)
    assert (tmp_path / "build" / "model.onnx").read_bytes() == good
    # Without a configured key, integrity alone still applies (and passes).
    assert model_store.fetch(store, tmp_path / "build").version == "3"


def test_model_and_metadata_replaced_together_are_caught_by_the_signature(
        store_spec, make_model, keys, tmp_path):  # noqa: F811
    """What the sha256 alone cannot catch: a store writer swapping both."""
    store = model_store.open_store(*store_spec)
    metadata = publish_signed(store, make_model("1", seed=1), "1", keys["publisher"][0])
    evil = b"not the published model"
    evil_sha = hashlib.sha256(evil).hexdigest()
    evil_file = f"model-{evil_sha}.onnx"
    store.write_bytes(f"1/{evil_file}", evil)
    store.write_bytes("1/metadata.json", json.dumps(
        {**metadata, "sha256": evil_sha, "size": len(evil), "model_file": evil_file}).encode())
    assert model_store.fetch(store, tmp_path / "plain", "1").sha256 == evil_sha  # integrity: ok
    with pytest.raises(PipelineError, match="model bytes, sha256, size differ from what was "
                                            "signed; refusing the model"):
        model_store.fetch(store, tmp_path / "build", "1", public_key=keys["publisher"][1])


def test_a_signature_of_the_model_bytes_alone_is_refused_as_made_before_metadata_signing(
        store_spec, make_model, keys, tmp_path):  # noqa: F811
    """Signatures from before the metadata was signed too must be re-published."""
    import model_signing

    store = model_store.open_store(*store_spec)
    folder = make_model("1", seed=1)
    bytes_only = tmp_path / "bytes-only.sig"
    model_signing.signing.Config().use_elliptic_key_signer(
        private_key=keys["publisher"][0]).sign(folder / "model.onnx", bytes_only)
    model_store.publish(store, folder, "1", signature=bytes_only)
    with pytest.raises(PipelineError, match="covers the model bytes only .*refusing the model"):
        model_store.fetch(store, tmp_path / "build", public_key=keys["publisher"][1])
    assert not (tmp_path / "build").exists()
