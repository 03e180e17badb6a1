"""Images derived from a pushed release image, pushed to the local registry, for release tests.

A test that needs "the same app, one thing changed" (a label, another model, a wrapper that
fails on purpose) builds `FROM` the real image with networking off and pushes it; the
digest reference it returns is what a release would roll out.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from modelship.registry import read_push_stream


def derived_image(client, repository: str, base_reference: str, tag: str,
                  instructions: list[str], files: dict[str, bytes] | None = None,
                  auth: dict | None = None) -> str:
    """Build `FROM base_reference` plus `instructions` (with `files` in the context), push it
    as `repository:tag`; its `repository@sha256:...` reference."""
    with tempfile.TemporaryDirectory() as folder:
        for name, content in (files or {}).items():
            path = Path(folder) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        (Path(folder) / "Dockerfile").write_text(
            "\n".join([f"FROM {base_reference}", *instructions]) + "\n")
        client.images.build(path=folder, tag=f"{repository}:{tag}", network_mode="none",
                            rm=True)
    digest, _ = read_push_stream(client.api.push(f"{repository}:{tag}", stream=True,
                                                 decode=True, auth_config=auth))
    return f"{repository}@{digest}"
