"""Who built the image, from what: signed SLSA provenance, checked before a release.

`push` signs the pushed digest (a cosign simple-signing payload) and an in-toto Statement v1
whose predicate is SLSA provenance v1: the image digest as subject; the git commit,
repository and dirty state; the model's name, version and sha256; the image lock's sha256;
the builder (this laptop, or the Azure Pipelines run). The statement travels as a DSSE
envelope signed with securesystemslib (the signing library of in-toto and TUF). Both are
stored in the registry next to the image (`oci_artifacts`, cosign's `.sig` / `.att` tags),
and so is the image's CycloneDX SBOM, as a second signed statement in `.att`.

`apply` refuses a release unless, with the environment's public key, a signature of the
digest verifies and an attestation verifies whose subject is that digest and whose commit
and model sha256 are the record's, and whose SBOM attestations name that digest; `build`
reuses a cached image only on the same terms (its model, not its commit: the same inputs at
another commit make the same image). `rollback` verifies the release it goes back to alike.

Keys (`provenance_keys`, which also makes them): `provenance.signing_key` (a PEM file) or
`provenance.signing_key_env` (a variable holding the PEM, e.g. from Key Vault in the
pipeline) signs; `provenance.public_key` (one, or a list during a rotation) verifies, and
`require_verified` refuses an environment without one instead of warning. `generate_key`
makes a pair on first use (the local environment's, per machine). This module must never
print or store a private key anywhere but its own file.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path

from . import oci_artifacts
from .errors import PipelineError
from .names import Echo
from .oci_artifacts import Layer
from .release_record import PushRecord, ReleaseRecord
from .provenance_keys import setting_path, write_key_pair
from .stage_files import PROJECT_ROOT

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
SLSA_PROVENANCE = "https://slsa.dev/provenance/v1"
# cosign's `--type cyclonedx`: an SBOM attestation whose predicate is the CycloneDX document.
CYCLONEDX_BOM = "https://cyclonedx.org/bom"
IN_TOTO_PAYLOAD = "application/vnd.in-toto+json"
BUILD_TYPE = "https://modelship.dev/build/image/v1"
SIGNATURE_TYPE = "cosign container image signature"
IMAGE_LOCK = PROJECT_ROOT / "requirements" / "image.lock"


class ProvenanceRefused(PipelineError):
    """A release whose signature or provenance does not hold: nothing may be applied."""


# --- keys ------------------------------------------------------------------------------------


def ensure_generated_key(settings) -> None:
    """The environment's key pair, made on first use where `generate_key` asks for it."""
    section = settings.provenance
    if not (section.generate_key and section.signing_key and section.public_keys):
        return
    private_path = setting_path(section.signing_key)
    if not private_path.exists():
        write_key_pair(private_path, setting_path(section.public_keys[0]))


def signer_for(settings, dry: bool = False):
    """A securesystemslib signer with the environment's private key, or None if none is set
    (or, under --dry, if it would first have to be generated)."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from securesystemslib.signer import CryptoSigner

    section = settings.provenance
    if dry and section.generate_key and not setting_path(section.signing_key).exists():
        return None
    if not dry:
        ensure_generated_key(settings)
    if section.signing_key_env and os.environ.get(section.signing_key_env):
        pem, where = os.environ[section.signing_key_env].encode(), section.signing_key_env
    elif section.signing_key:
        path = setting_path(section.signing_key)
        if not path.is_file():
            raise PipelineError(f"provenance.signing_key names {path}, which does not exist.",
                                "Point it at the signing key (PEM) or set "
                                f"{section.signing_key_env or 'provenance.signing_key_env'}.")
        pem, where = path.read_bytes(), str(path)
    else:
        return None
    try:
        return CryptoSigner(load_pem_private_key(pem, password=None))
    except (ValueError, TypeError) as error:
        raise PipelineError(f"The provenance signing key in {where} is not an unencrypted "
                            f"PEM private key ({type(error).__name__}).",
                            "Use an EC P-256 key in PEM (docs/provenance.md).") from None


def public_keys_for(settings) -> list:
    """The environment's verifying keys (securesystemslib Keys): one, or during a rotation
    the new and the old; empty: images are unverified."""
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
    from securesystemslib.signer import SSlibKey

    keys = []
    ensure_generated_key(settings)
    for setting in settings.provenance.public_keys:
        path = setting_path(setting)
        if not path.is_file():
            raise ProvenanceRefused(f"provenance.public_key names {path}, which does not "
                                    "exist.", "Point it at the environment's public key (PEM).")
        try:
            keys.append(SSlibKey.from_crypto(load_pem_public_key(path.read_bytes())))
        except (ValueError, TypeError, Exception) as error:
            raise ProvenanceRefused(f"provenance.public_key {path} is not a PEM public key "
                                    f"({type(error).__name__}).",
                                    "Point it at the environment's public key (PEM).") from None
    return keys


# --- what is signed --------------------------------------------------------------------------


def builder_id() -> str:
    """The Azure Pipelines run, when this runs in one; else this machine."""
    if os.environ.get("TF_BUILD", "").lower() == "true":
        collection = os.environ.get("SYSTEM_COLLECTIONURI", "").rstrip("/")
        project = os.environ.get("SYSTEM_TEAMPROJECT", "")
        run = os.environ.get("BUILD_BUILDID", "")
        return f"{collection}/{project}/_build/results?buildId={run}"
    return f"laptop:{platform.node()}"


def statement(record: ReleaseRecord, pushed: PushRecord) -> dict:
    """The in-toto Statement v1 (SLSA provenance v1) for the image `pushed` names."""
    lock_sha256 = hashlib.sha256(IMAGE_LOCK.read_bytes()).hexdigest()
    repository = record.image.labels.get("org.opencontainers.image.source", "")
    model = record.model
    predicate = {
        "buildDefinition": {
            "buildType": BUILD_TYPE,
            "externalParameters": {
                "source": {"repository": repository, "commit": record.source.revision,
                           "dirty": record.source.dirty},
                "model": {"name": model.name, "version": model.version,
                          "sha256": model.sha256},
            },
            "resolvedDependencies": [
                {"uri": f"git+{repository}" if repository else "git",
                 "digest": {"gitCommit": record.source.revision}},
                {"uri": f"model:{model.name}/{model.version}", "digest": {"sha256": model.sha256}},
                {"uri": "requirements/image.lock", "digest": {"sha256": lock_sha256}},
            ],
        },
        "runDetails": {
            "builder": {"id": builder_id()},
            "metadata": {"invocationId": record.image.inputs},
        },
    }
    return _statement(pushed, SLSA_PROVENANCE, predicate)


def _statement(pushed: PushRecord, predicate_type: str, predicate: dict) -> dict:
    """An in-toto Statement v1 about the pushed digest. The predicate is set after the
    library validated the rest: its protobuf Struct would turn every number into a float
    (a CycloneDX `version: 1` into 1.0)."""
    from google.protobuf import json_format
    from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
    from in_toto_attestation.v1.statement import Statement

    subject = ResourceDescriptor(name=pushed.repository,
                                 digest={"sha256": pushed.digest.removeprefix("sha256:")})
    built = Statement([subject.pb], predicate_type, {"set": "below"})  # it wants one
    built.validate()
    return dict(json_format.MessageToDict(built.pb), predicate=predicate)


def signature_payload(pushed: PushRecord) -> bytes:
    return json.dumps({
        "critical": {"identity": {"docker-reference": pushed.repository},
                     "image": {"docker-manifest-digest": pushed.digest},
                     "type": SIGNATURE_TYPE},
        "optional": None,
    }, sort_keys=True).encode()


def would_sign(settings, record: ReleaseRecord, reference: str = "the pushed image") -> str:
    """What `push --dry` says about signing."""
    section = settings.provenance
    if not (section.signing_key or section.signing_key_env and
            os.environ.get(section.signing_key_env)):
        return (f"[dry] would not sign: no provenance.signing_key for '{settings.env}'")
    return (f"[dry] would sign {reference} and attest its provenance (commit "
            f"{record.source.revision[:12]}, model sha256 {record.model.sha256[:12]}…) in the "
            "registry")


def attestation_layer(envelope, predicate_type: str = SLSA_PROVENANCE) -> Layer:
    """A signed DSSE envelope as cosign stores an attestation: the signature is inside the
    envelope, yet cosign reads every `.att` layer's signature annotation, so it is there,
    empty, as cosign writes it."""
    return Layer(oci_artifacts.DSSE_ENVELOPE, json.dumps(envelope.to_dict()).encode(),
                 {oci_artifacts.SIGNATURE_ANNOTATION: "",
                  oci_artifacts.PREDICATE_ANNOTATION: predicate_type})


def signed_attestation(signer, statement: dict) -> Layer:
    from securesystemslib.dsse import Envelope

    envelope = Envelope(json.dumps(statement, sort_keys=True).encode(), IN_TOTO_PAYLOAD, {})
    envelope.sign(signer)
    return attestation_layer(envelope, statement["predicateType"])


def _is_sbom(layer: Layer) -> bool:
    return layer.annotations.get(oci_artifacts.PREDICATE_ANNOTATION) == CYCLONEDX_BOM


# --- push: sign and store --------------------------------------------------------------------


def ensure_signed(settings, record: ReleaseRecord, pushed: PushRecord, *, dry: bool,
                  echo: Echo, auth: dict | None = None, sbom: dict | None = None) -> str | None:
    """Sign `pushed` and attest this record's provenance (and `sbom`, the image's CycloneDX
    document, when given) in the registry, unless a valid signature and matching
    attestations with this key are already there. A line to show, or None when the
    environment signs nothing."""
    if dry and signer_for(settings, dry=True) is None:
        return would_sign(settings, record, pushed.reference)
    signer = signer_for(settings)
    if signer is None:
        return (f"not signed: no provenance.signing_key for '{settings.env}', so "
                "`apply` cannot verify this image")
    key = signer.public_key
    # Read even under --dry: reading the registry changes nothing.
    registry = oci_artifacts.client_for(settings, auth)
    signatures = registry.layers(oci_artifacts.signature_tag(pushed.digest)) or []
    attestations = registry.layers(oci_artifacts.attestation_tag(pushed.digest)) or []
    needs_signature = not any(_signature_holds(layer, key, pushed.digest)
                              for layer in signatures)
    # An attestation stored before its layer carried cosign's (empty) signature annotation
    # verifies here but not in cosign: it is attested again in the form cosign reads.
    needs_attestation = not any(
        oci_artifacts.SIGNATURE_ANNOTATION in layer.annotations
        and _attestation_problem(layer, key, pushed.digest, record.source.revision,
                                 record.model.sha256) is None for layer in attestations)
    if dry:
        if not (needs_signature or needs_attestation):
            return None
        return would_sign(settings, record, pushed.reference)
    changed = []
    if needs_signature:
        payload = signature_payload(pushed)
        signature = base64.b64encode(bytes.fromhex(signer.sign(payload).signature)).decode()
        registry.put_layers(oci_artifacts.signature_tag(pushed.digest), signatures + [Layer(
            oci_artifacts.SIMPLE_SIGNING, payload,
            {oci_artifacts.SIGNATURE_ANNOTATION: signature})])
        changed.append("signed")
    if needs_attestation:
        attestations = attestations + [signed_attestation(signer, statement(record, pushed))]
        registry.put_layers(oci_artifacts.attestation_tag(pushed.digest), attestations)
        changed.append("attested its provenance")
    signed_sboms = [_signed_payload(layer, key) or {} for layer in attestations
                    if _is_sbom(layer)]
    if sbom is not None and sbom.get("serialNumber") not in [
            (signed.get("predicate") or {}).get("serialNumber") for signed in signed_sboms]:
        registry.put_layers(oci_artifacts.attestation_tag(pushed.digest), attestations + [
            signed_attestation(signer, _statement(pushed, CYCLONEDX_BOM, sbom))])
        changed.append("attested its SBOM")
    if not changed:
        return f"signature and provenance of {pushed.digest[:19]}… already in the registry"
    return f"{' and '.join(changed)} {pushed.digest[:19]}… in the registry"


# --- apply and build: verify -----------------------------------------------------------------


@dataclass(frozen=True)
class Verified:
    digest: str
    commit: str
    model_sha256: str


def _signature_holds(layer: Layer, key, digest: str) -> bool:
    from securesystemslib.exceptions import UnverifiedSignatureError
    from securesystemslib.signer import Signature

    encoded = layer.annotations.get(oci_artifacts.SIGNATURE_ANNOTATION, "")
    try:
        claimed = json.loads(layer.content)["critical"]["image"]["docker-manifest-digest"]
        key.verify_signature(Signature(key.keyid, base64.b64decode(encoded).hex()),
                             layer.content)
    except (UnverifiedSignatureError, ValueError, KeyError, TypeError):
        return False
    return claimed == digest


def _signed_payload(layer: Layer, key) -> dict | None:
    """The in-toto statement of an attestation layer, if `key` signed it; else None."""
    from securesystemslib.dsse import Envelope
    from securesystemslib.exceptions import VerificationError

    try:
        envelope = Envelope.from_dict(json.loads(layer.content))
        envelope.verify([key], 1)
        if envelope.payload_type != IN_TOTO_PAYLOAD:
            return None
        signed = json.loads(envelope.payload)
    except (VerificationError, ValueError, KeyError, TypeError):
        return None
    return signed if isinstance(signed, dict) else None


def _subjects(signed: dict) -> list[str]:
    return ["sha256:" + subject["digest"]["sha256"] for subject in signed["subject"]]


def _attestation_problem(layer: Layer, key, digest: str, commit: str | None,
                         model_sha256: str) -> str | None:
    """Why this attestation does not vouch for `digest` built from `commit` (None: any)
    with the model `model_sha256`, or None when it does."""
    signed = _signed_payload(layer, key)
    if signed is None:
        return "its attestation is not signed with the environment's key"
    try:
        subjects = _subjects(signed)
        parameters = signed["predicate"]["buildDefinition"]["externalParameters"]
        signed_commit = parameters["source"]["commit"]
        signed_model = parameters["model"]["sha256"]
    except (ValueError, KeyError, TypeError):
        return "its attestation is not SLSA provenance this toolkit wrote"
    if signed.get("predicateType") != SLSA_PROVENANCE:
        return f"its attestation is {signed.get('predicateType')}, not SLSA provenance v1"
    if digest not in subjects:
        return f"its provenance is for {', '.join(subjects)[:80]}, not {digest}"
    if commit is not None and signed_commit != commit:
        return f"its provenance names commit {signed_commit[:12]}, the record {commit[:12]}"
    if signed_model != model_sha256:
        return (f"its provenance names model sha256 {signed_model[:12]}…, the record "
                f"{model_sha256[:12]}…")
    return None


def _first_signed(layer: Layer, keys: list) -> dict | None:
    return next((signed for signed in (_signed_payload(layer, key) for key in keys)
                 if signed is not None), None)


def verification_problem(settings, keys: list, digest: str, commit: str | None,
                         model_sha256: str, auth: dict | None = None) -> str | None:
    """What fails for `digest` in the registry, or None when signature and provenance hold
    with one of `keys` (during a rotation: the new or the old)."""
    registry = oci_artifacts.client_for(settings, auth)
    signatures = registry.layers(oci_artifacts.signature_tag(digest))
    if not signatures:
        return f"no signature of {digest} in the registry"
    if not any(_signature_holds(layer, key, digest) for layer in signatures for key in keys):
        return (f"the signature of {digest} does not verify with "
                f"{' or '.join(settings.provenance.public_keys)}")
    attestations = registry.layers(oci_artifacts.attestation_tag(digest)) or []
    provenances = [layer for layer in attestations if not _is_sbom(layer)]
    if not provenances:
        return f"no provenance attestation of {digest} in the registry"
    problems = [_attestation_problem(layer, key, digest, commit, model_sha256)
                for layer in provenances for key in keys]
    if None not in problems:
        # The newest attestation's reason (with the first key): what the last push said.
        return problems[-len(keys)]
    return _sbom_problem([layer for layer in attestations if _is_sbom(layer)], keys, digest)


def _sbom_problem(layers: list[Layer], keys: list, digest: str) -> str | None:
    """An SBOM attestation must be signed with the key and be about this digest: a signed
    SBOM of another image beside this one means someone moved it there."""
    for layer in layers:
        signed = _first_signed(layer, keys)
        if signed is None:
            return "its SBOM attestation is not signed with the environment's key"
        try:
            subjects = _subjects(signed)
        except (KeyError, TypeError):
            return "its SBOM attestation names no subject digest"
        if digest not in subjects:
            return f"its SBOM attestation is for {', '.join(subjects)[:80]}, not {digest}"
    return None


def _unverified(settings, reference: str, *, dry: bool, echo: Echo) -> None:
    """No public key: a warning, or, where `require_verified` is on, a refusal."""
    if not settings.provenance.require_verified:
        echo(f"warning: no provenance.public_key for '{settings.env}': {reference} is "
             "applied unverified")
        return
    refusal = (f"provenance.require_verified is on for '{settings.env}', but no "
               f"provenance.public_key is set: {reference} cannot be verified")
    fix = (f"Nothing was changed. Run `invoke provenance.keygen --env={settings.env}`, commit "
           "the public key and set provenance.public_key (docs/provenance.md: keys).")
    if dry:
        echo(f"[dry] would refuse: {refusal}. {fix}")
        return
    raise ProvenanceRefused(f"Refusing: {refusal}.", fix)


def _verify(settings, reference: str, digest: str, commit: str, model_sha256: str, *,
            dry: bool, echo: Echo, fix: str) -> None:
    """Refuse `reference` unless the registry holds its signature and a provenance for it
    from `commit` with `model_sha256`, by the environment's key."""
    if not settings.provenance.public_keys:
        _unverified(settings, reference, dry=dry, echo=echo)
        return
    wants = (f"a signature of {digest[:19]}… by {' or '.join(settings.provenance.public_keys)}"
             f" and provenance for it from commit {commit[:12]} with model sha256 "
             f"{model_sha256[:12]}…")
    if dry:
        echo(f"[dry] would verify {wants} in the registry")
        return
    problem = verification_problem(settings, public_keys_for(settings), digest, commit,
                                   model_sha256)
    if problem:
        raise ProvenanceRefused(f"Refusing {reference}: {problem}.", fix)
    echo(f"verified: signature and provenance of {digest[:19]}… "
         f"(commit {commit[:12]}, model {model_sha256[:12]}…)")


def verify_release(settings, record: ReleaseRecord, pushed: PushRecord, *, dry: bool,
                   echo: Echo) -> None:
    """Before anything is applied: refuse unless the registry vouches for this release."""
    _verify(settings, pushed.reference, pushed.digest, record.source.revision,
            record.model.sha256, dry=dry, echo=echo,
            fix=f"Nothing was applied. Push this build again (`invoke push --env={settings.env} "
                "--force`) if the record is right; otherwise find out who changed the image "
                "or the record.")


def verify_rollback(settings, reference: str | None, commit: str | None,
                    model_sha256: str | None, *, dry: bool, echo: Echo) -> None:
    """Before `rollback` runs the previous release again: the same checks as `apply`, against
    the commit and model that release was made from, as the runtime kept them."""
    fix = (f"Nothing was changed. Deploy the release you want instead (`invoke deploy "
           f"--env={settings.env}`).")
    if dry and reference is None:  # nothing was read: say what would be checked
        if settings.provenance.public_keys:
            echo("[dry] would verify the signature and provenance of the previous release "
                 "in the registry before running it again")
        else:
            _unverified(settings, "the previous release", dry=dry, echo=echo)
        return
    digest = reference.partition("@")[2] if reference else ""
    if settings.provenance.public_keys and not (digest and commit and model_sha256):
        raise ProvenanceRefused(
            f"Refusing to roll back to {reference}: the runtime kept no "
            f"{'commit and model' if digest else 'digest'} of that release to verify its "
            "provenance against (it was released before rollbacks were verified).", fix)
    _verify(settings, reference, digest, commit or "", model_sha256 or "", dry=dry, echo=echo,
            fix=fix)


def cached_image_problem(settings, digest: str, model_sha256: str,
                         auth: dict | None) -> str | None:
    """Why a cached image's provenance does not allow its reuse (None: it does, or the
    environment verifies nothing). Its commit may differ: the same inputs at another
    commit make the same image."""
    keys = public_keys_for(settings)
    if not keys:
        return None
    return verification_problem(settings, keys, digest, None, model_sha256, auth)
