"""The provenance key pairs of dev, staging and prod: `invoke provenance.keygen --env=X`.

A pair is made once per environment by whoever holds its pipeline: the private key goes to
Azure Key Vault and reaches only the Build stage's `push`, as the variable
`provenance.signing_key_env` names; the public key is committed and named by
`provenance.public_key`, so every `apply` and `rollback` verifies with it. This module
writes the pair (EC P-256, PKCS#8 / SubjectPublicKeyInfo PEM, the private key 0600, the
public 0644) and says where each goes; it never overwrites a key, never prints a private
key, and never talks to Key Vault itself (the operator runs the printed command, under
their own Azure login).
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import PipelineError
from .stage_files import PROJECT_ROOT, shown

# Where keygen writes when the environment names no path: the public key into the project
# (to be committed), the private key outside it (to be moved into Key Vault and deleted).
PUBLIC_KEY_DIR = PROJECT_ROOT / "keys"
PRIVATE_KEY_DIR = Path("~/.local/state/modelship/provenance")


def setting_path(setting: str) -> Path:
    """A key setting as a path: relative to the project, absolute, or starting at ~."""
    path = Path(setting).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


def write_key_pair(private_path: Path, public_path: Path) -> None:
    """A new EC P-256 pair; refuses (FileExistsError) to replace either file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(public_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        private = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        os.close(descriptor)
        public_path.unlink()
        raise
    with os.fdopen(private, "wb") as stream:
        stream.write(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    with os.fdopen(descriptor, "wb") as stream:
        stream.write(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    os.chmod(public_path, 0o644)  # whatever the umask


def keygen_paths(settings) -> tuple[Path, Path]:
    """The environment's own key paths where it names them, else the defaults."""
    section = settings.provenance
    public = section.public_keys[0] if section.public_keys else \
        PUBLIC_KEY_DIR.relative_to(PROJECT_ROOT) / f"provenance-{settings.env}.pub.pem"
    private = section.signing_key or str(PRIVATE_KEY_DIR / f"{settings.env}.key.pem")
    return setting_path(private), setting_path(str(public))


def keygen(settings, *, dry: bool) -> list[str]:
    """Write the environment's pair; the lines that say where each key goes next."""
    private, public = keygen_paths(settings)
    for path in (private, public):
        if path.exists():
            refusal = f"{shown(path)} exists already: keygen never replaces a key"
            fix = ("To rotate, list a new public key path first (docs/provenance.md: "
                   "rotating), or remove the file if it was never used.")
            if dry:
                return [f"[dry] would refuse: {refusal}. {fix}"]
            raise PipelineError(f"{refusal}.", fix)
    if dry:
        return [f"[dry] would write {shown(private)} (0600) and {shown(public)} (0644) for "
                f"'{settings.env}'"]
    write_key_pair(private, public)
    env, variable = settings.env, settings.provenance.signing_key_env or "PROVENANCE_SIGNING_KEY"
    secret = f"provenance-signing-key-{env}"
    committed = shown(public)
    return [
        f"wrote {shown(private)} (private, 0600) and {committed} (public, 0644) for '{env}'",
        f"1. private key into Key Vault: az keyvault secret set --vault-name <vault> --name "
        f"{secret} --file {shown(private)}, then delete {shown(private)}",
        f"2. in the Build stage's push step (docs/azure-pipelines.md, the Key Vault variable "
        f"group): env: {{ {variable}: $({secret}) }}",
        f"3. commit {committed} and set modelship.environments.{env}.provenance.public_key: "
        f"{committed} in invoke.yaml",
    ]
