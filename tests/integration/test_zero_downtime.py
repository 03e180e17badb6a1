"""Releases on the local Docker runtime lose no request: three changed images under load.

Clients keep scoring through the local edge (127.0.0.1:<deployment.port>), some over kept-
alive connections and some with a new connection per request, while `apply`'s Docker path
(`local_runtime.deploy`) replaces the container three times with images that really differ.
Every request must be answered 200 with the right prediction. Bounded in time and count:
each release has two minutes, the clients stop when the releases are done.
"""

from __future__ import annotations

import time

import pytest

from modelship import local_edge, local_runtime
from modelship.registry import login, read_push_stream
from modelship.release_record import load as read_record
from tests.support.images import derived_image
from tests.support.load import Load

pytestmark = pytest.mark.integration

RELEASES = 3


def changed_image(client, settings, base_reference: str, generation: int, auth) -> str:
    """A pushed image that differs from `base_reference` by one label; its digest reference."""
    return derived_image(client, settings.image_repository, base_reference,
                         f"zero-downtime-{generation}",
                         [f'LABEL ai.modelship.test.generation="{generation}"'], auth=auth)


def clients(url: str, golden: dict) -> Load:
    """Scoring one golden row again and again, until the releases are done."""
    return Load(url, [golden["instance"]], [golden["label"]])


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

    with clients(edge.url(), metadata["golden"][0]) as load:
        time.sleep(1)  # the clients are scoring before the first release starts
        for reference in releases:
            before = sum(load.outcomes.values())
            started = time.monotonic()
            local_runtime.deploy(docker_client, local_settings, reference, auth, metadata,
                                 print)
            assert time.monotonic() - started < 120
            running = docker_client.containers.get(local_runtime.container_name(local_settings))
            assert running.attrs["Config"]["Image"] == reference
            served_slots.append(local_edge.routed_slot(edge))
            time.sleep(0.5)
            # The clients kept going during the release, not only around it.
            assert sum(load.outcomes.values()) > before

    assert load.outcomes["ok"] > 100, load.outcomes
    assert set(load.outcomes) == {"ok"}, (load.outcomes, load.failures)
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

    with clients(edge.url(), metadata["golden"][0]) as load:
        with pytest.raises(Exception, match="kept serving throughout"):
            local_runtime.deploy(docker_client, local_settings,
                                 f"{local_settings.image_repository}@{digest}", auth, metadata,
                                 print)
        time.sleep(0.5)

    assert set(load.outcomes) == {"ok"}, (load.outcomes, load.failures)
    still = docker_client.containers.get(local_runtime.container_name(local_settings))
    assert still.id == serving.id and still.status == "running"
