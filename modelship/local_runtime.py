"""`apply` for the local environment: run the pushed image, pulled from the registry.

Releases go out without a gap, the way a Kubernetes rolling update does. Clients talk to
the local edge (`local_edge`, HAProxy on `deployment.port`); the deployment's container
listens on one of two slot ports behind it. A release starts the new container on the free
slot, waits until it is ready and scores a golden sample there, routes new requests to it,
lets the old container finish what it was serving, and only then stops and removes it. A
new container that never gets ready is removed and the old one never stopped serving. The
active container is always named `<app>-<env>`; one being started is `<app>-<env>-next`.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import host, local_edge
from .engine import container_logs, container_running, pull
from .engine import find_container
from .errors import PipelineError
from .names import (ENV_LABEL, MODEL_SHA256_LABEL, MODEL_VERSION_LABEL, PREVIOUS_COMMIT_LABEL,
                    PREVIOUS_IMAGE_LABEL, PREVIOUS_MODEL_SHA256_LABEL, RELEASE_COMMIT_LABEL,
                    RELEASE_MODEL_SHA256_LABEL, REVISION_LABEL, ROLE_LABEL, SLOT_PORT_LABEL)
from .service_checks import check_golden, wait_ready
from .settings import Settings

# How long a replaced container may take to stop after the edge stopped sending it work.
STOP_TIMEOUT_SECONDS = 20
# A canary runs beside the active container under its name plus this.
CANARY_SUFFIX = "-canary"


def container_name(settings: Settings) -> str:
    return f"{settings.app_name}-{settings.env}"


def base_url(settings: Settings) -> str:
    return local_edge.Edge.of(settings).url()


def previous_release(client, settings: Settings) -> tuple[str, str | None, str | None] | None:
    """The image the running container replaced, with the commit and model sha256 its
    release was made from (None where a container from before these labels lacks them);
    None when it replaced nothing."""
    container = find_container(client, container_name(settings))
    labels = (container.labels or {}) if container else {}
    if not labels.get(PREVIOUS_IMAGE_LABEL):
        return None
    return (labels[PREVIOUS_IMAGE_LABEL], labels.get(PREVIOUS_COMMIT_LABEL),
            labels.get(PREVIOUS_MODEL_SHA256_LABEL))


def slot_port_of(container) -> int | None:
    """The slot port a deployment container listens on (its label)."""
    raw = (container.labels or {}).get(SLOT_PORT_LABEL)
    return int(raw) if raw and raw.isdigit() else None


def serving_container(client, settings: Settings):
    """The active container if it runs behind the edge, else None."""
    current = find_container(client, container_name(settings))
    if current is None or current.status != "running" or slot_port_of(current) is None:
        return None
    return current


def _check_ports(settings: Settings, edge: local_edge.Edge) -> None:
    if edge.port in edge.slot_ports:
        raise PipelineError(
            f"deployment.port {edge.port} of '{settings.env}' is also one of "
            f"local_services.slot_ports {list(edge.slot_ports)}.",
            "Give the edge and the two slots three different ports in invoke.yaml.",
        )


@dataclass(frozen=True)
class Started:
    """A new container ready on the free slot beside the current one (if any)."""
    edge: local_edge.Edge
    current: object  # the serving container, or None
    container: object
    port: int


def deploy(client, settings: Settings, reference: str, auth: dict | None,
           metadata: dict | None, echo, check_golden_sample: bool = True,
           release: tuple[str, str] | None = None) -> str:
    """Run `reference` in place of the current container without a gap in service.
    `release` is the (commit, model sha256) it was released from, kept on the container
    with those of the one it replaces, for `rollback` to verify."""
    started = start_beside(client, settings, reference, auth, metadata, echo,
                           check_golden_sample, release=release)
    echo(f"  {reference} is ready on slot {started.edge.slot_of(started.port)}; routing to it")
    return switch_to(settings, started, echo)


def start_beside(client, settings: Settings, reference: str, auth: dict | None,
                 metadata: dict | None, echo, check_golden_sample: bool = True,
                 name_suffix: str = "-next", environment: dict | None = None,
                 release: tuple[str, str] | None = None) -> Started:
    """Pull `reference` and start it on the free slot; ready and golden-checked, no traffic.
    `release` as for `deploy`."""
    edge = local_edge.Edge.of(settings)
    _check_ports(settings, edge)
    pull(client, reference, auth)
    name = container_name(settings)
    end_interrupted_canary(client, settings, echo)
    for leftover in (f"{name}-next", f"{name}-previous"):  # from a deploy that was killed
        found = find_container(client, leftover)
        if found is not None:
            found.remove(force=True)

    current = find_container(client, name)
    previous_reference = current.attrs["Config"]["Image"] if current is not None else None
    earlier = (current.labels or {}) if current is not None else {}
    if current is not None and slot_port_of(current) not in edge.slot_ports:
        # Made before the edge existed: it holds the edge's port itself.
        echo("  replacing a container that served without the local edge: one short gap")
        current.remove(force=True)
        current = None
    active_port = slot_port_of(current) if current is not None else None
    if current is not None and current.status != "running":
        active_port = None
    echo("  " + local_edge.ensure_edge(edge, active_port, echo))

    port = edge.free_port(active_port)
    if host.port_taken(port):
        raise PipelineError(
            f"Slot port 127.0.0.1:{port} of '{settings.env}' is taken by something else "
            "(another app's container, or another server).",
            "Stop it, or give this environment other ports: local_services.slot_ports, or "
            "another deployment.port (the slots follow it).",
        )
    labels = {ROLE_LABEL: "deployment", ENV_LABEL: settings.env,
              SLOT_PORT_LABEL: str(port)}
    if release:
        labels[RELEASE_COMMIT_LABEL], labels[RELEASE_MODEL_SHA256_LABEL] = release
    if previous_reference:
        labels[PREVIOUS_IMAGE_LABEL] = previous_reference
        for kept, label in ((PREVIOUS_COMMIT_LABEL, RELEASE_COMMIT_LABEL),
                            (PREVIOUS_MODEL_SHA256_LABEL, RELEASE_MODEL_SHA256_LABEL)):
            if earlier.get(label):
                labels[kept] = earlier[label]
    container = client.containers.run(
        reference, name=f"{name}{name_suffix}", detach=True, network_mode="host",
        # The edge stops sending it work before it is stopped: no drain needed on SIGTERM.
        environment={"HOST": "127.0.0.1", "PORT": str(port), "SHUTDOWN_DRAIN_SECONDS": "0",
                     **(environment or {})},
        labels=labels, restart_policy={"Name": "unless-stopped"},
    )
    slot_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(slot_url, 60, lambda: container_running(container),
                   lambda: container_logs(container), settings.contract.probed_readiness_path)
        if check_golden_sample and metadata is not None:
            check_golden(slot_url, metadata, limit=1, contract=settings.contract)
    except PipelineError as failure:
        logs = container_logs(container)
        container.remove(force=True)
        if active_port is not None:
            failure.fix += " The previous deployment kept serving throughout."
        echo(f"  new container's last log lines: {logs}")
        raise
    return Started(edge, current, container, port)


def switch_to(settings: Settings, started: Started, echo) -> str:
    """Route every request to the started container, retire the old one, take its name."""
    local_edge.route_to(started.edge, started.port, echo)
    if started.current is not None:
        started.current.stop(timeout=STOP_TIMEOUT_SECONDS)
        started.current.remove(force=True)
    container = started.container
    container.rename(container_name(settings))
    wait_ready(started.edge.url(), 10, lambda: container_running(container),
               lambda: container_logs(container), settings.contract.probed_readiness_path)
    return started.edge.url()


def canary_name(settings: Settings) -> str:
    return f"{container_name(settings)}{CANARY_SUFFIX}"


def end_interrupted_canary(client, settings: Settings, echo) -> bool:
    """A canary left running (its deploy was killed): every request back to the stable
    container, then the canary removed. True if there was one."""
    canary = find_container(client, canary_name(settings))
    if canary is None:
        return False
    stable = find_container(client, container_name(settings))
    edge = local_edge.Edge.of(settings)
    if stable is not None and stable.status == "running" and slot_port_of(stable):
        local_edge.ensure_edge(edge, slot_port_of(stable), echo)
        local_edge.route_to(edge, slot_port_of(stable), echo)
    canary.remove(force=True)
    echo(f"  ended an interrupted canary ({canary.attrs['Config']['Image']}): every request "
         "goes to the stable version again")
    return True


def already_serving(client, settings: Settings, reference: str, echo) -> bool:
    """True when the running container is `reference`, behind a working edge, and ready:
    then a release has nothing to do."""
    current = find_container(client, container_name(settings))
    if current is None or current.status != "running" or \
            current.attrs["Config"]["Image"] != reference or slot_port_of(current) is None:
        return False
    local_edge.ensure_edge(local_edge.Edge.of(settings), slot_port_of(current),
                               lambda line: None)
    return container_ready(settings)


def ensure_edge_for_running(client, settings: Settings, echo) -> str | None:
    """After an engine restart: the edge again, routing to the container that runs."""
    current = find_container(client, container_name(settings))
    if current is None or current.status != "running" or slot_port_of(current) is None:
        return None
    return local_edge.ensure_edge(local_edge.Edge.of(settings), slot_port_of(current), echo)


def remove(client, settings: Settings) -> bool:
    """Remove the deployment's containers and stop its edge (if this machine runs it)."""
    removed = False
    name = container_name(settings)
    for candidate in (name, f"{name}-next", f"{name}-previous", f"{name}{CANARY_SUFFIX}"):
        container = find_container(client, candidate)
        if container is not None:
            container.remove(force=True)
            removed = True
    edge = local_edge.Edge.of(settings)
    host.stop_started(edge.service_name, run_dir=edge.run_dir)
    return removed


def status(client, settings: Settings) -> dict | None:
    """What the local deployment runs, in the same terms `kube.status` uses; None if nothing."""
    container = find_container(client, container_name(settings))
    if container is None:
        return None
    image = container.attrs["Config"]["Image"]
    labels = container.image.labels
    return {
        "image": image,
        "digest": image.split("@", 1)[1] if "@" in image else "(not pinned by digest)",
        "git_revision": labels.get(REVISION_LABEL, "unknown"),
        "model_version": labels.get(MODEL_VERSION_LABEL, "unknown"),
        "model_sha256": labels.get(MODEL_SHA256_LABEL, "unknown"),
        "ready_replicas": 1 if container.status == "running" and container_ready(settings) else 0,
        "replicas": 1,
        "address": base_url(settings),
        "slot": _describe_slot(settings, container),
        **_canary_status(client, settings),
    }


def _canary_status(client, settings: Settings) -> dict:
    """A canary beside the stable container, and each one's share of new requests."""
    canary = find_container(client, canary_name(settings))
    if canary is None:
        return {}
    edge = local_edge.Edge.of(settings)
    try:
        shares = local_edge.shares(edge)
    except PipelineError:
        shares = {}
    port = slot_port_of(canary)
    slot = edge.slot_of(port) if port in edge.slot_ports else None
    other = next((name for name in local_edge.SLOT_NAMES if name != slot), None)
    labels = canary.image.labels or {}
    return {
        "canary": f"{canary.attrs['Config']['Image']} (model "
                  f"{labels.get(MODEL_VERSION_LABEL, 'unknown')}) on slot {slot}",
        "shares": f"canary {shares.get(slot, 0)}%, stable {shares.get(other, 0)}% "
                  "(an unfinished canary: `invoke rollback` ends it)",
    }


def _describe_slot(settings: Settings, container) -> str:
    port = slot_port_of(container)
    edge = local_edge.Edge.of(settings)
    if port not in edge.slot_ports:
        return "none (made before the local edge; the next deploy moves it behind the edge)"
    return f"{edge.slot_of(port)} (127.0.0.1:{port}, behind the edge on :{edge.port})"


def container_ready(settings: Settings) -> bool:
    import requests

    try:
        return requests.get(f"{base_url(settings)}/readyz", timeout=2).status_code == 200
    except requests.RequestException:
        return False
