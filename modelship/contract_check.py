"""The container contract test: start the built image, prove it serves its model, remove it.

Runs before any push: readiness within a deadline, the model's golden samples through the
app's score route (its contract: `/score` for the sample) and, for the sample's server, the
Open Inference Protocol's v2 infer, `/version` against the image's own labels, a non-root
process, the production HTTP server (Granian, started by `python -m app.serve` or, for a
project's own app, `python -m modelship_serving`), and no secret-looking value in the
image's history or environment. The container uses host networking on a free
loopback port and is removed afterwards, pass or fail. It must never leave a container behind.
"""

from __future__ import annotations

import re
import socket

import requests

from modelship_serving.contract import AppContract

from .engine import container_logs, container_running
from .errors import PipelineError
from .names import MODEL_SHA256_LABEL, MODEL_VERSION_LABEL, REVISION_LABEL, ROLE_LABEL
from .service_checks import check_golden, check_golden_v2, check_version, wait_ready

# Shapes of credentials that must never be baked into an image.
SECRET_PATTERNS = {
    "an Azure storage account key": re.compile(r"AccountKey=[A-Za-z0-9+/=]{20,}"),
    "a SAS token signature": re.compile(r"[?&]sig=[A-Za-z0-9%+/=]{20,}"),
    "an AWS access key id": re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b"),
    "a private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "a password or token assignment": re.compile(
        r"\b[A-Z0-9_]*(PASSWORD|SECRET|TOKEN|API_KEY|ACCESS_KEY)[A-Z0-9_]*=\S+", re.I
    ),
}


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def find_secrets(image) -> list[str]:
    """Where the image's history or environment holds something shaped like a credential."""
    places = [("environment", entry) for entry in image.attrs["Config"].get("Env") or []]
    places += [("history", layer.get("CreatedBy", "")) for layer in image.history()]
    findings = []
    for where, text in places:
        for kind, pattern in SECRET_PATTERNS.items():
            if pattern.search(text):
                findings.append(f"{kind} in the image {where}")
    return sorted(set(findings))


SERVING_COMMAND = ["python3", "-m", "app.serve"]
# A project's own app, behind the image's front (modelship_serving): no v2 API there.
PROJECT_SERVING_COMMAND = ["python3", "-m", "modelship_serving"]
SERVER_HEADER = "granian"


def check_server(image, base_url: str, health_path: str = "/healthz") -> str:
    """The image starts one of the serving entry points and Granian answers; returns the
    Server header."""
    command = image.attrs["Config"].get("Cmd") or []
    if command not in (SERVING_COMMAND, PROJECT_SERVING_COMMAND):
        raise PipelineError(
            f"The image starts {command!r}, not the serving entry point {SERVING_COMMAND!r} "
            f"or {PROJECT_SERVING_COMMAND!r}.",
            "Keep the Dockerfile's CMD: the service must run under Granian.",
        )
    try:
        server = requests.get(f"{base_url}{health_path}", timeout=5).headers.get("Server", "")
    except requests.RequestException as error:
        raise PipelineError(f"{health_path} did not answer: {error}.",
                            "Read the container logs.")
    if server.lower() != SERVER_HEADER:
        raise PipelineError(
            f"{health_path} was answered by {server or 'an unnamed server'!r}, not {SERVER_HEADER}.",
            "Keep the Dockerfile's CMD and granian in requirements/image.in.",
        )
    return server


def check_labels_match(version: dict, labels: dict) -> None:
    expected = {
        "git_revision": labels.get(REVISION_LABEL),
        "model sha256": labels.get(MODEL_SHA256_LABEL),
        "model version": labels.get(MODEL_VERSION_LABEL),
    }
    served = {
        "git_revision": version.get("git_revision"),
        "model sha256": (version.get("model") or {}).get("sha256"),
        "model version": (version.get("model") or {}).get("version"),
    }
    wrong = [key for key in expected if expected[key] != served[key]]
    if wrong:
        details = ", ".join(f"{key} {served[key]!r} != label {expected[key]!r}" for key in wrong)
        raise PipelineError(
            f"/version disagrees with the image labels: {details}.",
            "Rebuild the image: its labels and its content come from different inputs.",
        )


def run_contract(client, image_ref: str, metadata: dict, echo,
                 contract: AppContract = AppContract()) -> None:
    image = client.images.get(image_ref)
    findings = find_secrets(image)
    if findings:
        raise PipelineError(
            f"The image holds what looks like a secret: {'; '.join(findings)}.",
            "Pass credentials at run time (Kubernetes Secrets, environment), never as build "
            "arguments or ENV lines.",
        )
    port = free_loopback_port()
    base_url = f"http://127.0.0.1:{port}"
    container = client.containers.run(
        image.id, detach=True, network_mode="host",
        environment={"HOST": "127.0.0.1", "PORT": str(port), "WEB_CONCURRENCY": "1"},
        labels={ROLE_LABEL: "contract-test"},
    )
    try:
        wait_ready(base_url, 60, lambda: container_running(container),
                   lambda: container_logs(container), contract.probed_readiness_path)
        uid = container.exec_run(["id", "-u"]).output.decode().strip()
        if uid in ("", "0"):
            raise PipelineError(
                "The service runs as root inside the image.",
                "Keep the Dockerfile's `USER` line (a non-root uid).",
            )
        server = check_server(image, base_url, contract.probed_health_path)
        echo(f"  ready on {base_url}, served by {server}, running as uid {uid}")
        check_labels_match(check_version(base_url, metadata), image.labels)
        count = check_golden(base_url, metadata, contract=contract)
        echo(f"  {contract.score_path} matched {count} golden samples (modelship_serving.golden, "
             "within tolerance)")
        if image.attrs["Config"].get("Cmd") != SERVING_COMMAND:
            return  # a project's own app speaks its own contract only
        count = check_golden_v2(base_url, metadata)
        echo(f"  v2 infer matched {count} golden samples (modelship_serving.golden, within tolerance)")
    finally:
        container.remove(force=True)
