"""Releases on the local Docker runtime lose no request: three changed images under load.

Clients keep scoring through the local edge (127.0.0.1:<deployment.port>), some over kept-
alive connections and some with a new connection per request, while `apply`'s Docker path
(`local_runtime.deploy`) replaces the container three times with images that really differ.
Every request must be answered 200 with the right prediction. Bounded in time and count:
each release has two minutes, the clients stop when the releases are done.
"""

from __future__ import annotations

import io
import threading
import time
from collections import Counter

import pytest
import requests

from modelship import local_edge, local_runtime
from modelship.registry import login, read_push_stream
from modelship.release_record import load as read_record

pytestmark = pytest.mark.integration

CLIENTS_KEEP_ALIVE = 3
CLIENTS_NEW_CONNECTION = 2
RELEASES = 3


def changed_image(client, settings, base_reference: str, generation: int, auth) -> str:
    """A pushed image that differs from `base_reference` by one label; its digest reference."""
    dockerfile = (f"FROM {base_reference}\n"
                  f"LABEL ai.modelship.test.generation=\"{generation}\"\n").encode()
    tag = f"{settings.image_repository}:zero-downtime-{generation}"
    client.images.build(fileobj=io.BytesIO(dockerfile), tag=tag, network_mode="none", rm=True)
    digest, _ = read_push_stream(client.api.push(tag, stream=True, decode=True,
                                                 auth_config=auth))
    return f"{settings.image_repository}@{digest}"


class Clients:
    """Threads that score one golden row again and again until told to stop."""

    def __init__(self, url: str, golden: dict):
        self.url = url
        self.body = {"instances": [golden["instance"]]}
        self.expected = [golden["label"]]
        self.outcomes: Counter = Counter()
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._keep_alive, daemon=True)
                        for _ in range(CLIENTS_KEEP_ALIVE)]
        self.threads += [threading.Thread(target=self._new_connections, daemon=True)
                         for _ in range(CLIENTS_NEW_CONNECTION)]

    def _record(self, outcome: str, detail: str = "") -> None:
        with self.lock:
            self.outcomes[outcome] += 1
            if outcome != "ok" and len(self.failures) < 20:
                self.failures.append(detail)

    def _score(self, session: requests.Session, headers: dict) -> None:
        try:
            answer = session.post(f"{self.url}/score", json=self.body, headers=headers,
                                  timeout=10)
        except requests.RequestException as error:
            self._record("error", f"{type(error).__name__}: {error}")
            return
        if answer.status_code != 200:
            self._record("status", f"{answer.status_code}: {answer.text[:200]}")
        elif answer.json().get("predictions") != self.expected:
            self._record("wrong", answer.text[:200])
        else:
            self._record("ok")

    def _keep_alive(self) -> None:
        with requests.Session() as session:
            while not self.stop.is_set():
                self._score(session, {})

    def _new_connections(self) -> None:
        while not self.stop.is_set():
            with requests.Session() as session:
                self._score(session, {"Connection": "close"})

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)


def test_three_releases_under_load_fail_no_request(run_invoke, published_model, docker_client,
                                                   local_settings):
    assert run_invoke("deploy", "--env=local").returncode == 0
    record = read_record()
    metadata = record.model.as_metadata()
    auth = login(docker_client, local_settings)
    base = record.require_push("local").reference
    releases = [changed_image(docker_client, local_settings, base, generation, auth)
                for generation in range(1, RELEASES + 1)]
    edge = local_edge.Edge.of(local_settings)
    served_slots = []

    with Clients(edge.url(), metadata["golden"][0]) as clients:
        time.sleep(1)  # the clients are scoring before the first release starts
        for reference in releases:
            before = sum(clients.outcomes.values())
            started = time.monotonic()
            local_runtime.deploy(docker_client, local_settings, reference, auth, metadata,
                                 print)
            assert time.monotonic() - started < 120
            running = docker_client.containers.get(local_runtime.container_name(local_settings))
            assert running.attrs["Config"]["Image"] == reference
            served_slots.append(local_edge.routed_slot(edge))
            time.sleep(0.5)
            # The clients kept going during the release, not only around it.
            assert sum(clients.outcomes.values()) > before

    assert clients.outcomes["ok"] > 100, clients.outcomes
    assert set(clients.outcomes) == {"ok"}, (clients.outcomes, clients.failures)
    # Each release moved to the other slot, and only one container is left.
    assert served_slots[0] != served_slots[1] != served_slots[2]
    names = [c.name for c in docker_client.containers.list(
        all=True, filters={"label": f"{local_runtime.ROLE_LABEL}=deployment"})]
    assert names == [local_runtime.container_name(local_settings)]


def test_a_release_that_never_gets_ready_never_interrupts_the_service(
        run_invoke, published_model, docker_client, local_settings):
    assert run_invoke("deploy", "--env=local").returncode == 0
    record = read_record()
    metadata = record.model.as_metadata()
    auth = login(docker_client, local_settings)
    # A pushed image that exits at once: the base image runs bare python3 with no stdin.
    broken = f"{local_settings.image_repository}:never-ready"
    docker_client.images.get(local_settings.image.base).tag(broken)
    digest, _ = read_push_stream(docker_client.api.push(broken, stream=True, decode=True,
                                                        auth_config=auth))
    serving = docker_client.containers.get(local_runtime.container_name(local_settings))
    edge = local_edge.Edge.of(local_settings)

    with Clients(edge.url(), metadata["golden"][0]) as clients:
        with pytest.raises(Exception, match="kept serving throughout"):
            local_runtime.deploy(docker_client, local_settings,
                                 f"{local_settings.image_repository}@{digest}", auth, metadata,
                                 print)
        time.sleep(0.5)

    assert set(clients.outcomes) == {"ok"}, (clients.outcomes, clients.failures)
    still = docker_client.containers.get(local_runtime.container_name(local_settings))
    assert still.id == serving.id and still.status == "running"
