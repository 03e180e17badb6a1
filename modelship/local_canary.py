"""A canary on the local runtime: the new container on the free slot, a share by edge weight.

The local edge (HAProxy) already fronts two slots; during a canary both serve, and the
share is the two servers' weights (round robin, so exact to 1% over each 100 requests).
Each version's /metrics is read from its own slot port, never through the edge, so every
figure belongs to one version. Promotion is the ordinary switch (drain the stable slot,
stop it, the canary takes the deployment's name); rollback routes everything to the stable
slot at once, lets the canary finish what it has, and removes it. Until one of the two
happens the canary runs as `<app>-<env>-canary`, which `status` shows with its share and
`rollback` (or the next deploy) ends.
"""

from __future__ import annotations

import requests

from app import prediction_histogram

from . import canary, local_edge, local_runtime
from .canary_analysis import parse
from .errors import PipelineError
from .names import Echo
from .settings import Settings


class LocalCanary:
    """`canary.CanaryRuntime` for two containers behind the local edge."""

    def __init__(self, settings: Settings, started: local_runtime.Started, echo: Echo):
        self.settings, self.started, self.echo = settings, started, echo
        self.stable_port = local_runtime.slot_port_of(started.current)

    def set_share(self, percent: int) -> None:
        local_edge.split(self.started.edge, self.started.port, percent)

    def scrape(self) -> tuple[str, str]:
        return _metrics(self.started.port, "canary"), _metrics(self.stable_port, "stable")

    def promote(self) -> None:
        local_runtime.switch_to(self.settings, self.started, self.echo)

    def roll_back(self) -> None:
        local_edge.route_to(self.started.edge, self.stable_port, self.echo)
        self.started.container.remove(force=True)


def _metrics(port: int, which: str) -> str:
    try:
        answer = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        answer.raise_for_status()
    except requests.RequestException as error:
        raise PipelineError(f"The {which} version's /metrics on 127.0.0.1:{port} did not "
                            f"answer: {error}", "Its container's logs say why "
                            "(`docker logs`).") from None
    return answer.text


def pinned_buckets(stable_metrics: str) -> str:
    """The stable version's predicted-value edges, for the canary's PREDICTION_BUCKETS
    (empty for a classifier: its classes need no pinning)."""
    bounds = sorted({float(dict(labels)["le"]) for (name, labels) in parse(stable_metrics)
                     if name == prediction_histogram.VALUE_SERIES + "_bucket"})
    return ",".join(repr(bound) for bound in bounds if bound != float("inf"))


def deploy(client, settings: Settings, reference: str, auth: dict | None, metadata: dict,
           echo: Echo, release: tuple[str, str] | None = None) -> canary.CanaryResult:
    """Start `reference` beside the stable container and run the canary loop on it;
    `release` (commit, model sha256) is kept on it as `local_runtime.deploy` keeps it."""
    stable = local_runtime.serving_container(client, settings)
    if stable is None:
        raise PipelineError(
            f"Nothing serves in '{settings.env}' to compare a canary with.",
            f"Deploy the first release with `invoke deploy --env={settings.env} "
            "--strategy=rolling`.")
    buckets = pinned_buckets(_metrics(local_runtime.slot_port_of(stable), "stable"))
    started = local_runtime.start_beside(
        client, settings, reference, auth, metadata, echo,
        name_suffix=local_runtime.CANARY_SUFFIX,
        environment={"PREDICTION_BUCKETS": buckets} if buckets else None, release=release)
    echo(f"  canary {reference} is ready on slot {started.edge.slot_of(started.port)}")
    return canary.run(LocalCanary(settings, started, echo), settings.release.canary, echo)
